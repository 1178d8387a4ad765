//! Labels as an agent holds them for every pod of the cluster: sorted pairs of shared
//! strings, and each distinct set of pairs held once. A cluster's labels repeat a few hundred
//! keys and values over all its pods, and the pods of one ReplicaSet carry the same set; a
//! `BTreeMap<String, String>` per pod costs half a kilobyte even for three labels (a B-tree
//! leaf is allocated whole), here a pod's labels are one shared pointer (16 bytes) and each
//! distinct set is held once. A pod's named container ports are shared the same way.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

use crate::model::NamedPort;

type Pair = (Arc<str>, Arc<str>);

/// Compared by pointer first: two pods with the same labels share one set.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[Pair]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `key` (a builder's call: it copies the pairs).
    pub fn insert(&mut self, key: &str, value: &str) {
        let mut pairs = self.0.to_vec();
        match position(&pairs, key) {
            Ok(i) => pairs[i].1 = intern(value),
            Err(i) => pairs.insert(i, (intern(key), intern(value))),
        }
        self.0 = share(&LABEL_SETS, &pairs[..]);
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        position(&self.0, key)
    }
}

/// Where `key` is in sorted `pairs`, or would go.
fn position(pairs: &[Pair], key: &str) -> Result<usize, usize> {
    pairs.binary_search_by(|(k, _)| (**k).cmp(key))
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// A key given twice keeps its last value, as a map's insert would.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<Arc<str>, Arc<str>> = iter
            .into_iter()
            .map(|(k, v)| (intern(k.as_ref()), intern(v.as_ref())))
            .collect();
        let pairs: Vec<Pair> = sorted.into_iter().collect();
        Labels(share(&LABEL_SETS, &pairs[..]))
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(m: BTreeMap<String, String>) -> Self {
        m.into_iter().collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Labels {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Values shared by every holder of an equal one. Grows with the distinct values alive;
/// once it has doubled since it was last swept, the values nobody else holds any more are
/// dropped (a label value unique to each pod, such as a hash, does not pile up after its
/// pods are gone).
struct Interner<T: ?Sized> {
    items: HashSet<Arc<T>>,
    swept_at: usize,
}

type Shared<T> = LazyLock<Mutex<Interner<T>>>;

const fn interner<T: ?Sized>() -> Shared<T> {
    LazyLock::new(|| {
        Mutex::new(Interner {
            items: HashSet::new(),
            swept_at: 0,
        })
    })
}

static STRINGS: Shared<str> = interner();
static LABEL_SETS: Shared<[Pair]> = interner();
static PORT_LISTS: Shared<[NamedPort]> = interner();

/// The shared copy of `v`.
fn share<T, Q>(set: &Shared<T>, v: &Q) -> Arc<T>
where
    T: ?Sized + Hash + Eq,
    Q: ?Sized + Hash + Eq,
    Arc<T>: Borrow<Q> + for<'a> From<&'a Q>,
{
    // A poisoned lock only means another thread panicked mid-insert: the set is still sound.
    let mut i = set.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(have) = i.items.get(v) {
        return have.clone();
    }
    if i.items.len() >= 2 * i.swept_at.max(1024) {
        i.items.retain(|s| Arc::strong_count(s) > 1);
        i.swept_at = i.items.len();
    }
    let new: Arc<T> = Arc::from(v);
    i.items.insert(new.clone());
    new
}

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    share(&STRINGS, s)
}

/// The shared copy of a pod's named container ports.
pub fn share_ports(ports: &[NamedPort]) -> Arc<[NamedPort]> {
    share(&PORT_LISTS, ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_and_orders_like_a_map() {
        let mut l: Labels = [("tier", "web"), ("app", "a1"), ("tier", "db")]
            .into_iter()
            .collect();
        assert_eq!(l.get("tier"), Some("db"), "the last value given wins");
        assert_eq!(l.get("app"), Some("a1"));
        assert_eq!(l.get("zone"), None);
        l.insert("zone", "z1");
        l.insert("app", "a2");
        let pairs: Vec<_> = l.iter().collect();
        assert_eq!(pairs, [("app", "a2"), ("tier", "db"), ("zone", "z1")]);
        assert!(l.contains_key("zone") && !l.contains_key("z"));
    }

    #[test]
    fn equal_strings_are_shared_and_dead_ones_are_swept() {
        let a: Labels = [("app", "shared-value-x")].into_iter().collect();
        let b: Labels = [("app", "shared-value-x")].into_iter().collect();
        assert!(Arc::ptr_eq(&a.0, &b.0), "one set of pairs for both");
        let c: Labels = [("app", "shared-value-x"), ("tier", "web")]
            .into_iter()
            .collect();
        assert!(Arc::ptr_eq(&a.0[0].1, &c.0[0].1), "one string in both sets");
        // Thousands of values no label keeps: the set does not keep them all.
        for n in 0..20_000 {
            drop(intern(&format!("gone-{n}")));
        }
        let held = STRINGS.lock().unwrap().items.len();
        assert!(held < 20_000, "{held} strings kept");
        assert_eq!(a.get("app"), Some("shared-value-x"));
    }
}
