//! Brindle's BGP-4 library: the message codec ([`codec`]), the sans-IO session state
//! machine ([`fsm`]), the RIB and its decision process ([`rib`]), per-peer Adj-RIB-Out
//! ([`adj_out`]), route policy ([`policy`]), the kernel route sync (protocol 12,
//! `proto bird`, [`kernel`]), the tokio speaker that drives them over TCP ([`speaker`]) and
//! `brindle-bgpd`'s configuration ([`config`]). It never touches the datastore: the node
//! agent feeds it peers and prefixes through the [`speaker::Speaker`] handle.
//!
//! `unsafe` is denied everywhere but in `speaker/sockopt.rs`: `setsockopt` for TCP MD5 and GTSM.
//!
//! Partial: decoding uses nom for OPEN and NLRI, attributes are bounds-checked slice code
//! (fuzzed). Missing: RFC 9072 extended optional parameters, confederation rules (segments
//! are parsed and kept), the IGP-cost step of the decision process, RFC 8538, BFD.
#![deny(unsafe_code)]

pub mod adj_out;
pub mod codec;
pub mod config;
pub mod fsm;
pub mod kernel;
pub mod nexthop;
pub mod policy;
pub mod rails;
pub mod rib;
pub mod speaker;
