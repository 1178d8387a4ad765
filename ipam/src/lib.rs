//! Brindle's IP address management (not written yet; see the IPAM issue).
//!
//! It will own pools, block affinity, assignment and release, borrowing, tunnel addresses
//! and the leak report, all over the datastore's Store. It must not touch the network.
#![forbid(unsafe_code)]
