#![deny(clippy::all)]
//! fd-queue: pass open file descriptors between processes over Unix domain sockets.
//!
//! `scm_rights` does the syscalls, `queue` owns the fds in flight, `socket` makes the
//! sockets, `blocking` and `nonblocking` export the
//! synchronous and the tokio-driven classes, `turnstile` keeps async calls in order, `error` shapes errors for Node.

mod blocking;
mod credentials;
mod error;
mod fd_info;
mod nonblocking;
mod push;
mod queue;
mod scm_rights;
mod socket;
mod turnstile;
