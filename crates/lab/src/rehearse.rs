//! Failures on purpose (`brindle-lab node|etcd|link|netem|tor …`): each does one thing to the
//! running lab and says what it did and how to watch the network react.

use serde::{Deserialize, Serialize};

use crate::Lab;

/// One failure to cause, or to end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGTERM to a node's agent: graceful restart (routes kept, peers told nothing).
    NodeStop(String),
    /// SIGKILL to a node's agent: a crash.
    NodeKill(String),
    NodeStart(String),
    /// Stop (SIGTERM) and start again.
    NodeRestart(String),
    /// A new node joins (on this rack, default 0).
    NodeAdd {
        rack: Option<usize>,
    },
    /// A node leaves for good: its pods, agent, record and namespace go.
    NodeDel(String),
    /// The lab's etcd stopped (its data kept) or started again.
    Etcd {
        up: bool,
    },
    /// A node's uplink (`eth0` in its namespace) down or up.
    Link {
        node: String,
        up: bool,
    },
    /// Delay and loss on a node's uplink (`tc netem`); both None removes them.
    Netem {
        node: String,
        delay: Option<String>,
        loss: Option<String>,
    },
    /// A rack's router taken out of service (every BGP session of its BIRD shut) or back.
    Tor {
        rack: usize,
        up: bool,
    },
}

impl Lab {
    /// Causes `f`; the text says what was done and what to watch.
    pub fn rehearse(&mut self, f: &Fault) -> Result<String, String> {
        let node = |lab: &Lab, name: &str| {
            lab.nodes
                .iter()
                .position(|n| n.name == name)
                .ok_or_else(|| format!("no node {name:?}"))
        };
        let watch_node = |name: &str| {
            format!(
                "watch: brindle-lab status (node {name}'s agent and sessions), \
                 ip netns exec <node ns> ip route show proto bird (routes kept or gone)"
            )
        };
        Ok(match f {
            Fault::NodeStop(name) => {
                let i = node(self, name)?;
                self.stop_agent(i);
                format!(
                    "{name}: agent stopped (SIGTERM: graceful restart, its routes stay in \
                     every kernel until the restart timer ends)\n{}",
                    watch_node(name)
                )
            }
            Fault::NodeKill(name) => {
                let i = node(self, name)?;
                self.kill_agent(i);
                format!(
                    "{name}: agent killed (SIGKILL: a crash; its peers notice at the hold \
                     timer)\n{}",
                    watch_node(name)
                )
            }
            Fault::NodeStart(name) => {
                let i = node(self, name)?;
                if self.nodes[i].agent_pid().is_some() {
                    return Err(format!("{name}: the agent is running (node restart?)"));
                }
                self.start_agent(i);
                format!("{name}: agent started\n{}", watch_node(name))
            }
            Fault::NodeRestart(name) => {
                let i = node(self, name)?;
                self.stop_agent(i);
                self.start_agent(i);
                format!(
                    "{name}: agent stopped (SIGTERM) and started again\n{}",
                    watch_node(name)
                )
            }
            Fault::NodeAdd { rack } => self.node_add(*rack)?,
            Fault::NodeDel(name) => self.node_del(name)?,
            Fault::Etcd { up } => {
                if self.etcd.is_none() {
                    return Err("this lab's datastore is not etcd (--datastore kubernetes)".into());
                }
                if *up {
                    self.start_etcd();
                    "etcd started (with its data); the agents reconnect\n\
                     watch: the agents' logs (datastore reconnected)"
                        .to_string()
                } else {
                    self.stop_etcd();
                    "etcd stopped: the dataplane keeps forwarding, new pods wait for IPAM\n\
                     watch: brindle-lab status (sessions stay up), the agents' logs"
                        .to_string()
                }
            }
            Fault::Link { node: name, up } => {
                let i = node(self, name)?;
                let state = if *up { "up" } else { "down" };
                let out = self.nodes[i].ns.run(&["ip", "link", "set", "eth0", state]);
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
                format!(
                    "{name}: eth0 {state}{}\n{}",
                    if *up {
                        ""
                    } else {
                        " (its BGP sessions end at the hold timer; traffic to its pods stops)"
                    },
                    watch_node(name)
                )
            }
            Fault::Netem {
                node: name,
                delay,
                loss,
            } => {
                let i = node(self, name)?;
                let ns = &self.nodes[i].ns;
                // Remove what is there (no error if nothing is), then add.
                let _ = ns.run(&["tc", "qdisc", "del", "dev", "eth0", "root"]);
                if delay.is_none() && loss.is_none() {
                    return Ok(format!("{name}: eth0 without delay or loss again"));
                }
                let mut cmd = vec!["tc", "qdisc", "add", "dev", "eth0", "root", "netem"];
                if let Some(d) = delay {
                    cmd.extend(["delay", d.as_str()]);
                }
                if let Some(l) = loss {
                    cmd.extend(["loss", l.as_str()]);
                }
                let out = ns.run(&cmd);
                if !out.status.success() {
                    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    if why.contains("qdisc kind is unknown") {
                        return Err(format!(
                            "this kernel has no netem qdisc (module sch_netem): delay and loss \
                             cannot be set here ({}: {why})",
                            cmd.join(" ")
                        ));
                    }
                    return Err(format!("{}: {why}", cmd.join(" ")));
                }
                format!(
                    "{name}: eth0 {}\nwatch: brindle-lab probe, brindle-lab status; \
                     brindle-lab netem {name} --clear ends it",
                    cmd[6..].join(" ")
                )
            }
            Fault::Tor { rack, up } => {
                let t = self
                    .tors
                    .iter()
                    .find(|t| t.rack == *rack)
                    .ok_or_else(|| format!("no router for rack {rack} (up --tor)"))?;
                let verb = if *up { "enable" } else { "disable" };
                let out = t.bird.birdc(&[verb, "all"]);
                format!(
                    "rack {rack}'s router: every BGP session {} (birdc {verb} all)\n{}\n\
                     watch: brindle-lab status (the rack's sessions), the other racks' routes",
                    if *up { "enabled" } else { "shut" },
                    out.trim()
                )
            }
        })
    }
}
