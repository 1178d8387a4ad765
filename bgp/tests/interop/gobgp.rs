//! GoBGP as the peer.
