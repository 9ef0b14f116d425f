//! Describes what a received fd is, so the TypeScript helpers can turn it into the right
//! Node object (a `net.Socket`, a listening `net.Server`, an fs stream) or refuse clearly;
//! and closes one that is not wanted, outside Node's own fd bookkeeping.

use std::os::fd::{BorrowedFd, RawFd};

use napi_derive::napi;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{
  getpeername, getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike,
  SockaddrStorage,
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
  /// Socket fds only: whether it has a peer (`getpeername` answers).
  pub connected: Option<bool>,
  /// An `O_PATH` fd (Linux, FreeBSD): it names a file without opening it, so it can be
  /// neither read nor written nor queried as a socket.
  pub path_only: bool,
  /// `FD_CLOEXEC` is set: a program this process `exec`s does not inherit the fd.
  pub close_on_exec: bool,
  /// `O_NONBLOCK` is set on the open file (shared by every duplicate of the fd).
  pub non_blocking: bool,
}

/// Reports the access mode of `fd` and, for sockets, their family, type and whether
/// they listen or have a peer. `ENOTSOCK` from the socket queries just means "not a socket".
#[napi]
#[cfg_attr(test, allow(dead_code))] // reached through napi's registration, which tests leave out
pub fn fd_info(fd: i32) -> Result<NativeFdInfo> {
  query(fd).map_err(|(errno, syscall)| error::sys(errno, syscall))
}

/// A failed query: the errno and the syscall that reported it.
pub(crate) type QueryError = (Errno, &'static str);

pub(crate) fn query(fd: i32) -> std::result::Result<NativeFdInfo, QueryError> {
  if fd < 0 {
    return Err((Errno::EBADF, "fcntl"));
  }
  // SAFETY: the borrow lasts for the queries below only; a closed fd yields EBADF, and
  // `fd` is not -1, the one value BorrowedFd cannot hold.
  let borrowed = unsafe { BorrowedFd::borrow_raw(fd as RawFd) };
  let flags =
    OFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFL).map_err(|e| (e, "fcntl"))?);
  let fd_flags =
    FdFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFD).map_err(|e| (e, "fcntl"))?);
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
    connected: None,
    path_only: false,
    close_on_exec: fd_flags.contains(FdFlag::FD_CLOEXEC),
    non_blocking: flags.contains(OFlag::O_NONBLOCK),
  };
  // Socket queries on an O_PATH fd answer EBADF, as if it were not open.
  #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
  if flags.contains(OFlag::O_PATH) {
    info.path_only = true;
    return Ok(info);
  }
  let socket_type = match getsockopt(&borrowed, sockopt::SockType) {
    Ok(t) => t,
    Err(Errno::ENOTSOCK) => return Ok(info),
    Err(e) => return Err((e, "getsockopt")),
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
  let address: SockaddrStorage = getsockname(fd).map_err(|e| (e, "getsockname"))?;
  info.family = Some(
    match address.family() {
      Some(AddressFamily::Unix) => "unix",
      Some(AddressFamily::Inet) => "ipv4",
      Some(AddressFamily::Inet6) => "ipv6",
      _ => "other",
    }
    .to_string(),
  );
  info.listening = Some(getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| (e, "getsockopt"))?);
  // `ENOTCONN` for one that never connected or listens, and for a TCP socket whose
  // connection is over (a Unix socket keeps its peer).
  info.connected = Some(getpeername::<SockaddrStorage>(fd).is_ok());
  Ok(info)
}

/// Closes `fd` (an fd this process owns, such as one `dequeue` handed over). `EBADF` when
/// it is not open. Unlike `fs.closeSync`, Node's worker threads do not warn about an fd
/// they did not open themselves.
#[napi]
#[cfg_attr(test, allow(dead_code))]
pub fn close_fd(fd: i32) -> Result<()> {
  if fd < 0 {
    return Err(error::sys(Errno::EBADF, "close"));
  }
  match nix::unistd::close(fd) {
    // Linux and the BSDs release the fd even when close is interrupted.
    Ok(()) | Err(Errno::EINTR) => Ok(()),
    Err(e) => Err(error::sys(e, "close")),
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use nix::sys::socket::{bind, listen, socket, socketpair, Backlog, SockFlag, SockaddrIn};
  use std::os::fd::AsRawFd;

  // These call `query`, not the napi export: a test binary has no Node to resolve napi's
  // symbols against.

  /// A connected Unix stream pair, blocking and not close-on-exec.
  fn unix_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    socketpair(
      AddressFamily::Unix,
      SockType::Stream,
      None,
      SockFlag::empty(),
    )
    .expect("socketpair")
  }
  #[test]
  fn a_socket_pair_end_is_a_connected_unix_stream() {
    let (a, _b) = unix_pair();
    let info = query(a.as_raw_fd()).expect("fd_info");
    assert_eq!(info.access, "rw");
    assert_eq!(info.family.as_deref(), Some("unix"));
    assert_eq!(info.socket_type.as_deref(), Some("stream"));
    assert_eq!(info.listening, Some(false));
    assert!(!info.close_on_exec);
  }

  #[test]
  fn close_on_exec_is_read_from_fd_cloexec() {
    let (a, _b) = unix_pair();
    fcntl(&a, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("F_SETFD");
    assert!(query(a.as_raw_fd()).expect("fd_info").close_on_exec);
    fcntl(&a, FcntlArg::F_SETFD(FdFlag::empty())).expect("F_SETFD");
    assert!(!query(a.as_raw_fd()).expect("fd_info").close_on_exec);
  }

  #[test]
  fn non_blocking_is_read_from_o_nonblock() {
    let (a, _b) = unix_pair();
    assert!(!query(a.as_raw_fd()).expect("fd_info").non_blocking);
    fcntl(&a, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("F_SETFL");
    assert!(query(a.as_raw_fd()).expect("fd_info").non_blocking);
  }

  #[test]
  fn a_listening_tcp_socket_says_so_and_a_file_is_no_socket() {
    let sock = socket(
      AddressFamily::Inet,
      SockType::Stream,
      SockFlag::empty(),
      None,
    )
    .expect("socket");
    bind(sock.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
    listen(&sock, Backlog::new(1).expect("backlog")).expect("listen");
    let info = query(sock.as_raw_fd()).expect("fd_info");
    assert_eq!(info.family.as_deref(), Some("ipv4"));
    assert_eq!(info.listening, Some(true));

    let file = std::fs::File::open("/dev/null").expect("open");
    let info = query(file.as_raw_fd()).expect("fd_info");
    assert_eq!(info.access, "r");
    assert!(info.family.is_none() && info.listening.is_none());
  }

  #[test]
  #[cfg(any(target_os = "linux", target_os = "android"))]
  fn an_o_path_fd_is_reported_not_refused() {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let fd = open("/", OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).expect("open O_PATH");
    let info = query(fd.as_raw_fd()).expect("fd_info");
    assert!(info.path_only);
    assert!(info.socket_type.is_none());
  }

  #[test]
  fn a_negative_fd_is_ebadf() {
    assert_eq!(query(-1).map(drop), Err((Errno::EBADF, "fcntl")));
  }
}
