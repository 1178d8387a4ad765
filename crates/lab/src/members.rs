//! Nodes joining and leaving a running lab (`brindle-lab node add|del`): registration, the
//! agent, the rack's router told, and on leaving the pods, the agent and the record gone so
//! that the controller's collector frees the node's blocks.

use crate::{net, Lab};

impl Lab {
    /// A new node on `rack` (default 0): its namespace and uplink, its record, its agent;
    /// the rack's router, if any, is given a session for it.
    pub fn node_add(&mut self, rack: Option<usize>) -> Result<String, String> {
        let rack = rack.unwrap_or(0);
        if rack >= self.spec.racks {
            return Err(format!(
                "no rack {rack}: this lab has {} (0..{})",
                self.spec.racks, self.spec.racks
            ));
        }
        let number = self
            .nodes
            .iter()
            .filter_map(|n| n.name.strip_prefix("node-")?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        let name = format!("node-{number}");
        let used: Vec<usize> = self
            .nodes
            .iter()
            .filter(|n| n.rack == rack)
            .map(|n| n.slot)
            .collect();
        let slot = (0..).find(|k| !used.contains(k)).unwrap_or_default();
        if slot >= 240 {
            return Err(format!("rack {rack} is full"));
        }
        let node = self
            .new_node(&name, rack, slot, number)
            .map_err(|e| format!("{name}: {e:#}"))?;
        let zone = format!("zone-{}", number % self.spec.zones.max(1));
        self.register(&node, &zone, false)
            .map_err(|e| format!("{name}: registering: {e:#}"))?;
        let addrs = node.addrs().join(" and ");
        self.nodes.push(node);
        self.spec.nodes = self.nodes.len();
        // A large lab's neighbours are pinned: the newcomer's too, and its address may be a
        // removed node's, whose old MAC address the others hold (replaced here).
        if self.nodes.len() > crate::PIN_NEIGHBOURS_ABOVE {
            self.pin_neighbours()
                .map_err(|e| format!("{name}: pinning neighbours: {e:#}"))?;
        }
        let told = self.tell_router(rack);
        self.start_agent(self.nodes.len() - 1);
        Ok(format!(
            "{name}: joined rack {rack} with {addrs}, registered, agent started{told}\n\
             watch: brindle-lab status (its sessions and its first block once a pod lands on it)"
        ))
    }

    /// A node leaves: its pods deleted (CNI DEL, as its kubelet would), its agent stopped,
    /// its record deleted (the controller then frees its blocks and affinities after its
    /// grace period), its namespace removed; its rack's router forgets it.
    pub fn node_del(&mut self, name: &str) -> Result<String, String> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("no node {name:?}"))?;
        let pods: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.node == name)
            .map(|p| p.name.clone())
            .collect();
        for p in &pods {
            self.pod_del(p)?;
        }
        self.stop_agent(i);
        let router = self.tors.iter().any(|t| t.rack == self.nodes[i].rack);
        self.remove_node(name)
            .map_err(|e| format!("{name}: deleting its record: {e:#}"))?;
        let told = if router {
            "; its rack's router reconfigured"
        } else {
            ""
        };
        Ok(format!(
            "{name}: {} pod(s) deleted, agent stopped, record deleted, namespace removed{told}\n\
             watch: brindle-lab status (its sessions gone; its blocks freed by the controller \
             after --gc-grace)",
            pods.len()
        ))
    }

    /// Rewrites a rack router's configuration for the rack's nodes now (`birdc configure`:
    /// the other sessions stay up). Says what was done, for the command's output.
    pub(crate) fn tell_router(&self, rack: usize) -> String {
        let Some(t) = self.tors.iter().find(|t| t.rack == rack) else {
            return String::new();
        };
        let mut slots: Vec<usize> = self
            .nodes
            .iter()
            .filter(|n| n.rack == rack)
            .map(|n| n.slot)
            .collect();
        slots.sort_unstable();
        let said = t
            .bird
            .reconfigure(&net::bird_conf(&self.spec, rack, &slots));
        format!(
            "; rack {rack}'s router reconfigured ({})",
            said.trim().replace('\n', " ")
        )
    }
}
