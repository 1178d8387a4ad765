//! End-to-end: a Brindle pod network in network namespaces on this machine's kernel, with
//! real everything — brindle-node agents, brindle-cni called as a runtime calls it, etcd (or
//! the in-test Kubernetes API server: no real kube-apiserver can be installed here), BIRD as
//! top-of-rack routers, TCP between pods. Encapsulation is none: the host kernel has no ipip
//! (the IPIP path is tested in a VM).

mod common;

mod bad_input;
mod ctl;
mod dual_stack;
mod ipam_agent;
mod ipip;
mod lifecycle;
mod mesh;
mod monitoring;
mod netpol;
mod node_safety;
mod podman;
mod racks;
mod rbac;
mod reflectors;
mod routing_safety;
mod services;
