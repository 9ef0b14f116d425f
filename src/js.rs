//! Plain values as they cross between JS and Rust.

use nix::sys::socket::Shutdown;

use crate::error::{self, Result};

/// A byte count as JS receives it: a number, exact up to 2^53 (a `u32` would wrap at
/// 4 GiB and report a 4 GiB write as 0 bytes).
pub fn byte_count(n: usize) -> f64 {
  n as f64
}

/// Parses `shutdown`'s `how` argument.
pub fn shutdown_how(how: &str) -> Result<Shutdown> {
  match how {
    "read" => Ok(Shutdown::Read),
    "write" => Ok(Shutdown::Write),
    "both" => Ok(Shutdown::Both),
    other => Err(error::coded(
      "ERR_INVALID_ARG_VALUE",
      format!("how must be 'read', 'write' or 'both'; received '{other}'"),
    )),
  }
}
