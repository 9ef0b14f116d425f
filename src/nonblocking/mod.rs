//! The async classes, on tokio: `core` (a stream's and a listener's sockets, readiness and
//! queues), `stream` (`AsyncUnixStream`), `reader` (push delivery for `FdSocket`),
//! `listener` (`AsyncUnixListener`, and the seqpacket listener), `acceptor` (push accepting
//! for `FdServer`) and `message` (`SeqpacketSocket`, `DatagramSocket`).
//! Imports run one way: core <- reader <- stream <- message <- acceptor <- listener.

pub(crate) mod acceptor;
pub(crate) mod core;
pub(crate) mod listener;
pub(crate) mod message;
pub(crate) mod reader;
pub(crate) mod stream;
