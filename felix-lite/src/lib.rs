//! Brindle's node dataplane (not written yet; see the dataplane issues).
//!
//! It will own tunl0, NAT outgoing, routes to local pods and the iptables rules that make
//! Service virtual IPs reach their pods. It must not talk BGP or allocate addresses.
#![forbid(unsafe_code)]
