//! Kubernetes NetworkPolicy for Brindle (issue 29): [`model`] holds policies, pods and
//! namespaces as plain data, [`convert`] reads them from networking.k8s.io/v1 objects
//! (failing closed on what it cannot read), and [`eval`] says what they mean for one
//! connection, naming the policy and rule that decide. The agent's rendering and
//! `brindlectl policy explain` are built on these; neither the dataplane nor the datastore
//! is known here.

pub mod addrs;
pub mod compile;
pub mod convert;
pub mod eval;
pub mod labels;
pub mod model;

pub use convert::{closed, namespace, pod, policy, Invalid};
pub use eval::{Conn, Decision, End, Verdict, World};
pub use model::{Labels, NamedPort, Namespace, Peer, Pod, Policy, Port, Protocol, Rule, Selector};
