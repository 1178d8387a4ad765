//! IPAM on `/metrics`: the IPAM socket's requests (what a CNI ADD or DEL waits for), and the
//! pools and this node's blocks as the agent's snapshot has them. Pool usage across the
//! cluster is the sum of every agent's `used` over the pool's size (each block is counted by
//! the node it is affine to).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use brindle_ipam::block;
use ipnetwork::IpNetwork;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::OpLabel;
use crate::snapshot::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabel {
    pub pool: String,
    /// `used` or `free`.
    pub state: String,
}

type Requests = Family<OpLabel, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 0.25 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 15))
}

#[derive(Clone)]
pub struct IpamMetrics {
    requests: Requests,
    /// Addresses in each enabled pool (an f64: an IPv6 pool has 2^64 and more).
    pool_addresses: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    /// Blocks each enabled pool can give out.
    pool_blocks: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    /// Blocks of each pool affine to this node.
    node_blocks: Family<PoolLabel, Gauge>,
    /// Addresses in this node's blocks, used and free, per pool.
    node_addresses: Family<PoolStateLabel, Gauge>,
}

impl IpamMetrics {
    pub fn new(r: &mut Registry) -> IpamMetrics {
        let m = IpamMetrics {
            requests: Family::new_with_constructor(request_histogram),
            pool_addresses: Family::default(),
            pool_blocks: Family::default(),
            node_blocks: Family::default(),
            node_addresses: Family::default(),
        };
        r.register(
            "ipam_request_seconds",
            "Requests the agent's IPAM socket served for the CNI plugin (add, del) by result: the IPAM part of a pod's ADD or DEL",
            m.requests.clone(),
        );
        r.register(
            "ipam_pool_addresses",
            "Addresses in each enabled IPPool",
            m.pool_addresses.clone(),
        );
        r.register(
            "ipam_pool_blocks",
            "Blocks each enabled IPPool can give out",
            m.pool_blocks.clone(),
        );
        r.register(
            "ipam_node_blocks",
            "Blocks of each IPPool affine to this node",
            m.node_blocks.clone(),
        );
        r.register(
            "ipam_node_addresses",
            "Addresses in this node's blocks of each IPPool, used and free",
            m.node_addresses.clone(),
        );
        m
    }

    pub fn request(&self, op: &str, result: &str, took: Duration) {
        self.requests
            .get_or_create(&OpLabel {
                op: op.into(),
                result: result.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets the pool and block gauges from the snapshot (called at each scrape).
    pub fn set(&self, snap: &Snapshot, node: &str) {
        self.pool_addresses.clear();
        self.pool_blocks.clear();
        self.node_blocks.clear();
        self.node_addresses.clear();
        let pools: Vec<(&String, IpNetwork, u8)> = snap
            .pools
            .iter()
            .filter(|(_, p)| !p.disabled)
            .filter_map(|(name, p)| Some((name, p.network()?, p.effective_block_size())))
            .collect();
        let bits = |n: &IpNetwork| if n.is_ipv4() { 32 } else { 128 };
        for (name, net, size) in &pools {
            let l = PoolLabel {
                pool: name.to_string(),
            };
            let host = bits(net) - i32::from(net.prefix());
            let in_block = i32::from(*size) - i32::from(net.prefix());
            self.pool_addresses.get_or_create(&l).set(2f64.powi(host));
            self.pool_blocks
                .get_or_create(&l)
                .set(2f64.powi(in_block.max(0)));
            self.node_blocks.get_or_create(&l).set(0);
            for state in ["used", "free"] {
                let l = PoolStateLabel {
                    pool: name.to_string(),
                    state: state.into(),
                };
                self.node_addresses.get_or_create(&l).set(0);
            }
        }
        for b in snap.blocks.values() {
            if b.deleted || !block::is_affine_to(b, node) {
                continue;
            }
            let Some(bn) = block::network(b) else {
                continue;
            };
            let Some((name, ..)) = pools.iter().find(|(_, n, _)| n.contains(bn.network())) else {
                continue; // a block of a pool deleted or disabled since
            };
            let size = 1i64 << (bits(&bn) - i32::from(bn.prefix())).clamp(0, 62);
            let free = i64::try_from(block::free(b)).unwrap_or(i64::MAX);
            let l = PoolLabel {
                pool: name.to_string(),
            };
            self.node_blocks.get_or_create(&l).inc();
            for (state, n) in [("used", size.saturating_sub(free)), ("free", free)] {
                let l = PoolStateLabel {
                    pool: name.to_string(),
                    state: state.into(),
                };
                self.node_addresses.get_or_create(&l).inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_api::IPPoolSpec;
    use brindle_ipam::block::new_block;

    #[test]
    fn pools_and_this_nodes_blocks() {
        let mut s = Snapshot::default();
        std::sync::Arc::make_mut(&mut s.pools)
            .insert("v4".into(), IPPoolSpec::new("10.244.0.0/16"));
        std::sync::Arc::make_mut(&mut s.pools)
            .insert("v6".into(), IPPoolSpec::new("fd00:10:244::/64"));
        let mut off = IPPoolSpec::new("10.9.0.0/24");
        off.disabled = true;
        std::sync::Arc::make_mut(&mut s.pools).insert("off".into(), off);
        let mut mine = new_block(&"10.244.1.0/26".parse().unwrap(), Some("host:n1".into()));
        let attrs = Default::default();
        block::allocate(&mut mine, 3, "h", &attrs);
        std::sync::Arc::make_mut(&mut s.blocks).insert("a".into(), mine);
        let theirs = new_block(&"10.244.2.0/26".parse().unwrap(), Some("host:n2".into()));
        std::sync::Arc::make_mut(&mut s.blocks).insert("b".into(), theirs);
        let six = new_block(
            &"fd00:10:244::40/122".parse().unwrap(),
            Some("host:n1".into()),
        );
        std::sync::Arc::make_mut(&mut s.blocks).insert("c".into(), six);

        let mut r = Registry::with_prefix("brindle");
        let m = IpamMetrics::new(&mut r);
        m.set(&s, "n1");
        m.request("add", "ok", Duration::from_millis(2));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let value = |series: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in {out}"))
        };
        assert_eq!(value(r#"brindle_ipam_pool_addresses{pool="v4"}"#), 65536.0);
        assert_eq!(value(r#"brindle_ipam_pool_blocks{pool="v4"}"#), 1024.0);
        assert_eq!(
            value(r#"brindle_ipam_pool_blocks{pool="v6"}"#),
            2f64.powi(58)
        );
        assert_eq!(value(r#"brindle_ipam_node_blocks{pool="v4"}"#), 1.0);
        assert_eq!(value(r#"brindle_ipam_node_blocks{pool="v6"}"#), 1.0);
        let used = value(r#"brindle_ipam_node_addresses{pool="v4",state="used"}"#);
        let free = value(r#"brindle_ipam_node_addresses{pool="v4",state="free"}"#);
        assert_eq!((used, free), (3.0, 61.0), "n2's block is not counted");
        assert_eq!(
            value(r#"brindle_ipam_node_addresses{pool="v6",state="free"}"#),
            64.0
        );
        assert!(!out.contains(r#"pool="off""#), "a disabled pool: {out}");
        assert!(
            out.contains(r#"brindle_ipam_request_seconds_count{op="add",result="ok"} 1"#),
            "{out}"
        );
    }
}
