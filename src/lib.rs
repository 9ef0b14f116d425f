#![deny(clippy::all)]
//! fd-queue: pass open file descriptors between processes over Unix domain sockets.
//!
//! From the syscalls up: `scm_rights` (sendmsg/recvmsg with fds), `socket` (making and
//! adopting Unix sockets), `queue` (the fds a stream owns), `turnstile` (call order). The
//! blocking classes are `blocking`; the async ones live in `nonblocking`, on the runtime
//! that `runtime` chooses, and settle their Promises through `settle`. `staged` holds the
//! fds an `FdSocket` has yet to send, `fast` exposes the per-message calls on handles
//! (`handle`), `spare` keeps read buffers for reuse, `lent` holds what a waiting write has
//! yet to send, `cancel` cancels pending operations, `fd_info` says what an fd is,
//! `credentials` who a peer is, and `error`/`js` shape what crosses into JS.

mod blocking;
mod cancel;
mod credentials;
mod error;
// napi-derive registers free functions with Node only outside `cargo test`, so a test
// build calls none of them.
#[cfg_attr(test, allow(dead_code))]
mod fast;
mod fd_info;
mod handle;
mod held;
mod js;
mod lent;
mod nonblocking;
mod queue;
mod runtime;
mod scm_rights;
mod settle;
mod socket;
mod spare;
mod staged;
mod sync;
mod systemd;
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
