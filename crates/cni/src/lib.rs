//! Brindle's CNI plugin as a library: the plugin's operations (`plugin`), the datastore side
//! of ADD and DEL (`podipam`), and the local socket over which `brindle-node` serves that
//! side (`agent`). The binary `brindle-cni` is a thin `main` over `plugin`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod config;
pub mod plugin;
pub mod podipam;
pub mod spec;
pub mod wire;
