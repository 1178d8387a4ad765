//! What each established peer is sent. Exported attributes are memoized (peers alike, the
//! prefixes of one UPDATE and later peers share one result), and peers alike form update
//! groups: a batch of changes is encoded once per group and the same bytes go to every
//! member, except to the members some of the changes came from (a reflector's clients
//! announcing), which get their own. A table for members coming up is encoded once for the
//! group, each member's own routes in a run of their own that is left out of what it is sent.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use ipnetwork::IpNetwork;
use tracing::info;

use super::{Core, Peer, Up};
use crate::adj_out::Want;
use crate::codec::{Afi, AsSegment, Attributes, MpReach, SAFI_UNICAST};
use crate::policy::Verdict;
use crate::rib::{Change, Path, PeerId, Rib, LOCAL};
use crate::speaker::pack::{end_of_rib, pack_wants};
use crate::speaker::session::Out;
use crate::speaker::PeerConfig;

/// Peers in one update group: they export alike, and their sessions encode alike (AS
/// numbers' size, message size; no add-path, no export policy of their own).
#[derive(PartialEq, Eq, Hash)]
struct GroupKey {
    alike: Alike,
    four_octet_as: bool,
    extended_message: bool,
}

fn group_key(pc: &PeerConfig, up: &Up) -> Option<GroupKey> {
    let plain = pc.export.terms.is_empty() && !up.settings.add_path && up.ctx.add_path.is_empty();
    plain.then(|| GroupKey {
        alike: Alike::of(pc, up),
        four_octet_as: up.ctx.four_octet_as,
        extended_message: up.ctx.extended_message,
    })
}

impl Core {
    /// Sends Loc-RIB changes to the kernel and to every established peer that has our table
    /// (the kernel waits while we restart: [`Core::converged`] then sends everything).
    ///
    /// Without add-path nothing per route is kept for a peer (no Adj-RIB-Out, as BIRD
    /// keeps none): what it has is what the previous best path exported to it, so a change
    /// is sent only when that differs from what the new best exports. With add-path the
    /// writer keeps what it sent, to number the paths.
    pub(super) fn propagate(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.kernel_changes(changes);
        let (groups, mut alone) =
            self.update_groups(self.peers.keys().copied(), |_, up| up.table_sent);
        for members in groups {
            self.send_to_group(changes, members, &mut alone);
        }
        for id in alone {
            let Some((p, up)) = established(&self.peers, id) else {
                continue;
            };
            let (wants, delta) = wants(&self.rib, &mut self.cache, p, up, changes);
            if !wants.is_empty() {
                count(up, delta);
                let _ = up.writer.send(Out::Routes(wants));
            }
        }
    }

    /// One group's share of `changes`, encoded once for the group. A member that some of
    /// the changes came from (a reflector's client announcing) is sent the encoding without
    /// the run of its own changes, when what those changes mean to it is nothing: its own
    /// route new or gone, with no other path before or after it. A member for which a
    /// change means more (its route replaced another's, or another's replaced its own: it
    /// needs a withdrawal or an announcement the others do not) is added to `alone`, to be
    /// served by itself. Changes to a prefix that changed more than once in the batch stay
    /// in the common run, in order.
    fn send_to_group(&mut self, changes: &[Change], members: Vec<PeerId>, alone: &mut Vec<PeerId>) {
        let set: HashSet<PeerId> = members.iter().copied().collect();
        let mut seen: HashMap<IpNetwork, usize> = HashMap::new();
        for c in changes {
            *seen.entry(c.prefix).or_default() += 1;
        }
        // Per change: the member whose run it goes in (None: the common run). Per member in
        // any change: whether it can be served by skipping its run.
        let mut bucket: Vec<Option<PeerId>> = Vec::with_capacity(changes.len());
        let mut skippable: HashMap<PeerId, bool> = HashMap::new();
        for c in changes {
            let best = c.best.as_ref().map(|p| p.peer);
            let before = c.previous.as_ref().map(|p| p.peer);
            let mut own = None;
            for m in [best, before]
                .into_iter()
                .flatten()
                .filter(|m| set.contains(m))
            {
                let only_its_own = best.is_none_or(|b| b == m)
                    && before.is_none_or(|b| b == m)
                    && seen.get(&c.prefix) == Some(&1);
                let ok = skippable.entry(m).or_insert(true);
                *ok &= only_its_own;
                if only_its_own {
                    own = Some(m);
                }
            }
            bucket.push(own);
        }
        let (shared, involved): (Vec<PeerId>, Vec<PeerId>) = members
            .into_iter()
            .partition(|m| !skippable.contains_key(m));
        let Some((rep, up)) = shared.first().and_then(|id| established(&self.peers, *id)) else {
            alone.extend(involved);
            return;
        };
        let (skipping, own): (Vec<PeerId>, Vec<PeerId>) =
            involved.into_iter().partition(|m| skippable[m]);
        alone.extend(own);
        let skip: HashSet<PeerId> = skipping.iter().copied().collect();
        let mut common = vec![];
        let mut runs_of: HashMap<PeerId, Vec<Change>> = HashMap::new();
        for (c, b) in changes.iter().zip(&bucket) {
            match b.filter(|m| skip.contains(m)) {
                Some(m) => runs_of.entry(m).or_default().push(c.clone()),
                None => common.push(c.clone()),
            }
        }
        let ctx = up.ctx.clone();
        let (wants_common, mut delta) = wants(&self.rib, &mut self.cache, rep, up, &common);
        let mut buf = BytesMut::new();
        pack_wants(wants_common, &ctx, &mut buf);
        let mut runs: HashMap<PeerId, (usize, usize, isize)> = HashMap::new();
        for (m, cs) in runs_of {
            let (w, d) = wants(&self.rib, &mut self.cache, rep, up, &cs);
            let start = buf.len();
            pack_wants(w, &ctx, &mut buf);
            delta += d;
            runs.insert(m, (start, buf.len(), d));
        }
        if buf.is_empty() {
            return;
        }
        let bytes = buf.freeze();
        for id in shared.iter().chain(&skipping) {
            let Some(up) = self.peers.get(id).and_then(|p| p.up.as_ref()) else {
                continue;
            };
            let run = runs.get(id);
            count(up, delta - run.map_or(0, |r| r.2));
            send_without(up, &bytes, run.map(|r| (r.0, r.1)));
        }
    }

    /// The table, to each of `peers` that is up and has not had it. Members of one update
    /// group share one encoding of it (a reflector's clients that come up together): the
    /// routes are packed in runs by the member they came from, and each member is sent the
    /// encoding without its own run (its own routes are never sent back to it, and it has
    /// had nothing yet, so there is nothing to withdraw). Nothing is encoded per member.
    pub(super) fn send_tables(&mut self, peers: Vec<PeerId>) {
        let (groups, alone) = self.update_groups(peers.into_iter(), |_, up| !up.table_sent);
        for members in groups {
            self.send_group_table(&members);
        }
        for id in alone {
            self.send_table(id);
        }
    }

    /// One group's table (see [`Core::send_tables`]); `members` has two or more.
    fn send_group_table(&mut self, members: &[PeerId]) {
        let (Some((p0, up0)), Some((p1, up1))) = (
            established(&self.peers, members[0]),
            members.get(1).and_then(|id| established(&self.peers, *id)),
        ) else {
            return;
        };
        let in_group: HashSet<PeerId> = members.iter().copied().collect();
        // Each route as a member that it did not come from sees it: members alike export a
        // path alike unless it is their own.
        let mut common = vec![];
        let mut own: HashMap<PeerId, Vec<Want>> = HashMap::new();
        for c in self.rib.iter() {
            let source = c.best.as_ref().map(|b| b.peer);
            let (rp, rup) = if source == Some(p0.id) {
                (p1, up1)
            } else {
                (p0, up0)
            };
            let w = Want::of(&c, false, |path| {
                export_one(&self.rib, &rp.cfg, rup, &c.prefix, path, &mut self.cache)
            });
            if w.paths.is_empty() {
                continue;
            }
            match source.filter(|s| in_group.contains(s)) {
                Some(s) => own.entry(s).or_default().push(w),
                None => common.push(w),
            }
        }
        let n = common.len() + own.values().map(Vec::len).sum::<usize>();
        let ctx = up0.ctx.clone();
        let (v4, v6) = (up0.v4, up0.v6);
        let mut buf = BytesMut::new();
        pack_wants(common, &ctx, &mut buf);
        let mut runs: HashMap<PeerId, (usize, usize, usize)> = HashMap::new();
        for (src, wants) in own {
            let (start, count) = (buf.len(), wants.len());
            pack_wants(wants, &ctx, &mut buf);
            runs.insert(src, (start, buf.len(), count));
        }
        for (on, afi) in [(v4, Afi::Ipv4), (v6, Afi::Ipv6)] {
            if on {
                end_of_rib(afi, &ctx, &mut buf);
            }
        }
        let bytes = buf.freeze();
        for id in members {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            let Some(up) = p.up.as_mut() else { continue };
            up.table_sent = true;
            let run = runs.get(id);
            send_without(up, &bytes, run.map(|r| (r.0, r.1)));
            let routes = n - run.map_or(0, |r| r.2);
            up.advertised.store(routes, Ordering::Relaxed);
            info!(peer = %p.cfg.addr, routes, group = members.len(), "sent the table and End-of-RIB");
        }
    }

    /// `peers` that are established and `wanted`, split into update groups of two or more
    /// and the rest (no group, or alone in theirs).
    fn update_groups(
        &self,
        peers: impl Iterator<Item = PeerId>,
        wanted: impl Fn(&Peer, &Up) -> bool,
    ) -> (Vec<Vec<PeerId>>, Vec<PeerId>) {
        let mut groups: HashMap<GroupKey, Vec<PeerId>> = HashMap::new();
        let mut alone = vec![];
        for (p, up) in peers.filter_map(|id| established(&self.peers, id)) {
            if !wanted(p, up) {
                continue;
            }
            match group_key(&p.cfg, up) {
                Some(k) => groups.entry(k).or_default().push(p.id),
                None => alone.push(p.id),
            }
        }
        let (groups, single): (Vec<_>, Vec<_>) = groups.into_values().partition(|m| m.len() >= 2);
        alone.extend(single.into_iter().flatten());
        (groups, alone)
    }
}

/// `bytes` to the peer, without the range `skip` (the run of its own routes), as zero-copy
/// slices of the group's one encoding.
fn send_without(up: &Up, bytes: &Bytes, skip: Option<(usize, usize)>) {
    let parts = match skip {
        Some((start, end)) => [bytes.slice(..start), bytes.slice(end..)],
        None => [bytes.clone(), Bytes::new()],
    };
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let _ = up.writer.send(Out::Raw(part));
    }
}

/// The peer and its session, if it is established.
fn established(peers: &HashMap<PeerId, Peer>, id: PeerId) -> Option<(&Peer, &Up)> {
    let p = peers.get(&id)?;
    Some((p, p.up.as_ref()?))
}

/// What `changes` mean for one peer, and by how much its count of advertised routes moves
/// (without add-path; with it the writer counts).
fn wants(
    rib: &Rib,
    cache: &mut ExportCache,
    p: &Peer,
    up: &Up,
    changes: &[Change],
) -> (Vec<Want>, isize) {
    let mut delta = 0;
    let mut out = vec![];
    for c in changes {
        let mut export = |path: &Path| export_one(rib, &p.cfg, up, &c.prefix, path, cache);
        if up.settings.add_path {
            out.push(Want::of(c, true, &mut export));
            continue;
        }
        let new = c.best.as_ref().and_then(&mut export);
        let old = c.previous.as_ref().and_then(&mut export);
        match (&new, &old) {
            (None, None) => continue,
            (Some(n), Some(o)) if Arc::ptr_eq(n, o) || n == o => continue,
            (Some(_), None) => delta += 1,
            (None, Some(_)) => delta -= 1,
            (Some(_), Some(_)) => {}
        }
        out.push(Want {
            prefix: c.prefix,
            paths: new.map(|a| (None, a)).into_iter().collect(),
        });
    }
    (out, delta)
}

fn count(up: &Up, delta: isize) {
    if delta >= 0 {
        up.advertised.fetch_add(delta as usize, Ordering::Relaxed);
    } else {
        up.advertised
            .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// What decides the exported attributes (with an empty export policy): the source path's
/// attributes and peer, the prefix's family, and how the receiving peer exports. Peers alike
/// share one result, and so do the prefixes of one UPDATE.
#[derive(PartialEq, Eq, Hash)]
struct MemoKey {
    attrs: usize,
    from: PeerId,
    v4_prefix: bool,
    alike: Alike,
}

/// How a peer exports, apart from who it is: peers alike export a path that came from
/// neither of them the same way.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Alike {
    ebgp: bool,
    rr_client: bool,
    next_hop_self: bool,
    nh4: Option<Ipv4Addr>,
    nh6: Option<Ipv6Addr>,
    v4: bool,
    v6: bool,
    /// The export policy's default (the memo and the groups are for policies without
    /// terms, where the default is all there is).
    export_accepts: bool,
    /// A cluster member (a no-transit speaker reflects only to members).
    member: bool,
}

impl Alike {
    fn of(pc: &PeerConfig, up: &Up) -> Alike {
        Alike {
            ebgp: up.ebgp,
            rr_client: pc.rr_client,
            next_hop_self: pc.next_hop_self,
            nh4: up.nh4,
            nh6: up.nh6,
            v4: up.v4,
            v6: up.v6,
            export_accepts: pc.export.default == Verdict::Accept,
            member: pc.member,
        }
    }
}

/// Exported attributes, shared between peers alike, between the prefixes of one UPDATE,
/// and over time: a peer that comes up gets the very attribute sets the others hold, so a
/// reflector with 1,000 clients keeps one copy of each route's attributes, not 1,000.
///
/// Keyed by the source attributes' address; each entry holds a `Weak` to them, which keeps
/// that allocation (not its contents) alive, so the address cannot be reused while the entry
/// exists. Entries whose source is gone are swept as the cache grows.
/// The source (held weakly) and what it exports as.
type Cached = (Weak<Attributes>, Option<Arc<Attributes>>);

#[derive(Default)]
pub(super) struct ExportCache {
    map: HashMap<MemoKey, Cached, BuildHasherDefault<FxHasher>>,
    swept_at: usize,
}

impl ExportCache {
    fn get_or(
        &mut self,
        key: MemoKey,
        src: &Arc<Attributes>,
        make: impl FnOnce() -> Option<Arc<Attributes>>,
    ) -> Option<Arc<Attributes>> {
        if let Some((_, v)) = self.map.get(&key) {
            return v.clone();
        }
        let v = make();
        self.map.insert(key, (Arc::downgrade(src), v.clone()));
        if self.map.len() > 2 * self.swept_at + 1024 {
            self.map.retain(|_, (w, _)| w.strong_count() > 0);
            self.swept_at = self.map.len();
        }
        v
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.swept_at = 0;
    }
}

/// The memo is consulted for every prefix and peer: a multiply-rotate hash (as rustc's
/// FxHash) instead of SipHash; its keys are our own pointers and flags, not peer input.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What `path` exports as to the established peer `up` (None: not sent), shared through
/// the cache when the peer's export policy is empty.
fn export_one(
    rib: &Rib,
    pc: &PeerConfig,
    up: &Up,
    prefix: &IpNetwork,
    path: &Path,
    cache: &mut ExportCache,
) -> Option<Arc<Attributes>> {
    if path.peer == up.settings.peer.id {
        return None; // never back to where it came from
    }
    if !pc.export.terms.is_empty() {
        return export_attrs(rib, pc, up, prefix, path).map(Arc::new);
    }
    let key = MemoKey {
        attrs: Arc::as_ptr(&path.attrs) as usize,
        from: path.peer,
        v4_prefix: prefix.is_ipv4(),
        alike: Alike::of(pc, up),
    };
    cache.get_or(key, &path.attrs, || {
        export_attrs(rib, pc, up, prefix, path).map(Arc::new)
    })
}

fn export_attrs(
    rib: &Rib,
    pc: &PeerConfig,
    up: &Up,
    prefix: &IpNetwork,
    path: &Path,
) -> Option<Attributes> {
    if (prefix.is_ipv4() && !up.v4) || (prefix.is_ipv6() && !up.v6) {
        return None;
    }
    let mut a = rib.export(path, &up.settings.peer)?;
    let rewrite = up.ebgp || pc.next_hop_self || path.peer == LOCAL;
    if prefix.is_ipv4() {
        if rewrite || a.next_hop.is_none() {
            a.next_hop = Some(up.nh4?);
        }
    } else {
        let keep = a.mp_reach.as_ref().is_some_and(|r| !r.next_hops.is_empty());
        if rewrite || !keep {
            a.mp_reach = Some(MpReach {
                afi: Afi::Ipv6,
                safi: SAFI_UNICAST,
                next_hops: vec![IpAddr::V6(up.nh6?)],
                nlri: vec![],
            });
        }
        a.next_hop = None;
    }
    if up.ebgp {
        a.med = a.med.filter(|_| path.peer == LOCAL);
    } else if a.local_pref.is_none() {
        a.local_pref = Some(100);
    }
    if a.as_path.is_none() {
        a.as_path = Some(Vec::<AsSegment>::new());
    }
    (pc.export.apply_route(prefix, &mut a, path.peer != LOCAL) == Verdict::Accept).then_some(a)
}

/// The whole table (or a family of it) as one peer should have it.
pub(crate) fn export_all(
    rib: &Rib,
    cache: &mut ExportCache,
    pc: &PeerConfig,
    up: &Up,
    all: impl Iterator<Item = Change>,
) -> Vec<Want> {
    all.map(|c| {
        Want::of(&c, up.settings.add_path, |path| {
            export_one(rib, pc, up, &c.prefix, path, cache)
        })
    })
    .filter(|w| !w.paths.is_empty())
    .collect()
}
