#![deny(clippy::all)]
//! fd-queue: pass open file descriptors between processes over Unix domain sockets.
//!
//! `scm_rights` does the syscalls, `queue` owns the fds in flight, `socket` makes the
//! sockets, `blocking` and `nonblocking` export the synchronous and the tokio-driven
//! classes, `push` feeds the stream wrappers, `staged` holds the fds an `FdSocket` has yet
//! to send, `fast` exposes the per-message calls on handles, `turnstile` keeps async calls
//! in order, and `error` shapes errors for Node.

mod blocking;
mod cancel;
mod credentials;
mod error;
// napi-derive registers free functions with Node only outside `cargo test`, so a test
// build calls none of them.
#[cfg_attr(test, allow(dead_code))]
mod fast;
mod fd_info;
mod handoff;
mod js;
mod nonblocking;
mod push;
mod queue;
mod scm_rights;
mod socket;
mod staged;
mod turnstile;

/// One tokio worker: it parks in the reactor itself, so a socket that becomes ready wakes
/// the thread that reads it, with no handoff between workers. The work per event is a
/// syscall and a call into JS, which one thread keeps up with; more workers only add
/// wake-ups (measured: the round trip and the CPU per message both grow with two).
#[napi_derive::module_init]
fn init_runtime() {
  let runtime = tokio::runtime::Builder::new_multi_thread()
    .worker_threads(1)
    .thread_name("fd-queue-io")
    .enable_io()
    .enable_time()
    .build();
  // Without a runtime of our own, napi-rs starts its default one.
  if let Ok(runtime) = runtime {
    napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
  }
}
