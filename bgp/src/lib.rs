//! Brindle's BGP-4 library. So far: the message codec (`codec`), pure and sans-IO.
//!
//! It will also own the session FSM, the RIB and policy, the tokio speaker driver and the
//! kernel route sync (protocol 12, `proto bird`); those are not written yet. It must not
//! touch the datastore: the node agent feeds it peers and prefixes through its API.
#![forbid(unsafe_code)]

pub mod adj_out;
pub mod codec;
pub mod fsm;
pub mod policy;
pub mod rib;
