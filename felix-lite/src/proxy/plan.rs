//! What one service port does on this node, decided once for every dataplane: which chain
//! its cluster IP, external addresses and node port lead to, what happens when there is no
//! endpoint to lead to, and the external chain's steps. The iptables renderer
//! ([`super::rules`]) and the nftables one ([`crate::nft::services`]) both write this plan;
//! neither decides anything of its own (kube-proxy's `syncProxyRules`, REFERENCE §B2).

use super::topology::{categorize, Categorized};
use super::{NodeContext, ServicePort};

/// A chain of the service's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// All usable endpoints (kube-proxy `KUBE-SVC-`, nft `service-`).
    Cluster,
    /// This node's endpoints only (`KUBE-SVL-`, `local-`).
    Local,
    /// Traffic to an external address or the node port (`KUBE-EXT-`, `external-`).
    External,
    /// loadBalancerSourceRanges (`KUBE-FW-`, `firewall-`).
    Firewall,
}

/// What is done with traffic that has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The service has no endpoint at all: ICMP port unreachable.
    Reject,
    /// It has endpoints, none usable by this policy here: dropped.
    Drop,
}

impl NoEndpoint {
    /// The rule comment's words.
    pub fn why(self) -> &'static str {
        match self {
            NoEndpoint::Reject => "has no endpoints",
            NoEndpoint::Drop => "has no local endpoints",
        }
    }
}

/// One step of the external chain, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalStep {
    /// Everything is masqueraded (externalTrafficPolicy Cluster).
    MasqueradeAll,
    /// Pods (sources in the pools) use every endpoint: jump to the cluster chain.
    PodsToCluster,
    /// The node itself: masqueraded …
    MasqueradeLocalSource,
    /// … and sent to the cluster chain.
    LocalSourceToCluster,
    /// The rest: to the chain of the external policy.
    To(ChainKind),
}

/// The decisions for one service port.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub cat: Categorized<'a>,
    /// The cluster chain exists (some endpoint for the Cluster policy).
    pub uses_cluster: bool,
    /// The local chain exists.
    pub uses_local: bool,
    /// Where the cluster IP leads; None: [`Plan::no_endpoint`] (filter).
    pub internal: Option<ChainKind>,
    /// Whether external traffic has a chain to reach (else it gets [`Plan::no_endpoint`]).
    pub has_external: bool,
    pub no_endpoint: NoEndpoint,
    /// Load balancer IPs lead through the firewall chain (source ranges set).
    pub uses_firewall: bool,
    /// The external chain's steps (the chain exists when the service is externally
    /// accessible and has any endpoint).
    pub external: Vec<ExternalStep>,
}

impl<'a> Plan<'a> {
    pub fn new(svc: &'a ServicePort, ctx: &NodeContext) -> Plan<'a> {
        let cat = categorize(svc, ctx);
        let uses_cluster = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
        let uses_local = !cat.local.is_empty() && svc.uses_local_endpoints();
        let pick = |local: bool| {
            if local {
                (ChainKind::Local, uses_local)
            } else {
                (ChainKind::Cluster, uses_cluster)
            }
        };
        let (internal, has_internal) = pick(svc.internal_local);
        let (external_chain, has_external) = pick(svc.external_policy_local());
        let mut external = vec![];
        if !svc.external_policy_local() {
            external.push(ExternalStep::MasqueradeAll);
        } else if uses_cluster {
            external.extend([
                ExternalStep::PodsToCluster,
                ExternalStep::MasqueradeLocalSource,
                ExternalStep::LocalSourceToCluster,
            ]);
        }
        if has_external {
            external.push(ExternalStep::To(external_chain));
        }
        Plan {
            uses_firewall: cat.has_any
                && !svc.load_balancer_source_ranges.is_empty()
                && !svc.load_balancer_ips.is_empty(),
            no_endpoint: if cat.has_any {
                NoEndpoint::Drop
            } else {
                NoEndpoint::Reject
            },
            cat,
            uses_cluster,
            uses_local,
            internal: has_internal.then_some(internal),
            has_external,
            external,
        }
    }

    /// Where a load balancer IP leads.
    pub fn load_balancer_chain(&self) -> ChainKind {
        if self.uses_firewall {
            ChainKind::Firewall
        } else {
            ChainKind::External
        }
    }
}
