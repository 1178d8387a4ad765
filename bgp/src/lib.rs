//! Brindle's BGP-4 speaker library (not written yet; see the BGP core and speaker issues).
//!
//! It will own the packet codec, the sans-IO session FSM, the RIB and policy, the tokio
//! speaker driver and the kernel route sync (protocol 12, `proto bird`). It must not touch
//! the datastore: the node agent feeds it peers and prefixes through its API.
#![forbid(unsafe_code)]
