#![deny(clippy::all)]
//! fd-queue: pass open file descriptors between processes over Unix domain sockets.
//!
//! `scm_rights` does the syscalls, `queue` owns the fds in flight, `socket` makes the
//! sockets, `blocking` exports the synchronous classes, `error` shapes errors for Node.

mod blocking;
mod error;
mod queue;
mod scm_rights;
mod socket;
