//! raftline's wire protocol, peer transport and client protocol.

// wire: framing, cluster identity, message codecs and the client library.
pub mod client;
pub mod client_proto;
pub mod cluster_id;
pub mod frame;
pub mod peer_codec;

// evloop: the per-thread event loop (io_uring or epoll) and the connection layer.
pub mod net;
pub mod reactor;
pub mod warn_limit;
