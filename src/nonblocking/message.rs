//! `SeqpacketSocket` and `DatagramSocket` (one native class): Unix sockets that keep message
//! boundaries, so the fds of a message belong to it alone. Each `send` is one `sendmsg`
//! with its fds; each `receive` is one whole message with its fds, owned by the caller.
//! Calls are served in call order, on the same async core as the streams: at once on the
//! calling thread when the socket is ready, otherwise once tokio's reactor says so.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use napi::bindgen_prelude::{BufferSlice, Either, ToNapiValue, Uint8ArraySlice};
use napi::{Env, JsValue};
use napi_derive::napi;
use nix::errno::Errno;
use nix::sys::socket::UnixAddr;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::cancel::{self, Canceller};
use crate::credentials::{self, PeerCredentials};
use crate::error::{self, errno_of, rejection, Result};
use crate::handle::Handle;
use crate::held::{Admitted, Unclaimed};
use crate::js::byte_count;
use crate::nonblocking::core::{closing, release};
use crate::nonblocking::stream::fail;
use crate::queue::{OutboundQueue, DEFAULT_MAX_QUEUED_FDS};
use crate::runtime::{register_or_return, spawn_operation, Waits};
use crate::scm_rights::{self, Datagram, SCM_MAX_FD};
use crate::settle::{self, number, Home, RawValue, Settled};
use crate::socket::{self as unix, Adopt, Kind, SocketFile};
use crate::sync::lock;
use crate::turnstile::Turnstile;

/// Longest wait between two tries of a `sendTo` whose receiver's queue is full (the
/// kernel reports no readiness for that: it is the other socket that is full).
const MAX_SEND_BACKOFF: Duration = Duration::from_millis(64);
/// How long a send that finds no memory for its message (`ENOBUFS`, `ENOMEM`) is retried
/// before it is rejected with that error.
const MEMORY_RETRY_BUDGET: Duration = Duration::from_secs(2);

/// What pending operations share.
pub struct Shared {
  io: AsyncFd<OwnedFd>,
  kind: Kind,
  closed: watch::Sender<bool>,
  sends: Arc<Turnstile>,
  receives: Arc<Turnstile>,
  /// Received fds no JS code has claimed yet, and their bound.
  unclaimed: Arc<Unclaimed>,
}

impl Shared {
  fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
    self.io.get_ref().as_fd()
  }

  /// Runs `op` unless (or until) the socket is closed, which settles it with
  /// `ERR_SOCKET_CLOSED`.
  async fn unless_closed<T>(&self, op: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let outcome = tokio::select! {
      biased;
      _ = closing(&self.closed) => Err(error::closed()),
      result = op => result,
    };
    if *self.closed.borrow() {
      return Err(error::closed());
    }
    outcome
  }
}

/// What a message socket's calls made per message need, shared with its handle.
pub struct MessageCore {
  /// The socket's state while open (`None` once closed).
  shared: Mutex<Option<Arc<Shared>>>,
  /// Fds that ride on the next send.
  outbound: Mutex<OutboundQueue>,
}

impl MessageCore {
  fn shared(&self) -> Result<Arc<Shared>> {
    lock(&self.shared).clone().ok_or_else(error::closed)
  }
}

/// A message socket's core as JS holds it (the argument of the calls in `fast`). Closing
/// stays with the socket object: the handle only keeps the memory alive, never the socket.
pub type MessageHandle = Handle<Arc<MessageCore>>;

/// A message as received, before it reaches JS (its fds owned until then).
struct Received {
  data: Bytes,
  fds: Admitted,
  truncated: bool,
  from: Option<Vec<u8>>,
}

/// What one receive found: a message, or (seqpacket) the end of the connection.
enum Outcome {
  Message(Received),
  End,
}

/// Where the bytes of a message are: in the TypeScript layer's scratch Buffer (their count;
/// a message answered at once whose bytes fit), which it copies them out of into a Buffer
/// of its own (one that V8 makes in its heap costs less than any made here), or here.
enum Bytes {
  InScratch(usize),
  Here(Vec<u8>),
}

/// The largest message this system lets a sender make: twice `wmem_max` (the kernel
/// doubles `SO_SNDBUF`), at least 256 KiB. Only a sender with `CAP_NET_ADMIN` (which can
/// force a larger buffer) can send more, and such a message is reported `truncated`.
fn largest_message() -> usize {
  static LARGEST: OnceLock<usize> = OnceLock::new();
  *LARGEST.get_or_init(|| {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
      .ok()
      .and_then(|text| text.trim().parse::<usize>().ok())
      .unwrap_or(0);
    (2 * wmem_max).max(256 * 1024)
  })
}

thread_local! {
  // A receive lands here, then is copied into a buffer of its size. Pages the kernel never
  // writes are never touched, so the size costs address space, not memory.
  static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One non-blocking receive, its bytes kept as `keep` makes them. `Ok(None)`: nothing is
/// waiting. With `fit`, only the fds the bound has room for are kept (see
/// `wait_for_room`).
fn receive_now(
  shared: &Shared,
  fit: bool,
  keep: impl FnOnce(&[u8]) -> Bytes,
) -> nix::Result<Option<Outcome>> {
  let (fd, kind) = (shared.fd(), shared.kind);
  SCRATCH.with_borrow_mut(|scratch| {
    if scratch.is_empty() {
      // Zeroed by the allocator (fresh pages from the kernel), not written: only the pages
      // messages land in become resident.
      *scratch = vec![0; largest_message()];
    }
    let got: Datagram = match scm_rights::recv_message(fd, scratch) {
      Ok(got) => got,
      Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
      Err(e) => return Err(e),
    };
    // Linux reads an empty message and the end alike (0 bytes): it is the end only once the
    // peer is gone and nothing else waits (an empty message with fds, or whose fds were
    // dropped, or followed by others, is a message).
    if kind == Kind::Seqpacket
      && got.bytes == 0
      && got.fds.is_empty()
      && !got.bytes_cut
      && !got.fds_cut
      && hung_up(fd)
      && queued_bytes(fd) == 0
    {
      return Ok(Some(Outcome::End));
    }
    let (fds, cut) = shared.unclaimed.admit(got.fds, fit);
    Ok(Some(Outcome::Message(Received {
      data: keep(&scratch[..got.bytes]),
      fds,
      truncated: got.fds_cut || got.bytes_cut || cut,
      from: got.from,
    })))
  })
}

/// The bytes of every message waiting on a seqpacket socket (`FIONREAD`); 0 if unknown.
fn queued_bytes(fd: std::os::fd::BorrowedFd<'_>) -> libc::c_int {
  let mut queued: libc::c_int = 0;
  // SAFETY: FIONREAD writes one c_int through the pointer, to a local that outlives the
  // call; `fd` is open for its duration.
  let status = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD as _, &mut queued) };
  if status == -1 {
    0
  } else {
    queued
  }
}

/// Whether the peer of a seqpacket socket is gone (an empty read then means the end, not
/// an empty message).
fn hung_up(fd: std::os::fd::BorrowedFd<'_>) -> bool {
  // A peer that shut down only its writing side shows POLLRDHUP (Linux), which nix's
  // PollFlags does not model (its `revents` would be unreadable): plain poll(2).
  #[cfg(any(target_os = "linux", target_os = "android"))]
  let ended = libc::POLLHUP | libc::POLLRDHUP;
  #[cfg(not(any(target_os = "linux", target_os = "android")))]
  let ended = libc::POLLHUP;
  let mut pollfd = libc::pollfd {
    fd: fd.as_raw_fd(),
    events: libc::POLLIN | ended,
    revents: 0,
  };
  // SAFETY: one pollfd on the stack, valid for the call; a zero timeout never blocks.
  let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
  ready == 1 && pollfd.revents & ended != 0
}

/// The JS value of a received message: `[data, truncated, from?, held?]` (the layer makes
/// the public object; indexed, not named, properties are what an addon sets cheaply), or
/// `null` at the end. `data` is a Buffer, or the count of bytes in the scratch Buffer (see
/// [`Bytes`]). A message's fds are held under the id `held` (see `held`): their numbers
/// reach JS when code reads the message's `fds`.
fn message_value(env: &Env, outcome: Outcome) -> napi::Result<Settled> {
  let Outcome::Message(message) = outcome else {
    return Ok(Settled::Value(None));
  };
  let mut value = env.create_array(if message.fds.is_empty() { 3 } else { 4 })?;
  match message.data {
    // At most the scratch Buffer's 64 KiB: exact as a u32.
    Bytes::InScratch(count) => value.set(0, u32::try_from(count).unwrap_or(u32::MAX))?,
    Bytes::Here(data) => value.set(0, BufferSlice::copy_from(env, &data)?)?,
  }
  value.set(1, message.truncated)?;
  // A string, or its bytes when they are not UTF-8: never another name that a reply would
  // reach instead.
  match message.from.map(String::from_utf8) {
    Some(Ok(from)) => value.set(2, from)?,
    Some(Err(bytes)) => value.set(2, BufferSlice::copy_from(env, bytes.as_bytes())?)?,
    None => {}
  }
  if !message.fds.is_empty() {
    value.set(3, crate::held::hold(env, message.fds)?)?;
  }
  Ok(Settled::Value(Some(RawValue(value.raw()))))
}

/// A Unix seqpacket or datagram socket with Promise-returning `send` and `receive`.
#[napi(js_name = "NativeMessageSocket")]
pub struct MessageSocket {
  core: Arc<MessageCore>,
  kind: Kind,
  /// The socket file a bound datagram socket created.
  file: Option<SocketFile>,
  unlink_on_close: AtomicBool,
  path: String,
  unclaimed: Arc<Unclaimed>,
}

impl MessageSocket {
  /// Wraps a socket of `kind`, made non-blocking, registered with the reactor.
  pub(crate) fn wrap(fd: OwnedFd, kind: Kind, file: Option<SocketFile>) -> Result<Self> {
    Self::registered(fd, kind, file, false)
  }

  /// [`Self::wrap`]; if the reactor refuses the fd, an `adopted` one is left open (it is
  /// still its owner's), and one of ours is closed with its socket file removed.
  fn registered(fd: OwnedFd, kind: Kind, file: Option<SocketFile>, adopted: bool) -> Result<Self> {
    let path = unix::local_path(fd.as_fd());
    let io = match register_or_return(fd, Interest::READABLE | Interest::WRITABLE) {
      Ok(io) => io,
      Err((e, fd)) => {
        if let Some(file) = &file {
          file.remove();
        }
        if let (true, Some(fd)) = (adopted, fd) {
          let _ = fd.into_raw_fd();
        }
        return Err(e);
      }
    };
    let unclaimed = Unclaimed::new(DEFAULT_MAX_QUEUED_FDS);
    Ok(Self {
      core: Arc::new(MessageCore {
        shared: Mutex::new(Some(Arc::new(Shared {
          io,
          kind,
          closed: watch::Sender::new(false),
          sends: Turnstile::new(),
          receives: Turnstile::new(),
          unclaimed: Arc::clone(&unclaimed),
        }))),
        outbound: Mutex::new(OutboundQueue::default()),
      }),
      kind,
      unlink_on_close: AtomicBool::new(file.is_some()),
      file,
      path,
      unclaimed,
    })
  }

  fn shared(&self) -> Result<Arc<Shared>> {
    self.core.shared()
  }

  /// Adopts `fd` and leaves its `O_NONBLOCK` as it is: the flag belongs to the open file
  /// description every holder shares, and each `sendmsg` and `recvmsg` here asks for
  /// `MSG_DONTWAIT` itself.
  fn adopt(fd: i32, wanted: Adopt, kind: Kind) -> Result<Self> {
    Self::registered(unix::adopt(fd, wanted)?, kind, None, true)
  }
}

#[napi]
impl MessageSocket {
  /// Two connected seqpacket (`datagram` false) or datagram sockets.
  #[napi]
  pub fn pair(datagram: bool) -> Result<Vec<MessageSocket>> {
    let kind = if datagram {
      Kind::Datagram
    } else {
      Kind::Seqpacket
    };
    let (a, b) = unix::pair_of(kind, true)?;
    Ok(vec![Self::wrap(a, kind, None)?, Self::wrap(b, kind, None)?])
  }

  /// Connects a seqpacket socket to the listener at `path` (at once, or `EAGAIN` when its
  /// backlog is full).
  #[napi]
  pub fn connect_seqpacket(path: String) -> Result<MessageSocket> {
    let fd = unix::connect_kind(Kind::Seqpacket, &path, true, None)?;
    Self::wrap(fd, Kind::Seqpacket, None)
  }

  /// A datagram socket bound at `path` (a file, or `\0name`), or unbound (`null`).
  #[napi]
  pub fn bind_datagram(path: Option<String>) -> Result<MessageSocket> {
    match path {
      Some(path) => {
        let bound = unix::bind_kind(Kind::Datagram, &path, true)?;
        Self::wrap(bound.fd, Kind::Datagram, bound.file)
      }
      None => Self::wrap(unix::unbound(Kind::Datagram, true)?, Kind::Datagram, None),
    }
  }

  /// Adopts a connected seqpacket socket (`datagram` false) or any datagram socket; any
  /// other fd is refused with `ERR_INVALID_FD_TYPE` and left alone.
  #[napi]
  pub fn from_fd(fd: i32, datagram: bool) -> Result<MessageSocket> {
    if datagram {
      Self::adopt(fd, Adopt::Any(Kind::Datagram), Kind::Datagram)
    } else {
      Self::adopt(fd, Adopt::Connected(Kind::Seqpacket), Kind::Seqpacket)
    }
  }

  /// Sets the default destination of a datagram socket (`connect(2)`): `send` goes there,
  /// and only messages from there are received.
  #[napi(ts_args_type = "path: string | Uint8Array")]
  pub fn connect(&self, path: Either<String, Uint8ArraySlice<'_>>) -> Result<()> {
    let shared = self.shared()?;
    let bytes = match &path {
      Either::A(path) => path.as_bytes(),
      Either::B(bytes) => bytes,
    };
    let addr = unix::address_of_bytes(bytes, "connect")?;
    nix::sys::socket::connect(shared.fd().as_raw_fd(), &addr)
      .map_err(|e| error::sys_path(e, "connect", &String::from_utf8_lossy(bytes)))
  }

  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    lock(&self.core.shared)
      .as_ref()
      .map_or(-1, |s| s.fd().as_raw_fd())
  }

  /// The address it is bound to (`\0name` for an abstract one), or `''`.
  #[napi(getter)]
  pub fn path(&self) -> String {
    self.path.clone()
  }

  #[napi(getter)]
  pub fn is_datagram(&self) -> bool {
    self.kind == Kind::Datagram
  }

  /// Whether `close()` removes the socket file `bind` created (default `true`).
  #[napi]
  pub fn set_unlink_on_close(&self, unlink: bool) {
    self
      .unlink_on_close
      .store(unlink && self.file.is_some(), Ordering::Release);
  }

  /// Duplicates `fd` (close-on-exec) into the outbound queue: it rides on the next send.
  #[napi]
  pub fn enqueue(&self, fd: i32) -> Result<()> {
    self.shared()?;
    let mut outbound = lock(&self.core.outbound);
    if outbound.is_full() {
      return Err(error::outbound_full());
    }
    let duplicate = scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
    outbound
      .enqueue(duplicate)
      .map_err(|_| error::outbound_full())
  }

  /// How many fds wait to ride on the next send.
  #[napi(getter)]
  pub fn queued_outbound(&self) -> u32 {
    lock(&self.core.outbound).len() as u32
  }

  /// This socket's handle for the calls made per message (see `fast`).
  #[napi(getter, ts_return_type = "ExternalObject<'MessageCore'>")]
  pub fn handle(&self) -> MessageHandle {
    Handle(Arc::clone(&self.core))
  }

  /// How many received fds may wait unclaimed (their messages' `fds` not read yet) before
  /// receives wait for room.
  #[napi(getter)]
  pub fn max_queued_fds(&self) -> u32 {
    u32::try_from(self.unclaimed.max()).unwrap_or(u32::MAX)
  }

  #[napi(setter)]
  pub fn set_max_queued_fds(&self, limit: u32) {
    self.unclaimed.set_max(limit as usize);
  }

  /// The peer's credentials (connected sockets: a seqpacket connection, a pair).
  #[napi]
  pub fn peer_credentials(&self) -> Result<PeerCredentials> {
    credentials::peer_credentials(self.shared()?.fd())
  }

  /// Closes the socket and the fds queued to ride on the next send, settles every pending
  /// operation with `ERR_SOCKET_CLOSED`, and removes the socket file `bind` created unless
  /// `setUnlinkOnClose(false)`. A second call does nothing.
  #[napi]
  pub fn close(&self) {
    let shared = lock(&self.core.shared).take();
    if let Some(shared) = shared {
      lock(&self.core.outbound).clear();
      if self.unlink_on_close.load(Ordering::Acquire) {
        if let Some(file) = &self.file {
          file.remove();
        }
      }
      shared.closed.send_replace(true);
      release(shared);
    }
  }
}

impl Drop for MessageSocket {
  fn drop(&mut self) {
    self.close();
  }
}

/// A send error, with the destination when there is one (`ENOENT`, `ECONNREFUSED`, ...).
fn send_error(e: Errno, to: Option<&str>) -> error::Error {
  match to {
    Some(path) => error::sys_path(e, "sendmsg", path),
    None => error::sys(e, "sendmsg"),
  }
}

/// Sends once the socket can take the message. A connected socket waits for the reactor
/// (the kernel wakes a datagram sender when its peer's queue drains); a `sendTo` whose
/// receiver is full is retried with a backoff, since nothing reports when that changes.
async fn send_later(
  shared: &Shared,
  data: &[u8],
  fds: &[RawFd],
  address: Option<&UnixAddr>,
  to: Option<&str>,
) -> Result<usize> {
  let mut backoff = Duration::from_millis(1);
  let started = std::time::Instant::now();
  loop {
    let result = if address.is_some() {
      scm_rights::send_message(shared.fd(), data, fds, address).map_err(std::io::Error::from)
    } else {
      shared
        .io
        .async_io(Interest::WRITABLE, |fd| {
          scm_rights::send_message(fd.as_fd(), data, fds, None).map_err(std::io::Error::from)
        })
        .await
    };
    match result {
      Ok(n) => return Ok(n),
      Err(e) => match errno_of(&e) {
        Errno::EINTR => continue,
        // No memory for the message: retried for a while, then reported, since a message
        // the kernel can never allocate (a huge one on a socket with a huge SO_SNDBUF)
        // fails this way every time.
        errno
          if matches!(errno, Errno::ENOBUFS | Errno::ENOMEM)
            && started.elapsed() >= MEMORY_RETRY_BUDGET =>
        {
          return Err(send_error(errno, to))
        }
        errno if errno == Errno::EAGAIN || scm_rights::is_transient(errno) => {
          crate::runtime::sleep(backoff).await;
          backoff = (backoff * 2).min(MAX_SEND_BACKOFF);
        }
        errno => return Err(send_error(errno, to)),
      },
    }
  }
}

/// How long a receive waits for room before it asks the collector again; doubled each time.
const FIRST_NUDGE_AFTER: Duration = Duration::from_millis(50);
/// How many times it asks again (about 50, 150 and 350 ms after the call) before it takes
/// its message with the fds that fit (about 750 ms after the call).
const NUDGES: u32 = 3;

/// Sends `data` as one message on the socket of `core`, with the queued fds and then `fds`
/// (duplicated now) attached, to `to` when given (an unconnected datagram socket). The
/// byte count: directly when it went at once (`Some`), otherwise operation `id` settles
/// later (always, with `defer`: see `StreamCore::read`).
pub(crate) fn send(
  env: &Env,
  core: &MessageCore,
  data: &[u8],
  fds: &[i32],
  to: Option<Either<String, Uint8ArraySlice<'_>>>,
  id: f64,
  defer: bool,
) -> napi::Result<Option<f64>> {
  let shared = match core.shared() {
    Ok(shared) => shared,
    Err(e) => return fail(env, id, e),
  };
  // The address as errors show it (a path given as bytes that are not UTF-8, lossily).
  let (address, to) = match to {
    Some(Either::A(path)) => (
      Some(unix::address(&path, "sendmsg").map_err(rejection)?),
      Some(path),
    ),
    Some(Either::B(bytes)) => (
      Some(unix::address_of_bytes(&bytes, "sendmsg").map_err(rejection)?),
      Some(String::from_utf8_lossy(&bytes).into_owned()),
    ),
    None => (None, None),
  };
  let attached = {
    let mut outbound = lock(&core.outbound);
    if outbound.len() + fds.len() > SCM_MAX_FD {
      return Err(rejection(error::outbound_full()));
    }
    let mut duplicates = Vec::with_capacity(fds.len());
    for fd in fds {
      match scm_rights::dup_cloexec(*fd) {
        Ok(duplicate) => duplicates.push(duplicate),
        // A bad fd throws with nothing sent, as `enqueue` of it does; the duplicates made
        // so far are closed.
        Err(Errno::EBADF) => return Err(rejection(error::sys(Errno::EBADF, "fcntl"))),
        // Out of fds (`EMFILE`, `ENFILE`) is no bad argument: the send fails, as a
        // Promise-returning call does, with nothing sent.
        Err(e) => {
          drop(outbound);
          drop(duplicates);
          return fail(env, id, error::sys(e, "fcntl"));
        }
      }
    }
    let mut attached = outbound.take();
    attached.extend(duplicates);
    attached
  };
  let raw: Vec<RawFd> = attached.iter().map(AsRawFd::as_raw_fd).collect();
  let len = data.len();
  if !defer && shared.sends.is_idle() {
    match scm_rights::send_message(shared.fd(), data, &raw, address.as_ref()) {
      Ok(n) => {
        scm_rights::close_all(attached);
        return Ok(Some(byte_count(n)));
      }
      Err(Errno::EAGAIN | Errno::EINTR) => {}
      Err(e) if scm_rights::is_transient(e) => {}
      Err(e) => return fail(env, id, send_error(e, to.as_deref())),
    }
  }
  // JS may change or detach its buffer meanwhile: the message is copied.
  let data = data.to_vec();
  let home = settle::home(env).map_err(rejection)?;
  let ticket = shared.sends.ticket();
  let undelivered = shared.sends.undelivered();
  let op = async move {
    let send = async {
      ticket.turn().await;
      send_later(&shared, &data, &raw, address.as_ref(), to.as_deref()).await
    };
    let outcome = shared.unless_closed(send).await;
    // Sent or not, this process's duplicates go: the kernel holds its own references.
    scm_rights::close_all(attached);
    drop(shared);
    outcome.map(|_| byte_count(len))
  };
  spawn_operation(
    settle::settling(home, id, op, number, undelivered),
    Waits {
      defer,
      ..Waits::default()
    },
  );
  Ok(None)
}

/// Whether a message received at once passes through the scratch Buffer alone (see
/// [`at_once_in_scratch`]): its bytes are there, below the doubles that follow them (for
/// which `scratch` has room: the layer passes an empty one while its area is in use), and
/// it has no sender's address.
fn fits_in_scratch(message: &Received, scratch: &[u8]) -> bool {
  matches!(message.data, Bytes::InScratch(count) if count <= settle::SCRATCH_MAX)
    && message.from.is_none()
    && scratch.len() >= META_END
}

/// The end of the doubles [`at_once_in_scratch`] writes.
const META_END: usize = settle::FDS_AT + 16;

/// The JS value of a message that [`fits_in_scratch`]: the count of its bytes (in the
/// scratch Buffer), with two doubles at [`settle::FDS_AT`] of the scratch Buffer: the id its
/// fds are held under (-1 for none) and 1 if it is `truncated` (else 0). No array: the
/// TypeScript layer reads them right after this call.
fn at_once_in_scratch(env: &Env, message: Received, scratch: &mut [u8]) -> napi::Result<RawValue> {
  let Bytes::InScratch(count) = message.data else {
    return Err(napi::Error::from_reason(
      "the message is not in the scratch Buffer",
    ));
  };
  let held = if message.fds.is_empty() {
    -1.0
  } else {
    crate::held::hold(env, message.fds)?
  };
  let truncated: f64 = if message.truncated { 1.0 } else { 0.0 };
  let Some(region) = scratch.get_mut(settle::FDS_AT..META_END) else {
    return Err(napi::Error::from_reason("the scratch Buffer is too small"));
  };
  region[..8].copy_from_slice(&held.to_ne_bytes());
  region[8..].copy_from_slice(&truncated.to_ne_bytes());
  // SAFETY: a value made in this environment, on its thread; at most 4096: exact as a u32.
  Ok(RawValue(unsafe {
    u32::to_napi_value(env.raw(), count as u32)?
  }))
}

/// Receives the next message of the socket of `core` (after every earlier receive):
/// `[data, truncated, from?, held?]`, or the end of a seqpacket connection (`false` when
/// answered at once, `null` when settled). Directly when one is waiting and no earlier
/// receive is (`None` means pending), its bytes in `scratch` when they fit (see [`Bytes`]);
/// otherwise operation `id` settles later, and `canceller` can cancel it until it has
/// received. `defer`: settled later whatever is there (see `StreamCore::read`).
pub(crate) fn receive(
  env: &Env,
  core: &MessageCore,
  id: f64,
  canceller: Option<Arc<Canceller>>,
  scratch: &mut [u8],
  defer: bool,
) -> napi::Result<Option<RawValue>> {
  let shared = match core.shared() {
    Ok(shared) => shared,
    Err(e) => return fail(env, id, e),
  };
  let room = shared.unclaimed.has_room();
  if !room && !shared.unclaimed.stalled() {
    // Messages dropped unread may hold what is counted: they go once collected.
    crate::held::nudge_collector(env);
  }
  if !defer && room && shared.receives.is_idle() {
    let keep = |data: &[u8]| match scratch.get_mut(..data.len()) {
      Some(room) => {
        room.copy_from_slice(data);
        Bytes::InScratch(data.len())
      }
      None => Bytes::Here(data.to_vec()),
    };
    match receive_now(&shared, false, keep) {
      Ok(Some(Outcome::Message(message))) if fits_in_scratch(&message, scratch) => {
        return at_once_in_scratch(env, message, scratch).map(Some);
      }
      Ok(Some(outcome)) => {
        return match message_value(env, outcome)? {
          Settled::Value(Some(value)) => Ok(Some(value)),
          // `null` says "pending": the end of a seqpacket connection is `false` here.
          // SAFETY: a value made in this environment, on its thread.
          _ => Ok(Some(RawValue(unsafe {
            bool::to_napi_value(env.raw(), false)?
          }))),
        };
      }
      Ok(None) => {}
      Err(e) => return fail(env, id, error::sys(e, "recvmsg")),
    }
  }
  let home = settle::home(env).map_err(rejection)?;
  let nudges = Arc::clone(&home);
  let ticket = shared.receives.ticket();
  let undelivered = shared.receives.undelivered();
  let op = async move {
    let receive = async {
      ticket.turn().await;
      receive_later(&shared, &nudges).await
    };
    let outcome = shared
      .unless_closed(cancel::unless_cancelled(canceller, receive))
      .await;
    drop(shared);
    outcome
  };
  let finish = |env: &Env, outcome| message_value(env, outcome).map_err(error::internal);
  spawn_operation(
    settle::settling(home, id, op, finish, undelivered),
    Waits {
      defer,
      ..Waits::default()
    },
  );
  Ok(None)
}

/// Waits until the socket's unclaimed fds are below its bound (or it closes): whether the
/// receive must take only the fds that fit. Messages dropped unread free their room once
/// collected; one collection may not get them all (a message registered for it too late),
/// so the collector is asked again. If no room comes, the messages holding it are still
/// reachable: the code awaiting this receive may hold the last one, or `Promise.all` the
/// ones before it, and waiting on would hang it. The message is then taken with the fds
/// that fit, as the kernel does when the fd table is full, and so is every one after it
/// until room is made. The time counts only while the JS thread runs: each request is made
/// there, and the next waits for it. A JS thread that was busy (and so had no chance to
/// read the fds of the messages it was given) does not make a receive give up.
async fn wait_for_room(shared: &Shared, home: &Home) -> bool {
  let ran = Arc::new(AtomicU32::new(0));
  let mut posted = 0;
  let mut after = FIRST_NUDGE_AFTER;
  loop {
    if shared.unclaimed.has_room() || *shared.closed.borrow() {
      return false;
    }
    if shared.unclaimed.stalled() {
      return true;
    }
    let made = tokio::select! {
      _ = shared.unclaimed.room() => true,
      _ = crate::runtime::sleep(after) => false,
    };
    if made || ran.load(Ordering::Acquire) < posted {
      continue;
    }
    if posted == NUDGES {
      break;
    }
    let done = Arc::clone(&ran);
    home.post(Box::new(move |env| {
      crate::held::nudge_collector(env);
      done.fetch_add(1, Ordering::AcqRel);
      Ok(())
    }));
    posted += 1;
    after *= 2;
  }
  shared.unclaimed.stall();
  // A release on another thread between the check above and the stall: not stalled.
  if shared.unclaimed.has_room() {
    shared.unclaimed.unstall();
    return false;
  }
  true
}

/// Receives once a message is waiting and the socket has room for its fds (or no longer
/// waits for it: see [`wait_for_room`]).
async fn receive_later(shared: &Shared, home: &Home) -> Result<Outcome> {
  let fit = wait_for_room(shared, home).await;
  loop {
    let mut guard = shared
      .io
      .readable()
      .await
      .map_err(|e| error::sys(errno_of(&e), "recvmsg"))?;
    // Room made while it waited for the message: it keeps every fd after all.
    let keep = |data: &[u8]| Bytes::Here(data.to_vec());
    match receive_now(shared, fit && !shared.unclaimed.has_room(), keep) {
      Ok(Some(outcome)) => return Ok(outcome),
      Ok(None) => guard.clear_ready(),
      Err(e) => return Err(error::sys(e, "recvmsg")),
    }
  }
}
