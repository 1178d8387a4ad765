//! A CNI plugin run as a container runtime runs it: only the CNI_* variables (and PATH) in
//! its environment, the network configuration on stdin, the result on stdout.

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub struct CniCall<'a> {
    /// ADD, DEL, CHECK, VERSION, STATUS, GC.
    pub command: &'a str,
    pub container: &'a str,
    /// CNI_NETNS, e.g. `/var/run/netns/<name>`.
    pub netns: Option<&'a str>,
    /// (namespace, name): the kubelet's K8S_POD_* arguments.
    pub pod: Option<(&'a str, &'a str)>,
    /// More environment, e.g. to test bad input.
    pub env: &'a [(&'a str, &'a str)],
}

impl CniCall<'_> {
    /// Runs `plugin` (a command for the binary, possibly inside a namespace).
    pub fn run(&self, mut plugin: Command, stdin: &[u8]) -> std::io::Result<Output> {
        plugin
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
        if let Some(ns) = self.netns {
            plugin.env("CNI_NETNS", ns);
        }
        if let Some((ns, name)) = self.pod {
            plugin.env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={}",
                    self.container
                ),
            );
        }
        for (k, v) in self.env {
            plugin.env(k, v);
        }
        let mut child = plugin
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin)?;
        }
        child.wait_with_output()
    }
}
