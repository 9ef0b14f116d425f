//! Unix stream sockets made close-on-exec from birth: pairs, connect, bind and accept.
//! Shared by the blocking and the async classes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
  self, setsockopt, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat;
use nix::sys::time::TimeVal;

use crate::error::{self, Result};

/// Node's default listen backlog.
const BACKLOG: i32 = 511;

#[cfg(not(any(target_os = "macos", target_os = "ios")))]
fn socket_flags(nonblocking: bool) -> SockFlag {
  let flags = SockFlag::SOCK_CLOEXEC;
  if nonblocking {
    flags | SockFlag::SOCK_NONBLOCK
  } else {
    flags
  }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn socket_flags(_nonblocking: bool) -> SockFlag {
  SockFlag::empty()
}

/// Applies what `socket_flags` could not set atomically on this OS.
fn finish(fd: OwnedFd, nonblocking: bool) -> nix::Result<OwnedFd> {
  if cfg!(any(target_os = "macos", target_os = "ios")) {
    crate::scm_rights::set_cloexec(fd.as_raw_fd())?;
    if nonblocking {
      set_nonblocking(fd.as_fd())?;
    }
  }
  Ok(fd)
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
  use nix::fcntl::{fcntl, FcntlArg, OFlag};
  let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
  fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

fn new_socket(nonblocking: bool) -> nix::Result<OwnedFd> {
  let fd = socket::socket(
    AddressFamily::Unix,
    SockType::Stream,
    socket_flags(nonblocking),
    None,
  )?;
  finish(fd, nonblocking)
}

/// Two connected stream sockets.
pub fn pair(nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
  let (a, b) = socket::socketpair(
    AddressFamily::Unix,
    SockType::Stream,
    None,
    socket_flags(nonblocking),
  )
  .map_err(|e| error::sys(e, "socketpair"))?;
  let a = finish(a, nonblocking).map_err(|e| error::sys(e, "fcntl"))?;
  let b = finish(b, nonblocking).map_err(|e| error::sys(e, "fcntl"))?;
  Ok((a, b))
}

fn address(path: &str, syscall: &str) -> Result<UnixAddr> {
  UnixAddr::new(path).map_err(|e| error::sys_path(e, syscall, path))
}

/// Connects to the listener at `path`. The socket is made non-blocking only after the
/// connect, so `connect` itself never answers `EINPROGRESS`.
///
/// A blocking connect waits while the listener's backlog is full. With a `timeout` it
/// waits at most that long and fails with `ETIMEDOUT`: the socket's send timeout bounds
/// that wait on Linux (the BSDs refuse at once with `ECONNREFUSED` instead of waiting).
pub fn connect(path: &str, nonblocking: bool, timeout: Option<TimeVal>) -> Result<OwnedFd> {
  let addr = address(path, "connect")?;
  let fd = new_socket(false).map_err(|e| error::sys(e, "socket"))?;
  if let Some(timeout) = &timeout {
    setsockopt(&fd, sockopt::SendTimeout, timeout).map_err(|e| error::sys(e, "setsockopt"))?;
  }
  loop {
    match socket::connect(fd.as_raw_fd(), &addr) {
      Ok(()) => break,
      Err(Errno::EINTR) => continue,
      Err(Errno::EAGAIN | Errno::EINPROGRESS) if timeout.is_some() => {
        return Err(error::sys_path(Errno::ETIMEDOUT, "connect", path))
      }
      Err(e) => return Err(error::sys_path(e, "connect", path)),
    }
  }
  if timeout.is_some() {
    // The timeout was for the connect only: writes on the stream block as long as needed.
    setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(0, 0))
      .map_err(|e| error::sys(e, "setsockopt"))?;
  }
  if nonblocking {
    set_nonblocking(fd.as_fd()).map_err(|e| error::sys(e, "fcntl"))?;
  }
  Ok(fd)
}

/// A listening socket at `path`, with the identity of the socket file it created so that
/// closing can remove that file and no other.
pub struct Bound {
  pub fd: OwnedFd,
  pub file: SocketFile,
}

/// The socket file a listener created.
pub struct SocketFile {
  path: String,
  dev: u64,
  ino: u64,
}

impl SocketFile {
  /// Unlinks the socket file if it is still the one this listener created (like
  /// `net.Server`, which removes its path on close).
  pub fn remove(&self) {
    if let Ok(st) = stat::lstat(self.path.as_str()) {
      // dev_t and ino_t differ in width and sign between the Unixes.
      #[allow(clippy::unnecessary_cast)]
      if st.st_dev as u64 == self.dev && st.st_ino as u64 == self.ino {
        let _ = nix::unistd::unlink(self.path.as_str());
      }
    }
  }

  pub fn path(&self) -> &str {
    &self.path
  }
}

pub fn bind(path: &str, nonblocking: bool) -> Result<Bound> {
  let addr = address(path, "bind")?;
  let fd = new_socket(nonblocking).map_err(|e| error::sys(e, "socket"))?;
  socket::bind(fd.as_raw_fd(), &addr).map_err(|e| error::sys_path(e, "bind", path))?;
  let identity = stat::lstat(path).map_err(|e| error::sys_path(e, "stat", path))?;
  let file = SocketFile {
    path: path.to_string(),
    dev: identity.st_dev as u64,
    ino: identity.st_ino as u64,
  };
  let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
  if let Err(e) = socket::listen(&fd, backlog) {
    file.remove();
    return Err(error::sys_path(e, "listen", path));
  }
  Ok(Bound { fd, file })
}

/// Accepts one connection, close-on-exec (and non-blocking when asked) from birth.
pub fn accept(listener: BorrowedFd<'_>, nonblocking: bool) -> nix::Result<OwnedFd> {
  #[cfg(not(any(target_os = "macos", target_os = "ios")))]
  let fd = socket::accept4(listener, socket_flags(nonblocking))?;
  #[cfg(any(target_os = "macos", target_os = "ios"))]
  let fd = socket::accept(listener)?;
  finish(fd, nonblocking)
}
