//! Where the async work runs.

use std::os::fd::AsRawFd;

use napi::bindgen_prelude::within_runtime_if_available;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{self, errno_of, Result};

/// Registers a non-blocking fd with the tokio reactor (which needs the runtime context).
///
/// napi-rs and tokio panic when there is no runtime (a call made while the environment is
/// being torn down); that panic is caught here and becomes an error, since a panic that
/// reached Node would abort the process. The fd is closed in that case.
/// `fd` must keep its fd open, as the same open file description, for as long as the
/// AsyncFd lives: an `OwnedFd`, or a `Registered` (which shares ownership of one).
pub(crate) fn register<T: AsRawFd>(fd: T, interest: Interest) -> Result<AsyncFd<T>> {
  let register = move || {
    // SAFETY: both kinds of `T` passed here own (or share the ownership of) an open fd
    // that stays the same open file description until the AsyncFd, which owns `T`, is
    // dropped and has deregistered it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }
  };
  let registered = if tokio::runtime::Handle::try_current().is_ok() {
    // On tokio's own threads the runtime is entered already. napi-rs's helper must not be
    // used there: after a teardown it may have no runtime, and panic (printing it).
    Ok(register())
  } else {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
      within_runtime_if_available(register)
    }))
  };
  match registered {
    Ok(Ok(io)) => Ok(io),
    Ok(Err(e)) => Err(error::sys(errno_of(&e.into_parts().1), "epoll_ctl")),
    Err(_) => Err(no_runtime()),
  }
}

pub(crate) fn no_runtime() -> error::Error {
  error::coded(
    "ERR_FD_QUEUE_NO_RUNTIME",
    "The async runtime is not running (is the environment shutting down?)",
  )
}
