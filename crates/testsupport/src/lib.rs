//! Test infrastructure shared by Brindle's suites (and later by `brindle-lab`): a real etcd on
//! free loopback ports with a throw-away data directory, and a small Kubernetes API server.
//! Everything started here is stopped when its guard is dropped, also when a test fails.
//!
//! Safety: only loopback addresses are used; processes are tracked by PID, never by name.

pub mod apiserver;
pub mod bench;
pub mod cni;
pub mod daemons;
pub mod etcd;
pub mod netns;
mod ports;
pub mod prometheus;
pub mod sweep;
pub mod vm;

pub use apiserver::{ApiCall, ApiServer};
pub use cni::CniCall;
pub use etcd::{EtcdServer, EtcdTls};
pub use netns::{ChildGuard, Netns, PortForward};
