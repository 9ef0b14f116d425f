//! What systemd's socket activation needs natively: the inherited fds made close-on-exec.
//! The rest of `listenFds()` and `sdNotify()` is in the TypeScript layer, on top of the
//! datagram socket.

use napi_derive::napi;

use crate::error::{self, Result};

/// Makes the `count` fds from `first` on close-on-exec, as `sd_listen_fds` does: they are
/// this process's, and a child must not inherit them. `EBADF` when one is not open.
#[napi]
#[cfg_attr(test, allow(dead_code))] // reached through napi's registration, which tests leave out
pub fn claim_inherited_fds(first: i32, count: u32) -> Result<()> {
  let end = i32::try_from(count)
    .ok()
    .and_then(|count| first.checked_add(count))
    .ok_or_else(|| error::coded("ERR_OUT_OF_RANGE", "more inherited fds than fd numbers"))?;
  for fd in first..end {
    crate::socket::set_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
  }
  Ok(())
}
