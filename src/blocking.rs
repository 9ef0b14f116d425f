//! The blocking classes: every call runs its syscall on the calling thread. Meant for
//! scripts, CLIs and worker threads; the TypeScript layer wraps them as `UnixStream` and
//! `UnixListener`.
//!
//! They never change a socket they adopt (other processes may hold it too): no
//! `O_NONBLOCK`, no `SO_RCVTIMEO`. Timeouts are `poll` deadlines of this object, and a
//! socket that another holder made non-blocking is waited for with `poll` as well. Reads
//! and writes have a per-call `MSG_DONTWAIT`; `accept` has none, so the listeners this
//! module creates itself are non-blocking from birth and `accept` waits with `poll`.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use napi_derive::napi;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket;

use crate::credentials::{self, PeerCredentials};
use crate::error::{self, Result};
use crate::js::{byte_count, shutdown_how};
use crate::queue::{InboundQueue, OutboundQueue};
use crate::scm_rights;
use crate::socket::{self as unix, Adopt, Kind, SocketFile};

/// A connected Unix stream socket with an outbound and an inbound fd queue.
#[napi(js_name = "NativeUnixStream")]
pub struct UnixStream {
  sock: Option<OwnedFd>,
  outbound: OutboundQueue,
  inbound: InboundQueue,
  read_timeout: Option<Duration>,
  write_timeout: Option<Duration>,
}

impl UnixStream {
  fn wrap(sock: OwnedFd) -> Self {
    Self {
      sock: Some(sock),
      outbound: OutboundQueue::default(),
      inbound: InboundQueue::default(),
      read_timeout: None,
      write_timeout: None,
    }
  }

  fn sock(&self) -> Result<&OwnedFd> {
    self.sock.as_ref().ok_or_else(error::closed)
  }
}

/// A JS `Uint8Array` borrowed for the length of one synchronous call (the alias makes
/// napi-derive convert it as a typed array rather than as a mutable class reference).
type BytesMut<'a> = &'a mut [u8];

/// A timeout in milliseconds: more than 0, at most `i32::MAX`.
fn duration(ms: f64) -> Result<Duration> {
  if ms.is_finite() && ms > 0.0 && ms <= i32::MAX as f64 {
    Ok(Duration::from_secs_f64(ms / 1000.0).max(Duration::from_micros(1)))
  } else {
    Err(error::out_of_range("timeout", ms))
  }
}

/// Runs `op` until it stops answering `EAGAIN`. With a `timeout`, `op` is tried without
/// waiting and `poll` waits in between, until the deadline (then `ETIMEDOUT`); without
/// one, `op` may block, and `poll` only waits for a socket that is non-blocking (its open
/// file description is shared with other holders, which may have set `O_NONBLOCK`).
fn blocking<T>(
  sock: &OwnedFd,
  events: PollFlags,
  timeout: Option<Duration>,
  mut op: impl FnMut(bool) -> nix::Result<T>,
) -> nix::Result<T> {
  let deadline = timeout.map(|timeout| Instant::now() + timeout);
  loop {
    match op(deadline.is_some()) {
      Err(Errno::EINTR) => continue,
      Err(Errno::EAGAIN) => {
        if !wait_for(sock, events, deadline)? {
          return Err(Errno::ETIMEDOUT);
        }
      }
      other => return other,
    }
  }
}

/// Waits until `sock` reports `events` or `deadline` passed (`None`: no deadline);
/// `false` when it passed.
fn wait_for(sock: &OwnedFd, events: PollFlags, deadline: Option<Instant>) -> nix::Result<bool> {
  loop {
    let timeout = match deadline {
      None => PollTimeout::NONE,
      Some(deadline) => {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
          return Ok(false);
        }
        // Rounded up, so that a wait of less than a millisecond does not spin.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
      }
    };
    let mut fds = [PollFd::new(sock.as_fd(), events)];
    match poll(&mut fds, timeout) {
      Ok(0) | Err(Errno::EINTR) => continue,
      Ok(_) => return Ok(true),
      Err(e) => return Err(e),
    }
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
    let timeout = timeout.map(duration).transpose()?;
    unix::connect(&path, false, timeout).map(Self::wrap)
  }

  /// Takes ownership of `fd`, a connected Unix stream socket (`ERR_INVALID_FD_TYPE`
  /// otherwise, and the fd is left alone), and makes it close-on-exec.
  #[napi]
  pub fn from_fd(fd: i32) -> Result<UnixStream> {
    unix::adopt(fd, Adopt::Connected(Kind::Stream)).map(Self::wrap)
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
    let received = blocking(sock, PollFlags::POLLIN, self.read_timeout, |nonblocking| {
      scm_rights::recv_with_fds(sock.as_fd(), buf, nonblocking)
    })
    .map_err(|e| error::sys(e, "recvmsg"))?;
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
    let sent = blocking(
      sock,
      PollFlags::POLLOUT,
      self.write_timeout,
      |nonblocking| scm_rights::send_with_fds(sock.as_fd(), data, &fds, nonblocking),
    );
    match sent {
      Ok(sent) => {
        // The kernel holds its own references now; close our duplicates.
        self.outbound.clear();
        Ok(byte_count(sent))
      }
      // A timeout, or a shortage that passes: the fds stay queued for the retry.
      Err(e) if e == Errno::ETIMEDOUT || scm_rights::is_transient(e) => {
        Err(error::sys(e, "sendmsg"))
      }
      Err(e) => {
        self.outbound.clear();
        Err(error::sys(e, "sendmsg"))
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

  /// How long a `read` may wait (ms), `null` for ever. Kept by this object: the socket
  /// itself (which other processes may hold) is not changed.
  #[napi]
  pub fn set_read_timeout(&mut self, ms: Option<f64>) -> Result<()> {
    self.sock()?;
    self.read_timeout = ms.map(duration).transpose()?;
    Ok(())
  }

  /// How long a `write` may wait for room (ms), `null` for ever.
  #[napi]
  pub fn set_write_timeout(&mut self, ms: Option<f64>) -> Result<()> {
    self.sock()?;
    self.write_timeout = ms.map(duration).transpose()?;
    Ok(())
  }

  /// Closes this descriptor (never a `shutdown`: another holder of the socket keeps it),
  /// every queued outbound fd and every fd not yet dequeued. A second call does nothing.
  #[napi]
  pub fn close(&mut self) {
    self.sock = None;
    self.outbound.clear();
    self.inbound.clear();
  }
}

/// A listening Unix socket bound to a path (or an abstract name, or adopted).
#[napi(js_name = "NativeUnixListener")]
pub struct UnixListener {
  sock: Option<OwnedFd>,
  /// The socket file this listener created, removed on close unless told otherwise.
  file: Option<SocketFile>,
  path: String,
  unlink_on_close: bool,
}

#[napi]
impl UnixListener {
  /// Creates the socket file at `path` (or the abstract name `\0name`) and listens on it.
  /// The socket is non-blocking (`accept` waits with `poll`), so that a timed `accept`
  /// never blocks past its deadline, even when another process holds the listener too
  /// and takes a connection first.
  #[napi]
  pub fn bind(path: String) -> Result<UnixListener> {
    let bound = unix::bind(&path, true)?;
    Ok(Self {
      sock: Some(bound.fd),
      file: bound.file,
      path,
      unlink_on_close: true,
    })
  }

  /// Takes ownership of `fd`, a listening Unix stream socket (`ERR_INVALID_FD_TYPE`
  /// otherwise, and the fd is left alone). An adopted listener never removes a file.
  #[napi]
  pub fn from_fd(fd: i32) -> Result<UnixListener> {
    let sock = unix::adopt(fd, Adopt::Listening(Kind::Stream))?;
    Ok(Self {
      path: unix::local_path(sock.as_fd()),
      sock: Some(sock),
      file: None,
      unlink_on_close: false,
    })
  }

  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    self.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd)
  }

  /// The address it listens on: a path, `\0name` for an abstract one, or `''` for none.
  #[napi(getter)]
  pub fn path(&self) -> String {
    self.path.clone()
  }

  /// Whether `close()` removes the socket file this listener created (default `true`;
  /// `false` keeps it for a successor the listener was handed to).
  #[napi]
  pub fn set_unlink_on_close(&mut self, unlink: bool) {
    self.unlink_on_close = unlink;
  }

  /// Waits for the next connection; with `timeout` (ms), at most that long (`ETIMEDOUT`).
  ///
  /// A timed wait is a `poll` for a pending connection, then `accept`; a non-blocking
  /// listener (every bound one) then polls again if another holder took the connection
  /// first. An adopted listener that is blocking is not changed (others may hold it): if
  /// another holder takes the connection between the `poll` and the `accept`, that
  /// `accept` waits for the next connection.
  #[napi]
  pub fn accept(&self, timeout: Option<f64>) -> Result<UnixStream> {
    let sock = self.sock.as_ref().ok_or_else(error::closed)?;
    let timeout = timeout.map(duration).transpose()?;
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let ready =
      |deadline| wait_for(sock, PollFlags::POLLIN, deadline).map_err(|e| error::sys(e, "poll"));
    loop {
      if deadline.is_some() && !ready(deadline)? {
        return Err(error::sys(Errno::ETIMEDOUT, "accept"));
      }
      match unix::accept(sock.as_fd(), false) {
        Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
        // A non-blocking listener (shared with, or adopted from, an event loop) has none
        // ready: wait for one.
        Err(Errno::EAGAIN) => {
          if deadline.is_none() {
            ready(None)?;
          }
        }
        Err(e) => return Err(error::sys(e, "accept")),
        Ok(fd) => return Ok(UnixStream::wrap(fd)),
      }
    }
  }

  /// Stops listening (this descriptor) and removes the socket file it created, unless
  /// `setUnlinkOnClose(false)`. A second call does nothing.
  #[napi]
  pub fn close(&mut self) {
    if self.sock.take().is_some() && self.unlink_on_close {
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
