//! The kinds brindlectl handles, their names on the command line, and typed decoding of a
//! document into one (unknown fields refused with their path, then the kind's own rules).

use brindle_api::Invalid;
use brindle_datastore::StoreResource;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    IPPool,
    BGPPeer,
    BGPFilter,
    BGPConfiguration,
    IPAMBlock,
    BlockAffinity,
    IPAMHandle,
    IPAMConfig,
    Node,
}

/// Runs `$body` with `$t` bound to the Rust type of `$kind`.
macro_rules! with_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            $crate::kind::Kind::IPPool => {
                type $t = brindle_api::IPPool;
                $body
            }
            $crate::kind::Kind::BGPPeer => {
                type $t = brindle_api::BGPPeer;
                $body
            }
            $crate::kind::Kind::BGPFilter => {
                type $t = brindle_api::BGPFilter;
                $body
            }
            $crate::kind::Kind::BGPConfiguration => {
                type $t = brindle_api::BGPConfiguration;
                $body
            }
            $crate::kind::Kind::IPAMBlock => {
                type $t = brindle_api::IPAMBlock;
                $body
            }
            $crate::kind::Kind::BlockAffinity => {
                type $t = brindle_api::BlockAffinity;
                $body
            }
            $crate::kind::Kind::IPAMHandle => {
                type $t = brindle_api::IPAMHandle;
                $body
            }
            $crate::kind::Kind::IPAMConfig => {
                type $t = brindle_api::IPAMConfig;
                $body
            }
            $crate::kind::Kind::Node => {
                type $t = brindle_api::BrindleNode;
                $body
            }
        }
    };
}
pub(crate) use with_kind;

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::IPPool,
        Kind::BGPPeer,
        Kind::BGPFilter,
        Kind::BGPConfiguration,
        Kind::IPAMBlock,
        Kind::BlockAffinity,
        Kind::IPAMHandle,
        Kind::IPAMConfig,
        Kind::Node,
    ];

    /// The `kind` of a document.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IPPool => "IPPool",
            Kind::BGPPeer => "BGPPeer",
            Kind::BGPFilter => "BGPFilter",
            Kind::BGPConfiguration => "BGPConfiguration",
            Kind::IPAMBlock => "IPAMBlock",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::IPAMHandle => "IPAMHandle",
            Kind::IPAMConfig => "IPAMConfig",
            Kind::Node => "Node",
        }
    }

    /// Every name the command line accepts, the plural first (case does not matter).
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Kind::IPPool => &["ippools", "ippool", "ipp", "pool", "pools"],
            Kind::BGPPeer => &["bgppeers", "bgppeer", "bgpp", "bp", "bps"],
            Kind::BGPFilter => &["bgpfilters", "bgpfilter", "bgpf", "bf"],
            Kind::BGPConfiguration => &[
                "bgpconfigurations",
                "bgpconfiguration",
                "bgpconfig",
                "bgpconfigs",
                "bgpc",
            ],
            Kind::IPAMBlock => &["ipamblocks", "ipamblock", "block", "blocks"],
            Kind::BlockAffinity => &[
                "blockaffinities",
                "blockaffinity",
                "affinity",
                "affinities",
                "ba",
            ],
            Kind::IPAMHandle => &["ipamhandles", "ipamhandle", "handle", "handles"],
            Kind::IPAMConfig => &[
                "ipamconfigs",
                "ipamconfig",
                "ipamconfiguration",
                "ipamconfigurations",
            ],
            Kind::Node => &["nodes", "node", "no"],
        }
    }

    /// The kind a command-line name means.
    pub fn parse(s: &str) -> Result<Kind, String> {
        let lower = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.names().contains(&lower.as_str()) || k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<_> = Kind::ALL.iter().map(|k| k.names()[0]).collect();
                format!(
                    "unknown resource kind {s:?}; known kinds: {}",
                    known.join(", ")
                )
            })
    }

    /// The kind a document's `kind` field names (exact, as in the API).
    pub fn from_doc(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    pub fn plural(self) -> &'static str {
        self.names()[0]
    }
}

/// Why a document could not become a resource: every unknown field, or the kind's rules.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown field{} {}", if .0.len() > 1 { "s" } else { "" }, .0.join(", "))]
    Unknown(Vec<String>),
    /// A value of the wrong type or range (`path` empty: the document as a whole).
    #[error("{}{msg}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Shape { path: String, msg: String },
    #[error("{0}")]
    Invalid(Invalid),
}

/// Decodes `value` as a `K`, refusing fields the type does not have (with their path), then
/// applies the kind's own rules.
pub fn decode<K: StoreResource>(value: &Value) -> Result<K, DecodeError> {
    let mut unknown = vec![];
    let mut note = |path: serde_ignored::Path| {
        let p = path.to_string();
        // apiVersion and kind are checked by the reader; status is output only.
        if p != "apiVersion" && p != "kind" && p != "status" {
            unknown.push(p);
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut note);
    // A value of the wrong type or range names its field (`spec.asNumber: invalid value:
    // integer `4294967296`, expected u32`), not only what was wrong.
    let obj: K = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => String::new(),
            p => p,
        };
        DecodeError::Shape {
            path,
            msg: e.into_inner().to_string(),
        }
    })?;
    if !unknown.is_empty() {
        return Err(DecodeError::Unknown(unknown));
    }
    obj.validate_object().map_err(DecodeError::Invalid)?;
    Ok(obj)
}

/// Checks a document against its kind without keeping the typed value.
pub fn check(kind: Kind, value: &Value) -> Result<(), DecodeError> {
    with_kind!(kind, K => decode::<K>(value).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_api::IPPool;

    #[test]
    fn names() {
        assert_eq!(Kind::parse("ippools"), Ok(Kind::IPPool));
        assert_eq!(Kind::parse("IPPool"), Ok(Kind::IPPool));
        assert_eq!(Kind::parse("bgpconfig"), Ok(Kind::BGPConfiguration));
        assert_eq!(Kind::parse("nodes"), Ok(Kind::Node));
        let e = Kind::parse("pods").unwrap_err();
        assert!(e.contains("ippools") && e.contains("nodes"), "{e}");
        for k in Kind::ALL {
            assert_eq!(Kind::from_doc(k.name()), Some(k));
            assert_eq!(Kind::parse(k.plural()), Ok(k));
        }
    }

    #[test]
    fn unknown_fields_have_their_path() {
        let v = serde_json::json!({
            "apiVersion": "brindle.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "labelz": {}},
            "spec": {"cidr": "10.0.0.0/16", "ipipmode": "Always"}
        });
        let e = decode::<IPPool>(&v).unwrap_err().to_string();
        assert!(e.contains("metadata.labelz"), "{e}");
        assert!(e.contains("spec.ipipmode"), "{e}");
        let ok = serde_json::json!({
            "apiVersion": "brindle.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}
        });
        assert!(decode::<IPPool>(&ok).is_ok());
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let v = serde_json::json!({
            "apiVersion": "brindle.dev/v1", "kind": "BGPPeer",
            "metadata": {"name": "tor"},
            "spec": {"peerIP": "198.18.0.1", "asNumber": 4294967296u64}
        });
        let e = check(Kind::BGPPeer, &v).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.asNumber: ") && e.contains("expected u32"),
            "{e}"
        );
        let v = serde_json::json!({
            "apiVersion": "brindle.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "labels": {"a": 1}}, "spec": {"cidr": "10.0.0.0/16"}
        });
        let e = check(Kind::IPPool, &v).unwrap_err().to_string();
        assert!(e.starts_with("metadata.labels.a: "), "{e}");
    }

    #[test]
    fn rules_apply() {
        let v = serde_json::json!({
            "apiVersion": "brindle.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.1/16"}
        });
        let e = decode::<IPPool>(&v).unwrap_err().to_string();
        assert!(e.contains("spec.cidr") && e.contains("host bits"), "{e}");
    }
}
