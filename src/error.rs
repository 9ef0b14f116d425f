//! Errors as Node shapes them. The native side sets `code` (an errno name such as
//! `ENOENT`, or an `ERR_*` name) and a message; for system errors the message is Node's
//! `"<syscall> <CODE>[ <path>]"`, from which the TypeScript layer adds `errno`, `syscall`
//! and `path`.

use std::io;

use napi::Status;
use nix::errno::Errno;

/// An error whose JS `code` is the given string.
pub type Error = napi::Error<String>;
pub type Result<T> = std::result::Result<T, Error>;

pub const ERR_SOCKET_CLOSED: &str = "ERR_SOCKET_CLOSED";
pub const ERR_FD_QUEUE_FULL: &str = "ERR_FD_QUEUE_FULL";
pub const ERR_FD_TRUNCATED: &str = "ERR_FD_TRUNCATED";
pub const ERR_FD_EMPTY_WRITE: &str = "ERR_FD_EMPTY_WRITE";
pub const ERR_OUT_OF_RANGE: &str = "ERR_OUT_OF_RANGE";

/// A failed syscall, e.g. `connect ENOENT /tmp/app.sock`.
pub fn sys(errno: Errno, syscall: &str) -> Error {
  Error::new(format!("{errno:?}"), format!("{syscall} {errno:?}"))
}

/// The number of the errno named `code` (`ETOOMANYREFS`), for the system errors whose name
/// Node's `os.constants.errno` lacks; `null` for a name this platform has no errno for.
#[napi_derive::napi]
pub fn errno_number(code: String) -> Option<i32> {
  // Errno numbers are small on every Unix; Debug prints each one's name.
  (1..4096)
    .map(Errno::from_raw)
    .find(|errno| *errno != Errno::UnknownErrno && format!("{errno:?}") == code)
    .map(|errno| errno as i32)
}

/// A failed syscall on a socket path.
pub fn sys_path(errno: Errno, syscall: &str, path: &str) -> Error {
  Error::new(format!("{errno:?}"), format!("{syscall} {errno:?} {path}"))
}

/// A package error with an `ERR_*` code.
pub fn coded(code: &str, message: impl Into<String>) -> Error {
  Error::new(code.to_string(), message.into())
}

pub fn closed() -> Error {
  coded(ERR_SOCKET_CLOSED, "Socket is closed")
}

pub fn outbound_full() -> Error {
  coded(
    ERR_FD_QUEUE_FULL,
    "The outbound fd queue is full: one write carries at most 253 fds",
  )
}

pub fn inbound_full(limit: usize) -> Error {
  coded(
    ERR_FD_QUEUE_FULL,
    format!("The inbound fd queue holds maxQueuedFds ({limit}) fds: dequeue some before reading"),
  )
}

pub fn truncated() -> Error {
  coded(
    ERR_FD_TRUNCATED,
    "Fds sent with this message were lost in transit (MSG_CTRUNC): the receiver had no room for them",
  )
}

pub fn empty_write() -> Error {
  coded(
    ERR_FD_EMPTY_WRITE,
    "Cannot write zero bytes while fds are queued: a stream socket carries fds only with data",
  )
}

pub fn out_of_range(what: &str, value: impl std::fmt::Display) -> Error {
  coded(ERR_OUT_OF_RANGE, format!("{what} is out of range: {value}"))
}

/// napi-rs rejects async calls only with its own `Status` codes, so the package code
/// travels in the message as `[CODE] message`; the TypeScript layer moves it to `code`.
pub(crate) fn tagged(e: Error) -> String {
  format!("[{}] {}", e.status, e.reason)
}

pub(crate) fn rejection(e: Error) -> napi::Error {
  napi::Error::new(Status::GenericFailure, tagged(e))
}

pub(crate) fn errno_of(e: &io::Error) -> Errno {
  e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// A napi-rs error (an argument of the wrong type) with its status as the code, as
/// napi-rs's glue throws it.
pub(crate) fn from_napi(e: napi::Error) -> Error {
  Error::new(e.status.as_ref().to_string(), e.reason.clone())
}

/// A napi-rs failure (creating a threadsafe function, ref-counting it).
pub(crate) fn internal(e: napi::Error) -> Error {
  coded("ERR_INTERNAL", e.reason.clone())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn errno_numbers_by_name_also_where_node_has_none() {
    assert_eq!(
      errno_number("ETOOMANYREFS".into()),
      Some(Errno::ETOOMANYREFS as i32)
    );
    assert_eq!(errno_number("ENOENT".into()), Some(Errno::ENOENT as i32));
    assert_eq!(errno_number("ENOTANERRNO".into()), None);
    assert_eq!(errno_number("UnknownErrno".into()), None);
  }
}
