//! The CNI specification's wire types: results, errors and version answers (CNI 1.0.0 and
//! 1.1.0; 0.4.0 is accepted for older runtimes and answered in its own result format).

use serde::Serialize;
use serde_json::{json, Value};

/// The versions this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Error codes of the specification ("Error" section); 100 and up are this plugin's own.
#[allow(dead_code)] // the full list, as the spec gives it
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// No address left in the pools that may serve this pod.
    pub const NO_ADDRESSES: u32 = 100;
    /// No pool serves this pod (or the one asked for does not exist).
    pub const NO_POOL: u32 = 101;
    /// CHECK found the container's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 102;
    /// The datastore refused or failed in a way retrying will not fix.
    pub const DATASTORE: u32 = 103;
    /// The kernel refused a network change.
    pub const NETLINK: u32 = 104;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

pub type CniResult<T> = Result<T, CniError>;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IpConfig {
    /// CIDR notation: `10.244.3.7/32`.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Route {
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// CNI 1.1 `priority`: the route's metric (set on a secondary interface's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl AddResult {
    /// The result in the requested version's format (0.4.0 adds `version` to each IP).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("cniVersion".into(), version.into());
            map.insert("dns".into(), json!({}));
            if version == "0.4.0" {
                if let Some(ips) = map.get_mut("ips").and_then(Value::as_array_mut) {
                    for ip in ips {
                        let fam = if ip["address"].as_str().is_some_and(|a| a.contains(':')) {
                            "6"
                        } else {
                            "4"
                        };
                        ip["version"] = fam.into();
                    }
                }
            }
        }
        v
    }
}

pub fn version_answer(requested: Option<&str>) -> Value {
    json!({"cniVersion": requested.unwrap_or("1.1.0"), "supportedVersions": SUPPORTED})
}

pub fn check_version(v: &str) -> CniResult<()> {
    if SUPPORTED.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {v:?} is not supported"),
            format!("supported versions: {}", SUPPORTED.join(", ")),
        ))
    }
}
