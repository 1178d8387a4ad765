//! What the runtime gives the plugin: the network configuration on stdin and the `CNI_*`
//! environment (with Kubernetes' pod identity in `CNI_ARGS`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::spec::{check_version, code, CniError, CniResult};

#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Pod interface MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The node this plugin runs on; else read from `nodename_file`, else the hostname.
    #[serde(default)]
    pub nodename: Option<String>,
    #[serde(default = "default_nodename_file")]
    pub nodename_file: PathBuf,
    /// `etcd` or `kubernetes`; else `$BRINDLE_DATASTORE`, else kubernetes.
    #[serde(default)]
    pub datastore_type: Option<String>,
    /// Comma-separated; else `$BRINDLE_ETCD_ENDPOINTS`.
    #[serde(default)]
    pub etcd_endpoints: Option<String>,
    /// etcd over TLS (Calico's names): the CA, and the client certificate and key.
    #[serde(default)]
    pub etcd_ca_cert_file: Option<String>,
    #[serde(default)]
    pub etcd_cert_file: Option<String>,
    #[serde(default)]
    pub etcd_key_file: Option<String>,
    /// etcd's own user, with the file that holds the password.
    #[serde(default)]
    pub etcd_username: Option<String>,
    #[serde(default)]
    pub etcd_password_file: Option<String>,
    #[serde(default)]
    pub kubeconfig: Option<String>,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default = "default_log_file")]
    pub log_file_path: PathBuf,
    /// Host-side veth names are this prefix + 11 hex digits.
    #[serde(default = "default_prefix")]
    pub veth_prefix: String,
    /// The host-wide lock that serializes IPAM on one node when the plugin does IPAM itself
    /// (the agent is not answering on `ipam_socket`).
    #[serde(default = "default_lock")]
    pub ipam_lock_file: PathBuf,
    /// brindle-node's IPAM socket; `""` never asks the agent.
    #[serde(default = "default_ipam_socket")]
    pub ipam_socket: PathBuf,
    /// Written by brindle-node once it has programmed this node's dataplane (the guard of the
    /// node's own ports, anti-spoofing, policy) since the node booted (it is on tmpfs). When
    /// the agent does not answer, ADD wires a pod only if it is there, and STATUS is not
    /// ready without it. `""` never checks.
    #[serde(default = "default_dataplane_ready_file")]
    pub dataplane_ready_file: PathBuf,
    #[serde(default)]
    pub ipam: IpamConf,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// CNI 1.1 GC: the attachments that are still in use.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default = "default_ipam_type")]
    pub kind: String,
    /// Pools (names or CIDRs) pods may draw IPv4 addresses from; empty means all that select the node.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
    #[serde(default = "yes")]
    pub assign_ipv4: bool,
    #[serde(default)]
    pub assign_ipv6: bool,
}

impl Default for IpamConf {
    fn default() -> Self {
        IpamConf {
            kind: default_ipam_type(),
            ipv4_pools: vec![],
            ipv6_pools: vec![],
            assign_ipv4: true,
            assign_ipv6: false,
        }
    }
}

fn default_mtu() -> u32 {
    1500
}
fn default_nodename_file() -> PathBuf {
    "/var/lib/brindle/nodename".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_file() -> PathBuf {
    "/var/log/brindle/cni/cni.log".into()
}
fn default_prefix() -> String {
    "brl".into()
}
fn default_ipam_socket() -> PathBuf {
    crate::agent::DEFAULT_SOCKET.into()
}
fn default_dataplane_ready_file() -> PathBuf {
    crate::agent::DEFAULT_READY_FILE.into()
}
fn default_lock() -> PathBuf {
    "/run/brindle/ipam.lock".into()
}
fn default_ipam_type() -> String {
    "brindle-ipam".into()
}
fn yes() -> bool {
    true
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> CniResult<NetConf> {
        // Decode the version first, so a config from a newer spec gets the version error.
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "network configuration is not valid JSON",
                e.to_string(),
            )
        })?;
        let version = raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "network configuration has no cniVersion",
                    "",
                )
            })?;
        check_version(version)?;
        let conf: NetConf = serde_json::from_value(raw).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                e.to_string(),
            )
        })?;
        if conf.mtu < 68 || conf.mtu > 65535 {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {} is outside 68..=65535", conf.mtu),
                "",
            ));
        }
        if conf.veth_prefix.is_empty()
            || conf.veth_prefix.len() > 4
            || !conf.veth_prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "veth_prefix {:?} must be 1 to 4 letters or digits",
                    conf.veth_prefix
                ),
                "host veth names are the prefix and 11 hex digits, within Linux's 15 bytes",
            ));
        }
        if conf.ipam.kind != "brindle-ipam" {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "ipam.type {:?} is not supported by {}",
                    conf.ipam.kind, conf.kind
                ),
                "use \"brindle-ipam\" (or leave ipam out)",
            ));
        }
        if !conf.ipam.assign_ipv4 && !conf.ipam.assign_ipv6 {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "ipam: assign_ipv4 and assign_ipv6 are both false; the pod would get no address",
                "",
            ));
        }
        Ok(conf)
    }

    pub fn node_name(&self) -> CniResult<String> {
        if let Some(n) = self.nodename.as_ref().filter(|n| !n.is_empty()) {
            return Ok(n.clone());
        }
        if let Ok(s) = std::fs::read_to_string(&self.nodename_file) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_owned());
            }
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if host.trim().is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "cannot tell the node name",
                format!(
                    "set nodename, or write it to {}",
                    self.nodename_file.display()
                ),
            ));
        }
        Ok(host.trim().to_owned())
    }
}

/// The `CNI_*` environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> CniResult<Env> {
        let command = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set", ""))?;
        let args = get("CNI_ARGS").unwrap_or_default();
        let mut parsed = BTreeMap::new();
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                    "",
                )
            })?;
            parsed.insert(k.to_owned(), v.to_owned());
        }
        Ok(Env {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").filter(|s| !s.is_empty()),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: parsed,
        })
    }

    /// Fails with the spec's code 4 naming the variable that is missing.
    pub fn require(&self, needs_netns: bool) -> CniResult<()> {
        let missing = [
            ("CNI_CONTAINERID", self.container_id.is_empty()),
            ("CNI_IFNAME", self.ifname.is_empty()),
            ("CNI_NETNS", needs_netns && self.netns.is_none()),
        ];
        match missing.iter().find(|(_, m)| *m) {
            Some((var, _)) => Err(CniError::new(
                code::INVALID_ENV,
                format!("{var} is not set"),
                "",
            )),
            None => Ok(()),
        }
    }

    pub fn pod(&self) -> Option<(String, String)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?.clone(),
            self.args.get("K8S_POD_NAME")?.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_and_defaults() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"brindle-cni","extra":1}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.veth_prefix, "brl");
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        let e = NetConf::parse(b"{nope").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"9.9.9","name":"k","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"k","type":"t","mtu":20}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn parses_cni_args() {
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_ARGS" => {
                Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into())
            }
            _ => None,
        };
        let e = Env::from_env(env).unwrap();
        assert_eq!(e.pod(), Some(("default".into(), "web-0".into())));
        assert_eq!(
            e.require(true).unwrap_err().msg,
            "CNI_CONTAINERID is not set"
        );
    }
}
