//! `ipam show | check | release | configure`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::{IPAMBlock, IPAMConfig, IPAMConfigSpec, IPPool};
use brindle_datastore::Store;
use brindle_ipam::block::{self, attr};
use brindle_ipam::check::{owner_of, AllocationRef, Owner};
use brindle_ipam::nodes::Owners;
use brindle_ipam::{Ipam, ReleaseIp, ReleaseOutcome, Report};
use ipnetwork::IpNetwork;

use crate::cli::{ReleaseArgs, ShowArgs};
use crate::output::{boxed, g5, with_percent};
use crate::Failure;

fn err(e: impl std::fmt::Display) -> Failure {
    Failure::Error(anyhow::anyhow!("{e}"))
}

struct Data {
    pools: Vec<IPPool>,
    blocks: Vec<IPAMBlock>,
}

async fn read(store: &Store) -> Result<Data, Failure> {
    let mut pools = store.all::<IPPool>().list().await.map_err(err)?.items;
    pools.sort_by_key(|p| {
        p.spec
            .network()
            .map(|n| (n.is_ipv6(), block::to_u128(n.network())))
    });
    let mut blocks = store.all::<IPAMBlock>().list().await.map_err(err)?.items;
    blocks.sort_by_key(|b| {
        block::network(&b.spec).map(|n| (n.is_ipv6(), block::to_u128(n.network())))
    });
    Ok(Data { pools, blocks })
}

fn size(net: &IpNetwork) -> f64 {
    let host = if net.is_ipv4() { 32 } else { 128 } - u32::from(net.prefix());
    2f64.powi(host as i32)
}

fn used(b: &IPAMBlock) -> f64 {
    b.spec.allocations.iter().flatten().count() as f64
}

pub async fn show(store: &Store, a: &ShowArgs) -> Result<(), Failure> {
    if let Some(ip) = a.ip {
        return show_ip(store, ip).await;
    }
    let d = read(store).await?;
    if a.show_configuration {
        let c = Ipam::new(store.clone()).config().await.map_err(err)?;
        print!("{}", configuration_table(&c));
        if !(a.show_blocks || a.show_borrowed) {
            return Ok(());
        }
    }
    if a.show_borrowed {
        print!("{}", borrowed_table(&d.blocks));
        return Ok(());
    }
    print!("{}", usage_table(&d.pools, &d.blocks, a.show_blocks));
    Ok(())
}

fn usage_row(grouping: &str, cidr: &str, total: f64, in_use: f64) -> Vec<String> {
    vec![
        grouping.into(),
        cidr.into(),
        g5(total),
        with_percent(in_use, total),
        with_percent(total - in_use, total),
    ]
}

/// `GROUPING | CIDR | IPS TOTAL | IPS IN USE | IPS FREE`, a row per pool (and its blocks).
fn usage_table(pools: &[IPPool], blocks: &[IPAMBlock], show_blocks: bool) -> String {
    let mut rows = vec![];
    for p in pools {
        let Some(net) = p.spec.network() else {
            continue;
        };
        let mine: Vec<&IPAMBlock> = blocks
            .iter()
            .filter(|b| block::network(&b.spec).is_some_and(|bn| net.contains(bn.network())))
            .collect();
        let total = size(&net);
        // fold from +0.0: an empty f64 sum is -0.0, which would print as "-0%".
        let in_use = mine.iter().map(|b| used(b)).fold(0.0, |a, b| a + b);
        rows.push(usage_row("IP Pool", &p.spec.cidr, total, in_use));
        if show_blocks {
            for b in mine {
                let t = block::network(&b.spec).map_or(0.0, |n| size(&n));
                rows.push(usage_row("Block", &b.spec.cidr, t, used(b)));
            }
        }
    }
    boxed(
        &["Grouping", "CIDR", "IPs total", "IPs in use", "IPs free"],
        &rows,
    )
}

fn configuration_table(c: &IPAMConfigSpec) -> String {
    boxed(
        &["Property", "Value"],
        &[
            vec!["StrictAffinity".into(), c.strict_affinity.to_string()],
            vec![
                "AutoAllocateBlocks".into(),
                c.auto_allocate_blocks.to_string(),
            ],
            vec!["MaxBlocksPerHost".into(), c.max_blocks_per_host.to_string()],
        ],
    )
}

fn owner_text(attrs: &BTreeMap<String, String>) -> String {
    match owner_of(attrs) {
        Owner::Pod { namespace, name } => format!("{namespace}/{name}"),
        Owner::Node(n) => format!("node {n}"),
        Owner::Container { node } => format!(
            "container {} on {node}",
            attrs
                .get(attr::CONTAINER_ID)
                .map_or("?", |c| &c[..c.len().min(12)])
        ),
        Owner::Unknown => "(unknown)".into(),
    }
}

/// Addresses whose node is not the block's: `IP | BORROWING-NODE | BLOCK | BLOCK OWNER |
/// TYPE | ALLOCATED-TO`.
fn borrowed_table(blocks: &[IPAMBlock]) -> String {
    let mut rows = vec![];
    for b in blocks {
        let owner = b
            .spec
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"));
        for a in block::allocations(&b.spec) {
            let node = a.attrs.get(attr::NODE).map(String::as_str);
            if node.is_none() || node == owner {
                continue;
            }
            rows.push(vec![
                a.ip.to_string(),
                node.unwrap_or("").to_string(),
                b.spec.cidr.clone(),
                owner.unwrap_or("(none)").to_string(),
                a.attrs.get(attr::TYPE).cloned().unwrap_or_default(),
                owner_text(&a.attrs),
            ]);
        }
    }
    boxed(
        &[
            "IP",
            "Borrowing-node",
            "Block",
            "Block owner",
            "Type",
            "Allocated-to",
        ],
        &rows,
    )
}

async fn find(
    store: &Store,
    ip: IpAddr,
) -> Result<Option<(IPAMBlock, block::Allocation)>, Failure> {
    let d = read(store).await?;
    let Some(b) = d
        .blocks
        .into_iter()
        .find(|b| block::network(&b.spec).is_some_and(|n| n.contains(ip)))
    else {
        return Ok(None);
    };
    let a = block::allocations(&b.spec).into_iter().find(|a| a.ip == ip);
    Ok(a.map(|a| (b, a)))
}

async fn show_ip(store: &Store, ip: IpAddr) -> Result<(), Failure> {
    let pools = store.all::<IPPool>().list().await.map_err(err)?.items;
    let pool = pools
        .iter()
        .find(|p| p.spec.network().is_some_and(|n| n.contains(ip)));
    match find(store, ip).await? {
        None => {
            match pool {
                Some(p) => println!(
                    "IP {ip} is not currently assigned (pool {:?}, {})",
                    p.metadata.name.as_deref().unwrap_or(""),
                    p.spec.cidr
                ),
                None => println!("IP {ip} is not currently assigned and is in no IP pool"),
            }
            Ok(())
        }
        Some((b, a)) => {
            println!("IP {ip} is in use");
            let mut lines = vec![
                ("owner".to_string(), owner_text(&a.attrs)),
                ("handle".into(), a.handle.clone().unwrap_or_default()),
                ("block".into(), b.spec.cidr.clone()),
                (
                    "block affinity".into(),
                    b.spec.affinity.clone().unwrap_or_else(|| "(none)".into()),
                ),
                ("sequence".into(), a.sequence.to_string()),
            ];
            lines.extend(a.attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
            let w = lines.iter().map(|l| l.0.len()).max().unwrap_or(0);
            for (k, v) in lines {
                println!("  {k:w$}  {v}");
            }
            Ok(())
        }
    }
}

pub async fn check(store: &Store, out: Option<&std::path::Path>) -> Result<(), Failure> {
    let owners = Owners::new(store.clone()).snapshot().await.map_err(err)?;
    let r = Ipam::new(store.clone()).check(&owners).await.map_err(err)?;
    print!("{}", summary(&r));
    if let Some(path) = out {
        let json = serde_json::to_string_pretty(&r).map_err(err)?;
        std::fs::write(path, json + "\n").map_err(|e| err(format!("{}: {e}", path.display())))?;
        eprintln!("report written to {}", path.display());
    }
    if r.is_clean() {
        Ok(())
    } else {
        Err(Failure::Reported(
            "IPAM problems found (see above); `brindlectl ipam release --from-report FILE` frees leaked addresses, the controller repairs the rest".into(),
        ))
    }
}

fn summary(r: &Report) -> String {
    let mut s = format!(
        "Checked {} blocks, {} handles, {} affinities, {} allocations.\n",
        r.blocks, r.handles, r.affinities, r.allocations
    );
    let list = |s: &mut String, title: &str, items: Vec<String>| {
        s.push_str(&format!("{title}: {}\n", items.len()));
        for i in items {
            s.push_str(&format!("  {i}\n"));
        }
    };
    let alloc = |a: &AllocationRef| {
        format!(
            "{}  {}  handle {}",
            a.ip,
            owner_text(&a.attrs),
            a.handle.as_deref().unwrap_or("(none)")
        )
    };
    list(
        &mut s,
        "Leaked addresses (owner gone)",
        r.leaked.iter().map(alloc).collect(),
    );
    list(
        &mut s,
        "Addresses held twice",
        r.duplicates.iter().map(|d| d.to_string()).collect(),
    );
    list(
        &mut s,
        "Handles that disagree with their blocks",
        r.handle_mismatches
            .iter()
            .map(|m| {
                format!(
                    "{} in {}: handle counts {}, block holds {}",
                    m.handle, m.block, m.handle_says, m.block_holds
                )
            })
            .collect(),
    );
    list(
        &mut s,
        "Blocks without an affinity",
        r.blocks_without_affinity.clone(),
    );
    list(
        &mut s,
        "Affinities without a block",
        r.affinities_without_block.clone(),
    );
    s.push_str(&format!(
        "Container addresses without a pod (their node's agent judges them): {}\n",
        r.container_attachments.len()
    ));
    s
}

/// Is the owner of this allocation still there? None: no owner recorded.
async fn owner_alive(
    owners: &Owners,
    attrs: &BTreeMap<String, String>,
) -> Result<Option<bool>, Failure> {
    Ok(match owner_of(attrs) {
        Owner::Pod { namespace, name } => {
            Some(owners.pod_exists(&namespace, &name).await.map_err(err)?)
        }
        Owner::Node(n) | Owner::Container { node: n } => {
            Some(owners.node_exists(&n).await.map_err(err)?)
        }
        Owner::Unknown => None,
    })
}

pub async fn release(store: &Store, a: &ReleaseArgs) -> Result<(), Failure> {
    let owners = Owners::new(store.clone());
    let ipam = Ipam::new(store.clone());
    let targets: Vec<AllocationRef> = if let Some(ip) = a.ip {
        let Some((b, al)) = find(store, ip).await? else {
            return Err(err(format!("IP {ip} is not assigned; nothing to release")));
        };
        vec![AllocationRef {
            block: b.metadata.name.clone().unwrap_or_default(),
            ip,
            ordinal: al.ordinal,
            handle: al.handle,
            sequence: al.sequence,
            attrs: al.attrs,
        }]
    } else if let Some(path) = &a.from_report {
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let r: Report = serde_json::from_str(&text).map_err(|e| {
            err(format!(
                "{}: not a report of `ipam check -o`: {e}",
                path.display()
            ))
        })?;
        if r.leaked.is_empty() {
            eprintln!("the report lists no leaked addresses; nothing to release");
        }
        r.leaked
    } else {
        return Err(Failure::Usage(
            "give --ip ADDR or --from-report FILE".into(),
        ));
    };
    let (mut released, mut refused) = (0, 0);
    for t in &targets {
        let what = format!("{} ({})", t.ip, owner_text(&t.attrs));
        match owner_alive(&owners, &t.attrs).await? {
            Some(true) if !a.force => {
                eprintln!("{what}: its owner still exists; not released (add --force to release it anyway)");
                refused += 1;
                continue;
            }
            None if !a.force => {
                eprintln!("{what}: no owner is recorded, so whether it is in use cannot be told; not released (add --force)");
                refused += 1;
                continue;
            }
            _ => {}
        }
        // Only the allocation that was seen: same handle, sequence number and attributes.
        let req = ReleaseIp {
            ip: t.ip,
            handle: t.handle.clone(),
            sequence: Some(t.sequence),
            attrs: Some(t.attrs.clone()),
        };
        match ipam.release_ips(&[req]).await.map_err(err)?.pop() {
            Some(ReleaseOutcome::Released) => {
                println!("released {what}");
                released += 1;
            }
            Some(ReleaseOutcome::NotAllocated) => eprintln!("{what}: already free"),
            Some(ReleaseOutcome::Mismatch { handle, sequence }) => {
                eprintln!(
                    "{what}: changed since it was read (now handle {}, sequence {sequence}); left alone",
                    handle.as_deref().unwrap_or("(none)")
                );
                refused += 1;
            }
            None => {
                refused += 1;
            }
        }
    }
    eprintln!("{released} released, {refused} left alone");
    if a.ip.is_some() && refused > 0 {
        return Err(Failure::Reported("nothing was released".into()));
    }
    Ok(())
}

pub async fn configure(
    store: &Store,
    strict: Option<bool>,
    max_blocks: Option<u32>,
    auto: Option<bool>,
) -> Result<(), Failure> {
    if strict.is_none() && max_blocks.is_none() && auto.is_none() {
        return Err(Failure::Usage(
            "give at least one of --strictaffinity, --max-blocks-per-host, --autoallocateblocks"
                .into(),
        ));
    }
    let api = store.all::<IPAMConfig>();
    for _ in 0..10 {
        let existing = api.get("default").await.map_err(err)?;
        let mut c = existing
            .clone()
            .unwrap_or_else(|| IPAMConfig::new("default", IPAMConfigSpec::default()));
        if let Some(s) = strict {
            c.spec.strict_affinity = s;
        }
        if let Some(m) = max_blocks {
            c.spec.max_blocks_per_host = m;
        }
        if let Some(a) = auto {
            c.spec.auto_allocate_blocks = a;
        }
        let r = match existing {
            Some(_) => api.update(&c).await,
            None => api.create(&c).await,
        };
        match r {
            Ok(c) => {
                print!("{}", configuration_table(&c.spec));
                return Ok(());
            }
            Err(brindle_datastore::StoreError::Conflict { .. })
            | Err(brindle_datastore::StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(
        "IPAMConfig \"default\" kept changing under us; try again",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_usage_table() {
        let pool = IPPool::new("default", brindle_api::IPPoolSpec::new("10.244.0.0/16"));
        let mut b = IPAMBlock::new(
            "10-244-0-0-26",
            block::new_block(&"10.244.0.0/26".parse().unwrap(), Some("host:n1".into())),
        );
        block::allocate(&mut b.spec, 5, "h", &BTreeMap::new());
        let t = usage_table(&[pool], &[b], true);
        crate::output::assert_golden("ipam_show_blocks.txt", &t);
    }

    /// A dual-stack cluster: each pool counts its own family's blocks only; an IPv6 pool's
    /// size is printed as calicoctl prints it (%.5g).
    #[test]
    fn both_families_each_in_its_pool() {
        let v4 = IPPool::new("default", brindle_api::IPPoolSpec::new("10.244.0.0/16"));
        let v6 = IPPool::new("v6", brindle_api::IPPoolSpec::new("fd00:10:244::/64"));
        let mut b4 = IPAMBlock::new(
            "10-244-0-0-26",
            block::new_block(&"10.244.0.0/26".parse().unwrap(), Some("host:n1".into())),
        );
        block::allocate(&mut b4.spec, 5, "h", &BTreeMap::new());
        let mut b6 = IPAMBlock::new(
            "fd00-10-244---40-122",
            block::new_block(
                &"fd00:10:244::40/122".parse().unwrap(),
                Some("host:n1".into()),
            ),
        );
        block::allocate(&mut b6.spec, 3, "h", &BTreeMap::new());
        let t = usage_table(&[v4, v6], &[b4, b6], true);
        let row = |cidr: &str| {
            t.lines()
                .find(|l| l.contains(&format!(" {cidr} ")))
                .unwrap_or_else(|| panic!("{cidr} in\n{t}"))
                .to_string()
        };
        assert!(row("10.244.0.0/16").contains("| 5 (0%)"), "{t}");
        let p6 = row("fd00:10:244::/64");
        assert!(p6.contains("1.8447e+19") && p6.contains("| 3 (0%)"), "{t}");
        assert!(row("fd00:10:244::40/122").contains("| 3 (5%)"), "{t}");
    }
}
