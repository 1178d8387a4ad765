//! Labels as an agent holds them for every pod of the cluster: sorted pairs of shared
//! strings. A cluster's labels repeat a few hundred keys and values over all its pods, and a
//! `BTreeMap<String, String>` per pod costs half a kilobyte even for three labels (a B-tree
//! leaf is allocated whole); here three labels are 96 bytes, each distinct string held once.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

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
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        match position(&pairs, key) {
            Ok(i) => pairs[i].1 = intern(value),
            Err(i) => pairs.insert(i, (intern(key), intern(value))),
        }
        self.0 = pairs.into_boxed_slice();
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        position(&self.0, key)
    }
}

/// Where `key` is in sorted `pairs`, or would go.
fn position(pairs: &[(Arc<str>, Arc<str>)], key: &str) -> Result<usize, usize> {
    pairs.binary_search_by(|(k, _)| (**k).cmp(key))
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// A key given twice keeps its last value, as a map's insert would.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<Arc<str>, Arc<str>> = iter
            .into_iter()
            .map(|(k, v)| (intern(k.as_ref()), intern(v.as_ref())))
            .collect();
        Labels(sorted.into_iter().collect())
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

/// The strings labels share. Grows with the distinct strings alive; once it has doubled
/// since it was last swept, the strings no label holds any more are dropped (a label value
/// unique to each pod, such as a hash, does not pile up after its pods are gone).
struct Interner {
    strings: HashSet<Arc<str>>,
    swept_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        strings: HashSet::new(),
        swept_at: 0,
    })
});

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    // A poisoned lock only means another thread panicked mid-insert: the set is still sound.
    let mut i = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(have) = i.strings.get(s) {
        return have.clone();
    }
    if i.strings.len() >= 2 * i.swept_at.max(1024) {
        i.strings.retain(|s| Arc::strong_count(s) > 1);
        i.swept_at = i.strings.len();
    }
    let new: Arc<str> = Arc::from(s);
    i.strings.insert(new.clone());
    new
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
        assert!(Arc::ptr_eq(&a.0[0].1, &b.0[0].1));
        // Thousands of values no label keeps: the set does not keep them all.
        for n in 0..20_000 {
            drop(intern(&format!("gone-{n}")));
        }
        let held = INTERNER.lock().unwrap().strings.len();
        assert!(held < 20_000, "{held} strings kept");
        assert_eq!(a.get("app"), Some("shared-value-x"));
    }
}
