//! Unix sockets made close-on-exec from birth (pairs, connect, bind and accept) of the three
//! kinds (stream, seqpacket, datagram), the addresses they use (paths, and Linux's abstract
//! names), and the checks that let a class adopt a socket the process already holds.
//! Shared by the blocking, the async and the message classes.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::socket::{self, setsockopt, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat;
use nix::sys::time::{TimeVal, TimeValLike};

use crate::error::{self, Result};

/// Node's default listen backlog.
const BACKLOG: i32 = 511;

/// The kinds of Unix socket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
  Stream,
  Seqpacket,
  Datagram,
}

impl Kind {
  fn sock_type(self) -> SockType {
    match self {
      Self::Stream => SockType::Stream,
      Self::Seqpacket => SockType::SeqPacket,
      Self::Datagram => SockType::Datagram,
    }
  }

  /// As `fd_info` names it.
  fn name(self) -> &'static str {
    match self {
      Self::Stream => "stream",
      Self::Seqpacket => "seqpacket",
      Self::Datagram => "dgram",
    }
  }

  /// In words, for messages.
  fn words(self) -> &'static str {
    match self {
      Self::Stream => "stream",
      Self::Seqpacket => "seqpacket",
      Self::Datagram => "datagram",
    }
  }
}

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
    set_cloexec(fd.as_raw_fd())?;
    if nonblocking {
      set_nonblocking(fd.as_fd())?;
    }
  }
  Ok(fd)
}

/// Has a byte a peer sends with `MSG_OOB` arrive in line with the others, with the fds it
/// carries. Linux queues it apart otherwise, where a plain `recvmsg` never reads it: its
/// fds were closed unseen, no `MSG_CTRUNC` said so, and the byte was lost. For stream
/// sockets (the others carry no out-of-band data: `accept`, which does not know the kind,
/// sets it on seqpacket connections too, where it changes nothing); best effort, as a
/// socket refusing it has no out-of-band data to lose.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn in_line_out_of_band(fd: BorrowedFd<'_>) {
  let _ = setsockopt(&fd, sockopt::OobInline, &true);
}

/// Out-of-band data on Unix sockets is Linux's alone.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn in_line_out_of_band(_fd: BorrowedFd<'_>) {}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
  use nix::fcntl::{fcntl, FcntlArg, OFlag};
  let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
  fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

fn new_socket(kind: Kind, nonblocking: bool) -> nix::Result<OwnedFd> {
  let fd = socket::socket(
    AddressFamily::Unix,
    kind.sock_type(),
    socket_flags(nonblocking),
    None,
  )?;
  finish(fd, nonblocking)
}

/// An unbound socket of `kind` (a datagram socket that only sends, say).
pub fn unbound(kind: Kind, nonblocking: bool) -> Result<OwnedFd> {
  new_socket(kind, nonblocking).map_err(|e| error::sys(e, "socket"))
}

/// Two connected stream sockets.
pub fn pair(nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
  pair_of(Kind::Stream, nonblocking)
}

/// Two connected sockets of `kind`.
pub fn pair_of(kind: Kind, nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
  let (a, b) = socket::socketpair(
    AddressFamily::Unix,
    kind.sock_type(),
    None,
    socket_flags(nonblocking),
  )
  .map_err(|e| error::sys(e, "socketpair"))?;
  let a = finish(a, nonblocking).map_err(|e| error::sys(e, "fcntl"))?;
  let b = finish(b, nonblocking).map_err(|e| error::sys(e, "fcntl"))?;
  if kind == Kind::Stream {
    in_line_out_of_band(a.as_fd());
    in_line_out_of_band(b.as_fd());
  }
  Ok((a, b))
}

/// The address `path` names: a file system path, or (Linux) a name in the abstract
/// namespace when it starts with a NUL byte, as in Node's `net`. The name is the bytes
/// after that NUL, exactly: no padding, so that it matches other programs' use of it.
pub fn address(path: &str, syscall: &str) -> Result<UnixAddr> {
  address_of_bytes(path.as_bytes(), syscall)
}

/// [`address`] of a path or `\0name` given as bytes, which need not be UTF-8 (the address
/// a datagram came from, given back to reply to it).
pub fn address_of_bytes(path: &[u8], syscall: &str) -> Result<UnixAddr> {
  let shown = || String::from_utf8_lossy(path);
  match path.strip_prefix(b"\0") {
    Some(name) => abstract_address(name, &shown(), syscall),
    None => {
      UnixAddr::new(OsStr::from_bytes(path)).map_err(|e| error::sys_path(e, syscall, &shown()))
    }
  }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8], path: &str, syscall: &str) -> Result<UnixAddr> {
  UnixAddr::new_abstract(name).map_err(|e| error::sys_path(e, syscall, path))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8], _path: &str, _syscall: &str) -> Result<UnixAddr> {
  Err(error::coded(
    "ERR_INVALID_ARG_VALUE",
    "Abstract socket addresses ('\\0name') exist only on Linux; use a path",
  ))
}

/// The address Node's `net` connects to and listens on for `\0name` with libuv before 1.48
/// (Node 20 and older): the name padded with NULs to the whole of `sun_path`. A stream
/// connect that finds no listener under the exact name tries this one, so that a client
/// here reaches such a `net` server (and a server there is found by the name it was given).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn padded_abstract(path: &str) -> Option<UnixAddr> {
  /// `sun_path` on Linux; the first byte is the NUL that makes a name abstract.
  const SUN_PATH: usize = 108;
  let name = path.as_bytes().strip_prefix(b"\0")?;
  if name.len() >= SUN_PATH - 1 {
    return None;
  }
  let mut padded = name.to_vec();
  padded.resize(SUN_PATH - 1, 0);
  UnixAddr::new_abstract(&padded).ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn padded_abstract(_path: &str) -> Option<UnixAddr> {
  None
}

/// Whether `path` names an address in the abstract namespace (no file on disk).
pub fn is_abstract(path: &str) -> bool {
  path.starts_with('\0')
}

/// Connects to the listener at `path`.
///
/// A blocking connect (`nonblocking` false) waits while the listener's backlog is full.
/// With a `timeout` it waits at most that long in all and fails with `ETIMEDOUT`: the new
/// socket's send timeout bounds that wait on Linux (the BSDs refuse at once with
/// `ECONNREFUSED` instead of waiting); a signal that interrupts it leaves the time still
/// left, not a new timeout. A non-blocking connect never waits: a full backlog is `EAGAIN`,
/// as in Node's `net`, and a Unix socket connects at once otherwise.
pub fn connect(path: &str, nonblocking: bool, timeout: Option<Duration>) -> Result<OwnedFd> {
  connect_kind(Kind::Stream, path, nonblocking, timeout)
}

/// [`connect`] with a socket of `kind`.
pub fn connect_kind(
  kind: Kind,
  path: &str,
  nonblocking: bool,
  timeout: Option<Duration>,
) -> Result<OwnedFd> {
  let mut addr = address(path, "connect")?;
  // Node's `net` has no seqpacket sockets: only a stream connect looks for its spelling.
  let mut as_old_net = match kind {
    Kind::Stream => padded_abstract(path),
    _ => None,
  };
  let fd = new_socket(kind, nonblocking).map_err(|e| error::sys(e, "socket"))?;
  if kind == Kind::Stream {
    in_line_out_of_band(fd.as_fd());
  }
  let deadline = timeout.map(|t| Instant::now() + t);
  let timed_out = || error::sys_path(Errno::ETIMEDOUT, "connect", path);
  let mut left = timeout;
  loop {
    if let Some(left) = left {
      // At least 1 µs: a send timeout of zero means none at all.
      let micros = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
      setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))
        .map_err(|e| error::sys(e, "setsockopt"))?;
    }
    match socket::connect(fd.as_raw_fd(), &addr) {
      Ok(()) => break,
      Err(Errno::EINTR) => {
        // Tried again with what is left of the timeout (signals that come more often than
        // the timeout would otherwise keep it from ever running out).
        if let Some(deadline) = deadline {
          let now_left = deadline.saturating_duration_since(Instant::now());
          if now_left.is_zero() {
            return Err(timed_out());
          }
          left = Some(now_left);
        }
      }
      Err(Errno::EAGAIN | Errno::EINPROGRESS) if timeout.is_some() => return Err(timed_out()),
      // No listener under the exact name: one under Node 20's spelling of it, if any (a
      // refused connect leaves a Unix socket as it was, ready for another).
      Err(Errno::ECONNREFUSED) if as_old_net.is_some() => {
        if let Some(padded) = as_old_net.take() {
          addr = padded;
        }
      }
      Err(e) => return Err(error::sys_path(e, "connect", path)),
    }
  }
  if timeout.is_some() {
    // The timeout was for the connect only: writes on the stream block as long as needed.
    setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(0, 0))
      .map_err(|e| error::sys(e, "setsockopt"))?;
  }
  Ok(fd)
}

/// A listening socket at `path`, with the identity of the socket file it created so that
/// closing can remove that file and no other (none for an abstract name).
pub struct Bound {
  pub fd: OwnedFd,
  pub file: Option<SocketFile>,
}

/// The socket file a listener created.
pub struct SocketFile {
  /// Absolute: a process that changes directory still removes the right file.
  path: PathBuf,
  dev: u64,
  ino: u64,
}

impl SocketFile {
  /// Unlinks the socket file if it is still the one this listener created (like
  /// `net.Server`, which removes its path on close).
  pub fn remove(&self) {
    if let Ok(st) = stat::lstat(self.path.as_path()) {
      // dev_t and ino_t differ in width and sign between the Unixes.
      #[allow(clippy::unnecessary_cast)]
      if st.st_dev as u64 == self.dev && st.st_ino as u64 == self.ino {
        let _ = nix::unistd::unlink(self.path.as_path());
      }
    }
  }
}

pub fn bind(path: &str, nonblocking: bool) -> Result<Bound> {
  bind_kind(Kind::Stream, path, nonblocking)
}

/// A socket of `kind` bound at `path`: listening, unless it is a datagram socket.
pub fn bind_kind(kind: Kind, path: &str, nonblocking: bool) -> Result<Bound> {
  let addr = address(path, "bind")?;
  let fd = new_socket(kind, nonblocking).map_err(|e| error::sys(e, "socket"))?;
  socket::bind(fd.as_raw_fd(), &addr).map_err(|e| error::sys_path(e, "bind", path))?;
  let file = if is_abstract(path) {
    None
  } else {
    let identity = stat::lstat(path).map_err(|e| error::sys_path(e, "stat", path))?;
    // A relative path is taken from the directory it was bound in (as it is still
    // relative if that directory is gone).
    let absolute = std::env::current_dir()
      .map(|dir| dir.join(path))
      .unwrap_or_else(|_| PathBuf::from(path));
    Some(SocketFile {
      path: absolute,
      dev: identity.st_dev as u64,
      ino: identity.st_ino as u64,
    })
  };
  if kind == Kind::Datagram {
    return Ok(Bound { fd, file });
  }
  if let Err(e) = listen(fd.as_fd()) {
    if let Some(file) = &file {
      file.remove();
    }
    return Err(error::sys_path(e, "listen", path));
  }
  Ok(Bound { fd, file })
}

/// `listen(fd, 511)`, Node's backlog, on every platform. nix's `Backlog` refuses values
/// above the C library's `SOMAXCONN` constant, which is 128 in musl, macOS and FreeBSD (4096
/// in glibc), so through it a musl build silently listened with 128 (found running the suite
/// on linux-x64-musl). The kernel caps the value at its own limit (`net.core.somaxconn`,
/// `kern.ipc.somaxconn`) as it does for Node.
fn listen(fd: BorrowedFd<'_>) -> nix::Result<()> {
  // SAFETY: listen(2) takes an fd that the borrow keeps open for the call and an integer;
  // it touches no memory of ours.
  Errno::result(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) }).map(drop)
}

/// Accepts one connection, close-on-exec (and non-blocking when asked) from birth, with
/// out-of-band bytes in line (inert on a seqpacket connection).
pub fn accept(listener: BorrowedFd<'_>, nonblocking: bool) -> nix::Result<OwnedFd> {
  #[cfg(not(any(target_os = "macos", target_os = "ios")))]
  let fd = socket::accept4(listener, socket_flags(nonblocking))?;
  #[cfg(any(target_os = "macos", target_os = "ios"))]
  let fd = socket::accept(listener)?;
  let fd = finish(fd, nonblocking)?;
  in_line_out_of_band(fd.as_fd());
  Ok(fd)
}

/// The address a socket is bound to, as `bind` takes it: a path, `\0name` for an
/// abstract name, or `''` for none (a socket pair, an unnamed socket).
pub fn local_path(sock: BorrowedFd<'_>) -> String {
  socket::getsockname::<UnixAddr>(sock.as_raw_fd())
    .ok()
    .and_then(|addr| address_name(&addr))
    .unwrap_or_default()
}

/// An address as `bind` takes it: a path or `\0name`; `None` for an unnamed socket.
pub fn address_name(addr: &UnixAddr) -> Option<String> {
  address_bytes(addr).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// [`address_name`] byte for byte (a peer may name its socket with bytes that are not
/// UTF-8).
pub fn address_bytes(addr: &UnixAddr) -> Option<Vec<u8>> {
  if let Some(path) = addr.path() {
    return Some(path.as_os_str().as_bytes().to_vec());
  }
  #[cfg(any(target_os = "linux", target_os = "android"))]
  if let Some(name) = addr.as_abstract() {
    return Some([b"\0", name].concat());
  }
  None
}

/// What an adopting class needs the fd to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
  /// A connected Unix socket of that kind (`UnixStream.fromFd`, `SeqpacketSocket.fromFd`).
  Connected(Kind),
  /// A listening Unix socket of that kind (`UnixListener.fromFd`, `SeqpacketListener.fromFd`).
  Listening(Kind),
  /// A Unix socket of that kind, bound or not, connected or not (`DatagramSocket.fromFd`).
  Any(Kind),
}

/// Takes ownership of `fd` if it is a Unix stream socket in the state `wanted` (no
/// duplicate: the fd itself is closed with the object), and makes it close-on-exec. Any
/// other fd is refused with `ERR_INVALID_FD_TYPE` and left untouched: still open, still
/// the caller's. `EBADF` when it is not open.
///
/// Nothing else is changed but, for a connected stream socket, out-of-band bytes coming
/// in line (see `in_line_out_of_band`; the socket's other holders see them so too): in
/// particular not `O_NONBLOCK`, which belongs to the open file description that other
/// holders share. The classes that need it set it themselves.
pub fn adopt(fd: i32, wanted: Adopt) -> Result<OwnedFd> {
  take(fd, wanted).map_err(|refusal| match refusal {
    Refusal::Failed(errno, syscall) => error::sys(errno, syscall),
    Refusal::WrongKind(message) => error::coded("ERR_INVALID_FD_TYPE", message),
  })
}

/// Why `take` left an fd alone.
#[derive(Debug)]
enum Refusal {
  Failed(Errno, &'static str),
  WrongKind(String),
}

fn take(fd: i32, wanted: Adopt) -> std::result::Result<OwnedFd, Refusal> {
  let info =
    crate::fd_info::query(fd).map_err(|(errno, syscall)| Refusal::Failed(errno, syscall))?;
  let (Adopt::Connected(kind) | Adopt::Listening(kind) | Adopt::Any(kind)) = wanted;
  let unix = info.family.as_deref() == Some("unix");
  let of_kind = unix && info.socket_type.as_deref() == Some(kind.name());
  let listening = info.listening == Some(true);
  let connected = unix && !listening && info.connected == Some(true);
  let fits = of_kind
    && match wanted {
      Adopt::Connected(_) => connected,
      Adopt::Listening(_) => listening,
      Adopt::Any(_) => true,
    };
  if !fits {
    let what = describe(fd, &info);
    let expected = match wanted {
      Adopt::Connected(_) => format!("a connected Unix {} socket", kind.words()),
      Adopt::Listening(_) => format!("a listening Unix {} socket", kind.words()),
      Adopt::Any(_) => format!("a Unix {} socket", kind.words()),
    };
    return Err(Refusal::WrongKind(format!(
      "fd {fd} is {what}, not {expected}; it was left open and is still yours to close"
    )));
  }
  set_cloexec(fd).map_err(|e| Refusal::Failed(e, "fcntl"))?;
  // SAFETY: `fd` is open and the caller hands its ownership over: from here on only the
  // returned OwnedFd closes it.
  let owned = unsafe { OwnedFd::from_raw_fd(fd) };
  if wanted == Adopt::Connected(Kind::Stream) {
    in_line_out_of_band(owned.as_fd());
  }
  Ok(owned)
}

/// What `fd` is, in the words of the `ERR_INVALID_FD_TYPE` refusals ("a connected TCP
/// socket", "a pipe open for reading only"): the TypeScript layer's refusals use it too.
#[napi_derive::napi]
#[cfg_attr(test, allow(dead_code))]
pub fn describe_fd(fd: i32) -> Result<String> {
  Ok(describe(fd, &crate::fd_info::fd_info(fd)?))
}

/// What a refused fd is, in words.
fn describe(fd: i32, info: &crate::fd_info::NativeFdInfo) -> String {
  if info.path_only {
    return "an O_PATH fd".into();
  }
  let Some(family) = info.family.as_deref() else {
    let kind = file_kind(fd);
    return match (kind, info.access.as_str()) {
      ("a directory" | "an fd of another kind", _) => kind.into(),
      (_, "r") => format!("{kind} open for reading only"),
      (_, "w") => format!("{kind} open for writing only"),
      _ => kind.into(),
    };
  };
  let noun = match (family, info.socket_type.as_deref()) {
    ("unix", Some("stream")) => "Unix stream socket",
    ("unix", Some("seqpacket")) => "Unix seqpacket socket",
    ("unix", Some("dgram")) => return "a Unix datagram socket".into(),
    ("ipv4" | "ipv6", Some("stream")) => "TCP socket",
    ("ipv4" | "ipv6", Some("dgram")) => return "a UDP socket".into(),
    _ => return "a socket of another kind".into(),
  };
  if info.listening == Some(true) {
    format!("a listening {noun}")
  } else if info.connected == Some(true) {
    format!("a connected {noun}")
  } else {
    format!("an unconnected {noun}")
  }
}

/// What a non-socket `fd` is: a file, a pipe, a device.
fn file_kind(fd: i32) -> &'static str {
  use stat::SFlag;
  // SAFETY: the borrow lasts for this one fstat; the caller found `fd` open (and not -1).
  let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
  let Ok(stat) = stat::fstat(borrowed) else {
    return "an fd of another kind";
  };
  match SFlag::from_bits_truncate(stat.st_mode as _) & SFlag::S_IFMT {
    SFlag::S_IFREG => "a regular file",
    SFlag::S_IFDIR => "a directory",
    SFlag::S_IFIFO => "a pipe",
    SFlag::S_IFCHR => "a character device",
    SFlag::S_IFBLK => "a block device",
    _ => "an fd of another kind",
  }
}

/// Marks `fd` close-on-exec (`F_SETFD`; `F_SETFL` cannot do this and would clobber the
/// status flags).
pub fn set_cloexec(fd: RawFd) -> nix::Result<()> {
  // SAFETY: the borrow lasts for this one fcntl call on an fd the caller owns.
  let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
  fcntl(borrowed, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map(drop)
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::os::fd::IntoRawFd;

  fn flags(fd: i32) -> i32 {
    // SAFETY: F_GETFD only reads the flags of an fd this test owns.
    unsafe { libc::fcntl(fd, libc::F_GETFD) }
  }

  #[test]
  fn adopting_an_inherited_socket_makes_it_close_on_exec_and_leaves_o_nonblock() {
    // As a child inherits it: no FD_CLOEXEC.
    let (a, _b) = socket::socketpair(
      AddressFamily::Unix,
      SockType::Stream,
      None,
      SockFlag::empty(),
    )
    .expect("socketpair");
    let raw = a.into_raw_fd();
    assert_eq!(flags(raw) & libc::FD_CLOEXEC, 0);
    let adopted = take(raw, Adopt::Connected(Kind::Stream)).expect("adopt");
    assert_eq!(adopted.as_raw_fd(), raw, "the fd itself, no duplicate");
    assert_eq!(flags(raw) & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    // SAFETY: F_GETFL only reads the status flags of an open fd.
    let status = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    assert_eq!(status & libc::O_NONBLOCK, 0, "O_NONBLOCK untouched");
  }

  #[test]
  fn a_socket_of_another_kind_is_refused_and_left_as_it_was() {
    let (a, _b) = socket::socketpair(
      AddressFamily::Unix,
      SockType::Datagram,
      None,
      SockFlag::empty(),
    )
    .expect("socketpair");
    let refused =
      take(a.as_raw_fd(), Adopt::Connected(Kind::Stream)).expect_err("a datagram socket");
    assert!(matches!(refused, Refusal::WrongKind(ref m) if m.contains("datagram")));
    assert_eq!(flags(a.as_raw_fd()) & libc::FD_CLOEXEC, 0, "untouched");
    let refused = take(a.as_raw_fd(), Adopt::Listening(Kind::Stream)).expect_err("not listening");
    assert!(matches!(refused, Refusal::WrongKind(_)));
  }
}
