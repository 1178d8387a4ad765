//! IPPool: a CIDR that pods (and node tunnel addresses) draw from, in blocks.

use ipnetwork::IpNetwork;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{parse_network_cidr, FieldError, Invalid, Validate};

/// Default block size for IPv4 pools (Calico's): 64 addresses per block.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block size for IPv6 pools (Calico's).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Block","type":"integer","jsonPath":".spec.blockSize"}"#,
    printcolumn = r#"{"name":"IPIP","type":"string","jsonPath":".spec.ipipMode"}"#,
    printcolumn = r#"{"name":"NAT","type":"boolean","jsonPath":".spec.natOutgoing"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.nodeSelector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's network, e.g. `10.244.0.0/16`. No host bits.
    pub cidr: String,
    /// Prefix length of the blocks handed to nodes. Default 26 (IPv4) / 122 (IPv6).
    /// IPv4 20..=32, IPv6 116..=128, never larger than the pool. Cannot change once used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IPIP encapsulation between nodes (IPv4 pools only).
    #[serde(default)]
    pub ipip_mode: IpipMode,
    /// Masquerade traffic from this pool leaving the cluster.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// No new addresses are handed out of a disabled pool.
    #[serde(default)]
    pub disabled: bool,
    /// Which nodes may take blocks from this pool (Calico selector syntax).
    #[serde(default = "all_nodes")]
    pub node_selector: String,
    /// What the addresses may be used for.
    #[serde(default = "default_uses")]
    pub allowed_uses: Vec<AllowedUse>,
    /// Do not advertise this pool's blocks over BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
}

fn all_nodes() -> String {
    "all()".into()
}

fn default_uses() -> Vec<AllowedUse> {
    vec![AllowedUse::Workload, AllowedUse::Tunnel]
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IpipMode {
    #[default]
    Never,
    Always,
    /// Encapsulate only toward nodes in another subnet.
    CrossSubnet,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Node tunnel (tunl0) addresses.
    Tunnel,
}

impl IPPoolSpec {
    /// A pool with Calico's defaults for everything but the CIDR.
    pub fn new(cidr: impl Into<String>) -> Self {
        IPPoolSpec {
            cidr: cidr.into(),
            block_size: None,
            ipip_mode: IpipMode::Never,
            nat_outgoing: false,
            disabled: false,
            node_selector: all_nodes(),
            allowed_uses: default_uses(),
            disable_bgp_export: false,
        }
    }

    /// The parsed CIDR, if it is one.
    pub fn network(&self) -> Option<IpNetwork> {
        self.cidr.parse().ok()
    }

    /// The block size in force: the one given, or the family's default.
    pub fn effective_block_size(&self) -> u8 {
        match (self.block_size, self.network()) {
            (Some(b), _) => b,
            (None, Some(IpNetwork::V6(_))) => DEFAULT_BLOCK_SIZE_V6,
            (None, _) => DEFAULT_BLOCK_SIZE_V4,
        }
    }
}

impl Validate for IPPool {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = vec![];
        let spec = &self.spec;
        let Some(net) = parse_network_cidr("spec.cidr", &spec.cidr, &mut errors) else {
            return errors;
        };
        let block = spec.effective_block_size();
        let (lo, hi, fam) = match net {
            IpNetwork::V4(_) => (20, 32, "IPv4"),
            IpNetwork::V6(_) => (116, 128, "IPv6"),
        };
        if !(lo..=hi).contains(&block) {
            errors.push(FieldError::new(
                "spec.blockSize",
                format!("{block} is outside {lo}..={hi}, the range for an {fam} pool"),
            ));
        } else if block < net.prefix() {
            errors.push(FieldError::new(
                "spec.blockSize",
                format!(
                    "a /{block} block is larger than the pool {} itself",
                    spec.cidr
                ),
            ));
        }
        if net.is_ipv6() && spec.ipip_mode != IpipMode::Never {
            errors.push(FieldError::new(
                "spec.ipipMode",
                format!(
                    "IPIP ({:?}) carries IPv4 only; an IPv6 pool must use Never",
                    spec.ipip_mode
                ),
            ));
        }
        if spec.node_selector.trim().is_empty() {
            errors.push(FieldError::new(
                "spec.nodeSelector",
                "empty; use \"all()\" for every node",
            ));
        }
        if spec.allowed_uses.is_empty() {
            errors.push(FieldError::new(
                "spec.allowedUses",
                "empty; a pool must allow Workload, Tunnel or both",
            ));
        }
        errors
    }
}

impl IPPool {
    /// Rules across pools: this pool's CIDR must not overlap any other pool's, and, when
    /// `replacing` an existing pool (same name in `others`), it keeps its CIDR and block size:
    /// addresses and blocks already handed out are cut from them.
    pub fn check_against(&self, others: &[IPPool], replacing: bool) -> Result<(), Invalid> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let Some(mine) = self.spec.network() else {
            return Ok(()); // the single-object rules report the bad CIDR
        };
        let mut errors = vec![];
        let old = others
            .iter()
            .find(|o| replacing && o.metadata.name.as_deref() == Some(name.as_str()));
        if let Some(old) = old {
            if old.spec.network() != Some(mine) {
                errors.push(FieldError::new(
                    "spec.cidr",
                    format!(
                        "immutable: was {}, cannot become {}; create a new pool instead",
                        old.spec.cidr, self.spec.cidr
                    ),
                ));
            }
            if old.spec.effective_block_size() != self.spec.effective_block_size() {
                errors.push(FieldError::new(
                    "spec.blockSize",
                    format!(
                        "immutable: was {}, cannot become {}",
                        old.spec.effective_block_size(),
                        self.spec.effective_block_size()
                    ),
                ));
            }
        }
        errors.extend(
            others
                .iter()
                .filter(|o| o.metadata.name.as_deref() != Some(name.as_str()))
                .filter_map(|o| {
                    let theirs = o.spec.network()?;
                    overlaps(mine, theirs).then(|| {
                        FieldError::new(
                            "spec.cidr",
                            format!(
                                "{} overlaps IPPool {:?} ({})",
                                self.spec.cidr,
                                o.metadata.name.as_deref().unwrap_or(""),
                                o.spec.cidr
                            ),
                        )
                    })
                }),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid {
                kind: "IPPool".into(),
                name,
                errors,
            })
        }
    }
}

/// Two networks overlap when one contains the other's network address.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, spec: IPPoolSpec) -> IPPool {
        IPPool::new(name, spec)
    }

    fn errors_of(spec: IPPoolSpec) -> Invalid {
        pool("p", spec).validate().expect_err("should be invalid")
    }

    #[test]
    fn defaults_match_calico() {
        let p: IPPoolSpec = serde_json::from_str(r#"{"cidr":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(p.effective_block_size(), 26);
        assert_eq!(p.ipip_mode, IpipMode::Never);
        assert_eq!(p.node_selector, "all()");
        assert_eq!(
            p.allowed_uses,
            vec![AllowedUse::Workload, AllowedUse::Tunnel]
        );
        let p6: IPPoolSpec = serde_json::from_str(r#"{"cidr":"fd00:10::/48"}"#).unwrap();
        assert_eq!(p6.effective_block_size(), 122);
        assert!(pool("a", p).validate().is_ok());
        assert!(pool("b", p6).validate().is_ok());
    }

    #[test]
    fn host_bits() {
        let e = errors_of(IPPoolSpec::new("10.244.0.1/16"));
        assert!(e.mentions("spec.cidr"));
        assert!(e.to_string().contains("host bits"), "{e}");
    }

    #[test]
    fn block_size_range_and_pool_size() {
        for (cidr, bs) in [
            ("10.0.0.0/8", 19),
            ("10.0.0.0/8", 33),
            ("fd00::/48", 115),
            ("fd00::/48", 129),
        ] {
            let mut s = IPPoolSpec::new(cidr);
            s.block_size = Some(bs);
            let e = errors_of(s);
            assert!(e.mentions("spec.blockSize"), "{cidr} {bs}: {e}");
            assert!(e.to_string().contains("outside"), "{e}");
        }
        let mut s = IPPoolSpec::new("10.0.0.0/28");
        s.block_size = Some(26);
        let e = errors_of(s);
        assert!(e.to_string().contains("larger than the pool"), "{e}");
        let mut s = IPPoolSpec::new("10.0.0.0/28");
        s.block_size = Some(28);
        assert!(pool("ok", s).validate().is_ok());
    }

    #[test]
    fn ipip_on_ipv6() {
        let mut s = IPPoolSpec::new("fd00::/48");
        s.ipip_mode = IpipMode::Always;
        assert!(errors_of(s).mentions("spec.ipipMode"));
    }

    #[test]
    fn overlap() {
        let a = pool("a", IPPoolSpec::new("10.244.0.0/16"));
        let b = pool("b", IPPoolSpec::new("10.244.128.0/17"));
        let c = pool("c", IPPoolSpec::new("10.245.0.0/16"));
        let e = b.check_against(&[a.clone(), c.clone()], false).unwrap_err();
        assert!(e.to_string().contains("overlaps IPPool \"a\""), "{e}");
        assert!(c.check_against(&[a.clone(), b], false).is_ok());
        // Replacing itself is not an overlap.
        assert!(a.check_against(std::slice::from_ref(&a), true).is_ok());
    }

    #[test]
    fn cidr_and_block_size_are_immutable() {
        let old = pool("a", IPPoolSpec::new("10.244.0.0/16"));
        let mut new = old.clone();
        new.spec.nat_outgoing = true;
        assert!(new.check_against(std::slice::from_ref(&old), true).is_ok());
        new.spec.block_size = Some(24);
        let e = new
            .check_against(std::slice::from_ref(&old), true)
            .unwrap_err();
        assert!(
            e.mentions("spec.blockSize") && e.to_string().contains("immutable"),
            "{e}"
        );
        let mut moved = old.clone();
        moved.spec.cidr = "10.250.0.0/16".into();
        assert!(moved
            .check_against(std::slice::from_ref(&old), true)
            .unwrap_err()
            .mentions("spec.cidr"));
    }
}
