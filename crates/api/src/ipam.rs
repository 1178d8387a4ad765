//! IPAM's records: blocks, node↔block affinities, handles, and the cluster IPAM knobs.
//! Blocks, affinities and handles are written by IPAM, not by people; IPAMConfig is set by
//! operators.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{parse_network_cidr, FieldError, Validate};

/// One block of a pool. Slot `i` of `allocations` is address `cidr.network() + i`; it holds
/// an index into `attributes` when allocated. `unallocated` is FIFO: addresses are taken from
/// its head and returned to its tail, so the longest-idle address is reused first.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Affinity","type":"string","jsonPath":".spec.affinity"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    pub cidr: String,
    /// `host:<node>` when a node owns the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    pub allocations: Vec<Option<u32>>,
    pub unallocated: Vec<u32>,
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Bumped on every allocation change; a release by address names the sequence number
    /// it saw, so a stale release cannot free a newer allocation of the same address.
    #[serde(default)]
    pub sequence_number: u64,
    /// The sequence number at which each slot (by ordinal, as a string) was allocated.
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// Set while the block is being deleted, so no new allocation lands in it.
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationAttribute {
    #[serde(default, rename = "handleID", skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Owner facts: pod, namespace, node, container ID, type.
    #[serde(default)]
    pub secondary: BTreeMap<String, String>,
}

impl Validate for IPAMBlock {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = vec![];
        let s = &self.spec;
        let Some(net) = parse_network_cidr("spec.cidr", &s.cidr, &mut errors) else {
            return errors;
        };
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let host_bits = u32::from(bits - net.prefix());
        if host_bits > 12 {
            errors.push(FieldError::new(
                "spec.cidr",
                "a block holds at most 4096 addresses",
            ));
            return errors;
        }
        let size = 1usize << host_bits;
        if s.allocations.len() != size {
            errors.push(FieldError::new(
                "spec.allocations",
                format!(
                    "{} slots for a block of {size} addresses",
                    s.allocations.len()
                ),
            ));
        }
        if let Some(bad) = s.unallocated.iter().find(|&&o| o as usize >= size) {
            errors.push(FieldError::new(
                "spec.unallocated",
                format!("ordinal {bad} outside the block"),
            ));
        }
        if let Some(bad) = s
            .allocations
            .iter()
            .flatten()
            .find(|&&a| a as usize >= s.attributes.len())
        {
            errors.push(FieldError::new(
                "spec.allocations",
                format!(
                    "attribute index {bad} but only {} attributes",
                    s.attributes.len()
                ),
            ));
        }
        if let Some(a) = &s.affinity {
            if !a.starts_with("host:") || a.len() == 5 {
                errors.push(FieldError::new(
                    "spec.affinity",
                    format!("{a:?} is not host:<node>"),
                ));
            }
        }
        errors
    }
}

/// A node's claim on a block. Claims are made `Pending`, then the block is written, then the
/// claim is `Confirmed`; `PendingDeletion` marks a claim being given up.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    pub node: String,
    pub cidr: String,
    pub state: AffinityState,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

impl Validate for BlockAffinity {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = vec![];
        if self.spec.node.is_empty() {
            errors.push(FieldError::new("spec.node", "empty"));
        }
        parse_network_cidr("spec.cidr", &self.spec.cidr, &mut errors);
        errors
    }
}

/// What one owner (a pod's container, a node's tunnel) holds: addresses counted per block.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    printcolumn = r#"{"name":"Handle","type":"string","jsonPath":".spec.handleID"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR → number of addresses this handle holds in it.
    #[serde(default)]
    pub block: BTreeMap<String, u32>,
    #[serde(default)]
    pub deleted: bool,
}

impl Validate for IPAMHandle {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = vec![];
        if self.spec.handle_id.is_empty() {
            errors.push(FieldError::new("spec.handleID", "empty"));
        }
        for cidr in self.spec.block.keys() {
            parse_network_cidr(&format!("spec.block[{cidr}]"), cidr, &mut errors);
        }
        errors
    }
}

/// Cluster-wide IPAM knobs; one object named `default`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "IPAMConfig",
    plural = "ipamconfigs",
    printcolumn = r#"{"name":"StrictAffinity","type":"boolean","jsonPath":".spec.strictAffinity"}"#,
    printcolumn = r#"{"name":"MaxBlocksPerHost","type":"integer","jsonPath":".spec.maxBlocksPerHost"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    /// Never borrow addresses from another node's block.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks when a node's are full.
    #[serde(default = "yes")]
    pub auto_allocate_blocks: bool,
    /// At most this many blocks per node; 0 means no limit.
    #[serde(default)]
    pub max_blocks_per_host: u32,
}

fn yes() -> bool {
    true
}

impl Default for IPAMConfigSpec {
    fn default() -> Self {
        IPAMConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

impl Validate for IPAMConfig {
    fn field_errors(&self) -> Vec<FieldError> {
        match self.metadata.name.as_deref() {
            Some("default") => vec![],
            other => vec![FieldError::new(
                "metadata.name",
                format!("{other:?}: the cluster has one IPAMConfig and it is named \"default\""),
            )],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_name() {
        let c: IPAMConfigSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(c, IPAMConfigSpec::default());
        assert!(IPAMConfig::new("default", c.clone()).validate().is_ok());
        let e = IPAMConfig::new("other", c).validate().unwrap_err();
        assert!(e.mentions("metadata.name"), "{e}");
    }

    #[test]
    fn block_shape() {
        let mut b = IPAMBlock::new(
            "10-0-0-0-30",
            IPAMBlockSpec {
                cidr: "10.0.0.0/30".into(),
                affinity: Some("host:n1".into()),
                allocations: vec![None; 4],
                unallocated: vec![0, 1, 2, 3],
                attributes: vec![],
                sequence_number: 0,
                sequence_number_for_allocation: BTreeMap::new(),
                deleted: false,
            },
        );
        assert!(b.validate().is_ok());
        b.spec.allocations[0] = Some(0);
        assert!(b.validate().unwrap_err().mentions("spec.allocations"));
        b.spec.allocations = vec![None; 3];
        assert!(b.validate().unwrap_err().mentions("spec.allocations"));
        b.spec.allocations = vec![None; 4];
        b.spec.affinity = Some("n1".into());
        assert!(b.validate().unwrap_err().mentions("spec.affinity"));
    }
}
