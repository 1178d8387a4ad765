use std::fmt;

/// Which object (or collection) an operation was about, as Kubernetes would name it:
/// `<plural.group>[/<namespace>][/<name>]`, e.g. `ippools.brindle.dev/default-pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// `resource` is `plural.group`, or `plural` for the core group.
    pub fn new(resource: &str, namespace: Option<&str>, name: Option<&str>) -> Self {
        let mut s = resource.to_owned();
        for part in [namespace, name].into_iter().flatten() {
            s.push('/');
            s.push_str(part);
        }
        Key(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found ({backend})")]
    NotFound { backend: &'static str, key: Key },

    #[error("{key} already exists ({backend})")]
    AlreadyExists { backend: &'static str, key: Key },

    /// The resourceVersion given is not the stored one: someone else wrote first.
    #[error("{key}: conflict, resourceVersion {expected} is no longer current; re-read and retry ({backend})")]
    Conflict {
        backend: &'static str,
        key: Key,
        expected: String,
    },

    /// The watch's starting revision has been compacted away: list again and watch from the
    /// list's revision.
    #[error("watch of {key} from revision {revision} expired: the {backend} datastore has compacted it away; relist")]
    Expired {
        backend: &'static str,
        key: Key,
        revision: String,
    },

    #[error("{backend} datastore unreachable at {endpoint} while accessing {key}: {source}")]
    Unavailable {
        backend: &'static str,
        endpoint: String,
        key: Key,
        #[source]
        source: Source,
    },

    #[error(transparent)]
    Invalid(#[from] brindle_api::Invalid),

    #[error("{key}: stored value does not decode ({backend}): {source}")]
    Decode {
        backend: &'static str,
        key: Key,
        #[source]
        source: serde_json::Error,
    },

    /// Anything else the datastore refused, with its own words.
    #[error("{key}: {backend} datastore error: {message}")]
    Backend {
        backend: &'static str,
        key: Key,
        message: String,
    },
}

impl StoreError {
    /// The object the error is about (None for a decode-free failure of a collection).
    pub fn key(&self) -> Option<&Key> {
        match self {
            StoreError::NotFound { key, .. }
            | StoreError::AlreadyExists { key, .. }
            | StoreError::Conflict { key, .. }
            | StoreError::Expired { key, .. }
            | StoreError::Unavailable { key, .. }
            | StoreError::Decode { key, .. }
            | StoreError::Backend { key, .. } => Some(key),
            StoreError::Invalid(_) => None,
        }
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StoreError::AlreadyExists { .. })
    }
    pub fn is_expired(&self) -> bool {
        matches!(self, StoreError::Expired { .. })
    }
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
