//! The blocking classes: every call runs its syscall on the calling thread. Meant for
//! scripts, CLIs and worker threads; the TypeScript layer wraps them as `UnixStream` and
//! `UnixListener`.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use napi_derive::napi;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::credentials::{self, PeerCredentials};
use crate::error::{self, Result};
use crate::js::{byte_count, shutdown_how};
use crate::queue::{InboundQueue, OutboundQueue};
use crate::scm_rights;
use crate::socket::{self as unix, SocketFile};

/// A connected Unix stream socket with an outbound and an inbound fd queue.
#[napi(js_name = "NativeUnixStream")]
pub struct UnixStream {
  sock: Option<OwnedFd>,
  outbound: OutboundQueue,
  inbound: InboundQueue,
}

impl UnixStream {
  fn wrap(sock: OwnedFd) -> Self {
    Self {
      sock: Some(sock),
      outbound: OutboundQueue::default(),
      inbound: InboundQueue::default(),
    }
  }

  fn sock(&self) -> Result<&OwnedFd> {
    self.sock.as_ref().ok_or_else(error::closed)
  }
}

/// A JS `Uint8Array` borrowed for the length of one synchronous call (the alias makes
/// napi-derive convert it as a typed array rather than as a mutable class reference).
type BytesMut<'a> = &'a mut [u8];

/// A blocking socket answers `EAGAIN` only when its timeout expired.
fn timed_out(errno: Errno, syscall: &str) -> error::Error {
  if errno == Errno::EAGAIN || errno == Errno::EWOULDBLOCK {
    error::sys(Errno::ETIMEDOUT, syscall)
  } else {
    error::sys(errno, syscall)
  }
}

/// `None` clears the timeout; otherwise milliseconds, at least one microsecond (a zero
/// timeval would mean "no timeout").
fn timeval(ms: Option<f64>) -> Result<TimeVal> {
  match ms {
    None => Ok(TimeVal::new(0, 0)),
    Some(ms) if ms.is_finite() && ms > 0.0 && ms <= i32::MAX as f64 => {
      let micros = ((ms * 1000.0).round() as i64).max(1);
      Ok(TimeVal::new(micros / 1_000_000, (micros % 1_000_000) as _))
    }
    Some(ms) => Err(error::out_of_range("timeout", ms)),
  }
}

#[napi]
impl UnixStream {
  /// Two connected streams (`socketpair`).
  #[napi]
  pub fn pair() -> Result<Vec<UnixStream>> {
    let (a, b) = unix::pair(false)?;
    Ok(vec![Self::wrap(a), Self::wrap(b)])
  }

  /// Connects to the listener at `path`; with `timeout` (ms), waits at most that long for
  /// room in a full backlog (`ETIMEDOUT`).
  #[napi]
  pub fn connect(path: String, timeout: Option<f64>) -> Result<UnixStream> {
    let timeout = timeout.map(|ms| timeval(Some(ms))).transpose()?;
    unix::connect(&path, false, timeout).map(Self::wrap)
  }

  /// The socket's fd, or -1 once closed.
  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    self.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd)
  }

  #[napi(getter)]
  pub fn max_queued_fds(&self) -> u32 {
    self.inbound.limit() as u32
  }

  #[napi(setter)]
  pub fn set_max_queued_fds(&mut self, limit: u32) {
    self.inbound.set_limit(limit as usize);
  }

  /// Duplicates `fd` (close-on-exec) into the outbound queue; it rides on the next write.
  #[napi]
  pub fn enqueue(&mut self, fd: i32) -> Result<()> {
    self.sock()?;
    if self.outbound.is_full() {
      return Err(error::outbound_full());
    }
    let duplicate = scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
    self
      .outbound
      .enqueue(duplicate)
      .map_err(|_| error::outbound_full())
  }

  /// The oldest received fd, now the caller's to close; `null` when none is waiting.
  #[napi]
  pub fn dequeue(&mut self) -> Result<Option<i32>> {
    self.sock()?;
    match self.inbound.dequeue() {
      Ok(fd) => Ok(fd.map(IntoRawFd::into_raw_fd)),
      Err(_) => Err(error::truncated()),
    }
  }

  /// One `recvmsg` into `buf`; the fds that came with these bytes join the inbound queue
  /// before it returns. 0 means end of stream.
  #[napi]
  pub fn read(&mut self, #[napi(ts_arg_type = "Uint8Array")] buf: BytesMut<'_>) -> Result<f64> {
    let sock = self.sock.as_ref().ok_or_else(error::closed)?;
    if self.inbound.is_full() {
      return Err(error::inbound_full(self.inbound.limit()));
    }
    if buf.is_empty() {
      return Ok(0.0);
    }
    let received = loop {
      match scm_rights::recv_with_fds(sock.as_fd(), buf, false) {
        Err(Errno::EINTR) => continue,
        Err(e) => return Err(timed_out(e, "recvmsg")),
        Ok(received) => break received,
      }
    };
    self.inbound.receive(received.fds, received.truncated);
    Ok(byte_count(received.bytes))
  }

  /// One `sendmsg` of `data` carrying every queued fd. Returns the bytes written (a
  /// partial write still delivered the fds, so the rest goes without them).
  #[napi]
  pub fn write(&mut self, data: &[u8]) -> Result<f64> {
    let sock = self.sock.as_ref().ok_or_else(error::closed)?;
    if data.is_empty() {
      return if self.outbound.is_empty() {
        Ok(0.0)
      } else {
        Err(error::empty_write())
      };
    }
    let fds = self.outbound.raw_fds();
    loop {
      match scm_rights::send_with_fds(sock.as_fd(), data, &fds, false) {
        Err(Errno::EINTR) => continue,
        Ok(sent) => {
          // The kernel holds its own references now; close our duplicates.
          self.outbound.clear();
          return Ok(byte_count(sent));
        }
        Err(e) if keeps_fds_queued(e) => return Err(timed_out(e, "sendmsg")),
        Err(e) => {
          self.outbound.clear();
          return Err(error::sys(e, "sendmsg"));
        }
      }
    }
  }

  /// The peer's pid, uid and gid, as the kernel recorded them at connect time.
  #[napi]
  pub fn peer_credentials(&self) -> Result<PeerCredentials> {
    credentials::peer_credentials(self.sock()?.as_fd())
  }

  /// Nothing is buffered in user space, so this only checks the stream is open.
  #[napi]
  pub fn flush(&self) -> Result<()> {
    self.sock().map(drop)
  }

  #[napi]
  pub fn shutdown(&self, how: String) -> Result<()> {
    let how = shutdown_how(&how)?;
    socket::shutdown(self.sock()?.as_raw_fd(), how).map_err(|e| error::sys(e, "shutdown"))
  }

  #[napi]
  pub fn set_read_timeout(&self, ms: Option<f64>) -> Result<()> {
    let tv = timeval(ms)?;
    setsockopt(self.sock()?, sockopt::ReceiveTimeout, &tv).map_err(|e| error::sys(e, "setsockopt"))
  }

  #[napi]
  pub fn set_write_timeout(&self, ms: Option<f64>) -> Result<()> {
    let tv = timeval(ms)?;
    setsockopt(self.sock()?, sockopt::SendTimeout, &tv).map_err(|e| error::sys(e, "setsockopt"))
  }

  /// Closes the socket, every queued outbound fd and every fd not yet dequeued. A second
  /// call does nothing.
  #[napi]
  pub fn close(&mut self) {
    self.sock = None;
    self.outbound.clear();
    self.inbound.clear();
  }
}

/// Waits until `sock` is readable (a connection is pending) or `deadline` passed; `false`
/// when it passed.
fn wait_readable(sock: &OwnedFd, deadline: Instant) -> Result<bool> {
  loop {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
      return Ok(false);
    }
    // Rounded up, so that a wait of less than a millisecond does not spin.
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
      Ok(0) | Err(Errno::EINTR) => continue,
      Ok(_) => return Ok(true),
      Err(e) => return Err(error::sys(e, "poll")),
    }
  }
}

/// Errors after which queued fds stay queued for the next write: the socket is still
/// usable (a timeout, or the kernel's per-user limit of fds in flight).
pub fn keeps_fds_queued(errno: Errno) -> bool {
  matches!(errno, Errno::EAGAIN | Errno::EINTR) || scm_rights::is_transient(errno)
}

/// A listening Unix socket bound to a path.
#[napi(js_name = "NativeUnixListener")]
pub struct UnixListener {
  sock: Option<OwnedFd>,
  file: Option<SocketFile>,
}

#[napi]
impl UnixListener {
  /// Creates the socket file at `path` and listens on it.
  #[napi]
  pub fn bind(path: String) -> Result<UnixListener> {
    let bound = unix::bind(&path, false)?;
    Ok(Self {
      sock: Some(bound.fd),
      file: Some(bound.file),
    })
  }

  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    self.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd)
  }

  /// The path this listener was bound to.
  #[napi(getter)]
  pub fn path(&self) -> Option<String> {
    self.file.as_ref().map(|f| f.path().to_string())
  }

  /// Waits for the next connection; with `timeout` (ms), at most that long (`ETIMEDOUT`).
  ///
  /// The wait is a `poll` for a pending connection, then `accept`. The listener stays in
  /// blocking mode (it may be shared), so if another holder of the same listener takes
  /// the connection between the two, this `accept` waits for the next one.
  #[napi]
  pub fn accept(&self, timeout: Option<f64>) -> Result<UnixStream> {
    let sock = self.sock.as_ref().ok_or_else(error::closed)?;
    let deadline = match timeout {
      None => None,
      Some(ms) if ms.is_finite() && ms > 0.0 && ms <= i32::MAX as f64 => {
        Some(Instant::now() + Duration::from_secs_f64(ms / 1000.0))
      }
      Some(ms) => return Err(error::out_of_range("timeout", ms)),
    };
    loop {
      if let Some(deadline) = deadline {
        if !wait_readable(sock, deadline)? {
          return Err(error::sys(Errno::ETIMEDOUT, "accept"));
        }
      }
      match unix::accept(sock.as_fd(), false) {
        Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
        Err(e) => return Err(error::sys(e, "accept")),
        Ok(fd) => return Ok(UnixStream::wrap(fd)),
      }
    }
  }

  /// Stops listening and removes the socket file. A second call does nothing.
  #[napi]
  pub fn close(&mut self) {
    if self.sock.take().is_some() {
      if let Some(file) = &self.file {
        file.remove();
      }
    }
  }
}

impl Drop for UnixListener {
  fn drop(&mut self) {
    self.close();
  }
}
