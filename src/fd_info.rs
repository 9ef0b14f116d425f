//! Describes what a received fd is, so the TypeScript helpers can turn it into the right
//! Node object (a `net.Socket`, a listening `net.Server`, an fs stream) or refuse clearly.

use std::os::fd::{BorrowedFd, RawFd};

use napi_derive::napi;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
  getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

use crate::error::{self, Result};

/// What the kernel says about an open fd.
#[napi(object)]
pub struct NativeFdInfo {
  /// `O_RDONLY`, `O_WRONLY` or `O_RDWR` as `"r"`, `"w"` or `"rw"`.
  pub access: String,
  /// Socket fds only: `"unix"`, `"ipv4"`, `"ipv6"` or `"other"`.
  pub family: Option<String>,
  /// Socket fds only: `"stream"`, `"dgram"`, `"seqpacket"` or `"other"`.
  pub socket_type: Option<String>,
  /// Socket fds only: whether it is a listening socket (`SO_ACCEPTCONN`).
  pub listening: Option<bool>,
}

/// Reports the access mode of `fd` and, for sockets, their family, type and whether
/// they listen. `ENOTSOCK` from the socket queries just means "not a socket".
#[napi]
pub fn fd_info(fd: i32) -> Result<NativeFdInfo> {
  if fd < 0 {
    return Err(error::sys(Errno::EBADF, "fcntl"));
  }
  // SAFETY: the borrow lasts for the queries below only; a closed fd yields EBADF, and
  // `fd` is not -1, the one value BorrowedFd cannot hold.
  let borrowed = unsafe { BorrowedFd::borrow_raw(fd as RawFd) };
  let flags = OFlag::from_bits_truncate(
    fcntl(borrowed, FcntlArg::F_GETFL).map_err(|e| error::sys(e, "fcntl"))?,
  );
  let access = match flags & OFlag::O_ACCMODE {
    OFlag::O_WRONLY => "w",
    OFlag::O_RDWR => "rw",
    _ => "r",
  };
  let mut info = NativeFdInfo {
    access: access.to_string(),
    family: None,
    socket_type: None,
    listening: None,
  };
  let socket_type = match getsockopt(&borrowed, sockopt::SockType) {
    Ok(t) => t,
    Err(Errno::ENOTSOCK) => return Ok(info),
    Err(e) => return Err(error::sys(e, "getsockopt")),
  };
  info.socket_type = Some(
    match socket_type {
      SockType::Stream => "stream",
      SockType::Datagram => "dgram",
      SockType::SeqPacket => "seqpacket",
      _ => "other",
    }
    .to_string(),
  );
  let address: SockaddrStorage = getsockname(fd).map_err(|e| error::sys(e, "getsockname"))?;
  info.family = Some(
    match address.family() {
      Some(AddressFamily::Unix) => "unix",
      Some(AddressFamily::Inet) => "ipv4",
      Some(AddressFamily::Inet6) => "ipv6",
      _ => "other",
    }
    .to_string(),
  );
  info.listening =
    Some(getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| error::sys(e, "getsockopt"))?);
  Ok(info)
}
