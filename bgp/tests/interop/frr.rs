//! FRR as the peer.
