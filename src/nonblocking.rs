//! The async classes: non-blocking sockets registered with napi-rs's tokio runtime.
//! Methods take `&self` (napi refuses `&mut self` while an async call on the object is
//! pending); the socket sits behind an `Arc` that pending futures share, the queues behind
//! short `std::sync::Mutex`es, and `close()` cancels every pending future through a watch
//! channel. Promises are built with `AsyncBlockBuilder` so that each call draws its place
//! in line (and its outbound fds) synchronously, in call order.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::{
  within_runtime_if_available, BufferSlice, External, Function, JavaScriptClassExt, Uint8ArraySlice,
};
use napi::{Env, JsValue, Status};
use napi_derive::napi;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, Shutdown};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};

use crate::cancel::{self, CancelHandle, Canceller};
use crate::credentials::{self, PeerCredentials};
use crate::error::{self, Result};
use crate::handoff::{self, Deposit, Finish, Home, RawValue, Settled};
use crate::js::{byte_count, shutdown_how};
use crate::push::{AcceptArgs, Acceptor, ReadArgs, Reader};
use crate::queue::{InboundQueue, OutboundQueue};
use crate::scm_rights::{self, Received};
use crate::socket::{self as unix, Adopt, SocketFile};
use crate::turnstile::{Ticket, Turnstile};

/// Largest `read(size)`.
const MAX_READ_SIZE: u32 = 1 << 30;

thread_local! {
  // Where reads on the JS thread land before being copied into a Buffer of their size.
  static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
  mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// napi-rs rejects async calls only with its own `Status` codes, so the package code
/// travels in the message as `[CODE] message`; the TypeScript layer moves it to `code`.
pub(crate) fn tagged(e: error::Error) -> String {
  format!("[{}] {}", e.status, e.reason)
}

pub(crate) fn rejection(e: error::Error) -> napi::Error {
  napi::Error::new(Status::GenericFailure, tagged(e))
}

pub(crate) fn errno_of(e: &io::Error) -> Errno {
  e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Registers a non-blocking fd with the tokio reactor (which needs the runtime context).
///
/// napi-rs and tokio panic when there is no runtime (a call made while the environment is
/// being torn down); that panic is caught here and becomes an error, since a panic that
/// reached Node would abort the process. The fd is closed in that case.
/// `fd` must keep its fd open, as the same open file description, for as long as the
/// AsyncFd lives: an `OwnedFd`, or a `Registered` (which shares ownership of one).
fn register<T: AsRawFd>(fd: T, interest: Interest) -> Result<AsyncFd<T>> {
  let register = move || {
    // SAFETY: both kinds of `T` passed here own (or share the ownership of) an open fd
    // that stays the same open file description until the AsyncFd, which owns `T`, is
    // dropped and has deregistered it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }
  };
  let registered = if tokio::runtime::Handle::try_current().is_ok() {
    // On tokio's own threads the runtime is entered already. napi-rs's helper must not be
    // used there: after a teardown it may have no runtime, and panic (printing it).
    Ok(register())
  } else {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
      within_runtime_if_available(register)
    }))
  };
  match registered {
    Ok(Ok(io)) => Ok(io),
    Ok(Err(e)) => Err(error::sys(errno_of(&e.into_parts().1), "epoll_ctl")),
    Err(_) => Err(no_runtime()),
  }
}

fn no_runtime() -> error::Error {
  error::coded(
    "ERR_FD_QUEUE_NO_RUNTIME",
    "The async runtime is not running (is the environment shutting down?)",
  )
}

/// Resolves once `closed` turns true.
pub(crate) async fn closing(closed: &watch::Sender<bool>) {
  let mut rx = closed.subscribe();
  let _ = rx.wait_for(|c| *c).await;
}

/// Drops the JS object's handle on a closed socket once the futures that shared it have
/// let go of theirs, so that the fd is closed by the time `close()` returns. They notice
/// the close signal within microseconds on tokio's workers (none of them waits for the JS
/// thread); past a short deadline the last of them closes the fd instead.
fn release<T>(mut shared: Arc<T>) {
  let deadline = Instant::now() + Duration::from_millis(100);
  loop {
    match Arc::try_unwrap(shared) {
      Ok(last) => return drop(last),
      Err(still_shared) => shared = still_shared,
    }
    if Instant::now() >= deadline {
      return;
    }
    std::thread::sleep(Duration::from_micros(20));
  }
}

/// The fd queues of one stream, shared by the JS object and its pending reads.
#[derive(Debug, Default)]
pub(crate) struct Queues {
  outbound: Mutex<OutboundQueue>,
  pub(crate) inbound: Mutex<InboundQueue>,
  /// Fds read by a push reader and on their way to the JS thread, which adds them to
  /// `inbound`; they count against `maxQueuedFds` already.
  pub(crate) pending: AtomicUsize,
  /// Woken when the inbound queue gets room (a dequeue, a larger limit, a close).
  room: Notify,
  pub(crate) closed: AtomicBool,
}

impl Queues {
  pub(crate) fn inbound_full(&self) -> bool {
    let inbound = lock(&self.inbound);
    inbound.len() + self.pending.load(Ordering::Acquire) >= inbound.limit()
  }

  /// Waits until the inbound queue is below its bound: reading pauses at `maxQueuedFds`.
  pub(crate) async fn wait_for_room(&self) {
    loop {
      let room = self.room.notified();
      if !self.inbound_full() || self.closed.load(Ordering::Acquire) {
        return;
      }
      room.await;
    }
  }

  fn close(&self) {
    self.closed.store(true, Ordering::Release);
    lock(&self.outbound).clear();
    lock(&self.inbound).clear();
    self.room.notify_waiters();
  }
}

/// The fds that reads on tokio's threads brought, one `(fds, truncated)` per message, on
/// their way to the JS thread's inbound queue: deposited in that thread's home, so that a
/// teardown closes them (see `handoff`).
pub(crate) struct Arrival {
  deposit: Option<Deposit>,
  /// How many fds arrived.
  pub(crate) count: usize,
}

type Arrived = Vec<(Vec<OwnedFd>, bool)>;

impl Arrival {
  pub(crate) fn deposit(home: &Arc<Home>, parts: Arrived) -> Self {
    let count = parts.iter().map(|(fds, _)| fds.len()).sum();
    let any = parts
      .iter()
      .any(|(fds, truncated)| *truncated || !fds.is_empty());
    let deposit = if any { Deposit::new(home, parts) } else { None };
    Self { deposit, count }
  }

  /// On the JS thread: the fds join the inbound queue, or are closed if the stream closed
  /// meanwhile (then the read fails with `ERR_SOCKET_CLOSED`).
  pub(crate) fn receive(self, queues: &Queues) -> Result<()> {
    let parts = self.deposit.and_then(Deposit::claim::<Arrived>);
    receive_parts(queues, parts.unwrap_or_default())
  }
}

/// On the JS thread: what reads brought joins the inbound queue, or is closed (and the
/// read fails with `ERR_SOCKET_CLOSED`) if the stream closed meanwhile.
fn receive_parts(queues: &Queues, parts: Arrived) -> Result<()> {
  if queues.closed.load(Ordering::Acquire) {
    return Err(error::closed());
  }
  let mut inbound = lock(&queues.inbound);
  for (fds, truncated) in parts {
    inbound.receive(fds, truncated);
  }
  Ok(())
}

/// A stream's fd as registered with the reactor: it shares ownership of the fd, so the fd
/// cannot be closed (and its number reused) before the registration is gone.
pub(crate) struct Registered(Arc<OwnedFd>);

impl AsRawFd for Registered {
  fn as_raw_fd(&self) -> RawFd {
    self.0.as_raw_fd()
  }
}

impl AsFd for Registered {
  fn as_fd(&self) -> BorrowedFd<'_> {
    self.0.as_fd()
  }
}

/// Readiness of one direction of a stream, registered with the reactor only while that
/// direction is congested. A socket that stays registered wakes the reactor thread on
/// every message that arrives and every time the peer drains a message, even when the JS
/// thread reads and writes it directly; those wake-ups cost more than the I/O itself.
/// So an operation that has to wait registers (`acquire`), the registration stays while
/// operations keep waiting, and the first one that finds the socket ready without
/// waiting lets it go (`release_if_idle`).
///
/// Reads register the socket's own fd. Writes register a duplicate, because epoll takes
/// an fd number once and the two directions come and go independently; that duplicate
/// exists only from a write that had to wait until the next one that did not.
pub(crate) struct Watch {
  interest: Interest,
  duplicate: bool,
  current: Mutex<Option<Arc<AsyncFd<Registered>>>>,
  /// Whether `current` holds a registration: lets the ready path skip the lock.
  registered: AtomicBool,
}

impl Watch {
  fn new(interest: Interest, duplicate: bool) -> Self {
    Self {
      interest,
      duplicate,
      current: Mutex::new(None),
      registered: AtomicBool::new(false),
    }
  }

  /// The registration, made now if there is none. Hold it while waiting. It must be
  /// called on tokio's workers (inside a future), where the reactor is reachable.
  pub(crate) fn acquire(
    &self,
    fd: &Arc<OwnedFd>,
  ) -> std::result::Result<Arc<AsyncFd<Registered>>, Acquire> {
    let mut current = lock(&self.current);
    if let Some(io) = current.as_ref() {
      return Ok(Arc::clone(io));
    }
    let fd = if self.duplicate {
      match scm_rights::dup_cloexec(fd.as_raw_fd()) {
        Ok(duplicate) => Arc::new(duplicate),
        Err(Errno::EMFILE | Errno::ENFILE) => return Err(Acquire::NoFdLeft),
        Err(e) => return Err(Acquire::Failed(error::sys(e, "fcntl"))),
      }
    } else {
      Arc::clone(fd)
    };
    let io = Arc::new(register(Registered(fd), self.interest).map_err(Acquire::Failed)?);
    *current = Some(Arc::clone(&io));
    self.registered.store(true, Ordering::Release);
    Ok(io)
  }

  /// Drops the registration if no operation holds it: the socket was just found ready
  /// without waiting. The deregistration happens under the lock, so that a new
  /// registration of the same fd cannot come first.
  fn release_if_idle(&self) {
    if !self.registered.load(Ordering::Acquire) {
      return;
    }
    let mut current = lock(&self.current);
    if current
      .as_ref()
      .is_some_and(|io| Arc::strong_count(io) == 1)
    {
      self.registered.store(false, Ordering::Release);
      drop(current.take());
    }
  }
}

/// Why `Watch::acquire` gave no registration.
pub(crate) enum Acquire {
  /// The duplicate a write registration needs could not be made: no fd left.
  NoFdLeft,
  Failed(error::Error),
}

impl From<Acquire> for error::Error {
  fn from(e: Acquire) -> Self {
    match e {
      Acquire::NoFdLeft => error::sys(Errno::EMFILE, "fcntl"),
      Acquire::Failed(e) => e,
    }
  }
}

/// What pending futures share: the socket, its readiness and the order of calls.
pub(crate) struct Shared {
  pub(crate) fd: Arc<OwnedFd>,
  pub(crate) readable: Watch,
  writable: Watch,
  pub(crate) closed: watch::Sender<bool>,
  reads: Arc<Turnstile>,
  writes: Arc<Turnstile>,
}

impl Shared {
  fn new(fd: OwnedFd) -> Arc<Self> {
    Arc::new(Self {
      fd: Arc::new(fd),
      readable: Watch::new(Interest::READABLE, false),
      writable: Watch::new(Interest::WRITABLE, true),
      closed: watch::Sender::new(false),
      reads: Turnstile::new(),
      writes: Turnstile::new(),
    })
  }

  /// Runs `op` until the stream is closed. A close settles the operation with
  /// `ERR_SOCKET_CLOSED` whatever `op` was about to report.
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

  /// One non-blocking `recvmsg` on the calling thread; `None` when nothing is ready.
  /// The bytes are copied straight into a Buffer that V8 owns (no external buffer with a
  /// finalizer per read).
  fn try_read<'env>(
    &self,
    env: &'env Env,
    size: usize,
  ) -> Result<Option<(BufferSlice<'env>, Received)>> {
    SCRATCH.with_borrow_mut(|scratch| {
      let mut owned;
      let buf: &mut [u8] = if size <= scratch.len() {
        &mut scratch[..size]
      } else {
        owned = vec![0u8; size];
        &mut owned
      };
      match scm_rights::recv_with_fds(self.fd.as_fd(), buf, true) {
        Ok(received) => {
          let bytes = BufferSlice::copy_from(env, &buf[..received.bytes])
            .map_err(|e| error::coded("ERR_INTERNAL", e.reason.clone()))?;
          Ok(Some((bytes, received)))
        }
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
        Err(e) => Err(error::sys(e, "recvmsg")),
      }
    })
  }

  /// One `recvmsg` of at most `size` bytes, after the inbound queue has room.
  async fn read(&self, queues: &Queues, size: usize) -> Result<(Vec<u8>, Received)> {
    // Allocated once data is ready (inside the closure), so a waiting read holds no buffer.
    let mut data = Vec::new();
    queues.wait_for_room().await;
    let io = self
      .readable
      .acquire(&self.fd)
      .map_err(error::Error::from)?;
    loop {
      let result = io
        .async_io(Interest::READABLE, |fd| {
          data.reserve(size);
          scm_rights::recv_appending(fd.as_fd(), &mut data, size, true).map_err(io::Error::from)
        })
        .await;
      match result {
        Ok(received) => {
          // A small message must not pin a large allocation in its Buffer.
          if data.len() * 2 < size {
            data.shrink_to_fit();
          }
          return Ok((data, received));
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) => return Err(error::sys(errno_of(&e), "recvmsg")),
      }
    }
  }

  /// Writes every byte; `fds` ride on the first `sendmsg` and are closed once it
  /// succeeded (the kernel holds its own references) or the write failed.
  ///
  /// It tries at once first (an earlier write may have made room by now) and registers
  /// for writability only when the socket is full. If no fd is left for that registration
  /// (the process is at its open-file limit), it polls instead, backing off up to 16 ms.
  /// A transient shortage (`ETOOMANYREFS` until the peer takes fds in flight, `ENOBUFS`,
  /// `ENOMEM`) has no readiness to wait for: the fds stay and the send is retried, backing
  /// off up to 64 ms.
  async fn write_all(&self, data: &[u8], mut fds: Vec<OwnedFd>, mut sent: usize) -> Result<usize> {
    let mut registered: Option<Arc<AsyncFd<Registered>>> = None;
    let mut backoff = Duration::from_millis(1);
    while sent < data.len() {
      let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
      let send = |fd: BorrowedFd<'_>| {
        scm_rights::send_with_fds(fd, &data[sent..], &raw, true).map_err(io::Error::from)
      };
      let result = match &registered {
        Some(io) => io.async_io(Interest::WRITABLE, |fd| send(fd.as_fd())).await,
        None => send(self.fd.as_fd()),
      };
      match result {
        Ok(n) => {
          scm_rights::close_all(std::mem::take(&mut fds));
          sent += n;
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && registered.is_none() => {
          match self.writable.acquire(&self.fd) {
            Ok(io) => registered = Some(io),
            Err(Acquire::NoFdLeft) => {
              tokio::time::sleep(backoff).await;
              backoff = (backoff * 2).min(Duration::from_millis(16));
            }
            Err(Acquire::Failed(e)) => return Err(e),
          }
        }
        Err(e) if scm_rights::is_transient(errno_of(&e)) => {
          tokio::time::sleep(backoff).await;
          backoff = (backoff * 2).min(Duration::from_millis(64));
        }
        Err(e) => return Err(error::sys(errno_of(&e), "sendmsg")),
      }
    }
    Ok(sent)
  }
}

/// Part of one write that goes out as its own `sendmsg`: the bytes from `start` to the
/// next message's start, with `fds` on the first of them.
pub(crate) struct Message {
  pub(crate) start: usize,
  pub(crate) fds: Vec<OwnedFd>,
}

/// Where message `i` of a write of `len` bytes ends.
fn message_end(messages: &[Message], i: usize, len: usize) -> usize {
  messages.get(i + 1).map_or(len, |m| m.start)
}

/// A connected Unix stream socket driven by tokio.
#[napi(js_name = "NativeAsyncUnixStream")]
pub struct AsyncUnixStream {
  core: Arc<StreamCore>,
}

/// Settles operation `id` as failed with `e` (a call on a closed stream, say), and says
/// "pending" to the caller: the Promise rejects through the normal path.
fn fail<T>(env: &Env, id: f64, e: error::Error) -> napi::Result<Option<T>> {
  handoff::home(env)
    .map_err(rejection)?
    .settle(id, Box::new(move |_| Err(e)));
  Ok(None)
}

/// Runs `op` on tokio and settles operation `id` with what `finish` makes of its outcome on
/// the JS thread.
pub(crate) fn settle_later<T: Send + 'static>(
  home: Arc<Home>,
  id: f64,
  op: impl std::future::Future<Output = Result<T>> + Send + 'static,
  finish: impl FnOnce(&Env, T) -> Result<Settled> + Send + 'static,
) {
  napi::bindgen_prelude::spawn(async move {
    let settle: Finish = match op.await {
      Ok(value) => Box::new(move |env| finish(env, value)),
      Err(e) => Box::new(move |_| Err(e)),
    };
    home.settle(id, settle);
  });
}

/// A byte count as a JS number value.
pub(crate) fn number(env: &Env, n: f64) -> Result<Settled> {
  let value = env.create_double(n).map_err(internal)?;
  Ok(Settled::Value(Some(RawValue(value.raw()))))
}

/// Bytes as a Buffer: a small one copied into V8's memory, a large one handed over.
fn bytes(env: &Env, data: Vec<u8>) -> Result<Settled> {
  let buffer = if data.len() <= 16 * 1024 {
    BufferSlice::copy_from(env, &data)
  } else {
    BufferSlice::from_data(env, data)
  };
  Ok(Settled::Value(Some(RawValue(
    buffer.map_err(internal)?.raw(),
  ))))
}

/// What an `AsyncUnixStream` is, shared with the handle that the TypeScript layer calls
/// its hot paths through (see `fast`).
pub struct StreamCore {
  shared: Mutex<Option<Arc<Shared>>>,
  queues: Arc<Queues>,
  reader: Mutex<Option<Reader>>,
}

impl std::ops::Deref for AsyncUnixStream {
  type Target = StreamCore;

  fn deref(&self) -> &StreamCore {
    &self.core
  }
}

impl AsyncUnixStream {
  pub(crate) fn wrap(fd: OwnedFd) -> Result<Self> {
    Ok(Self {
      core: Arc::new(StreamCore {
        shared: Mutex::new(Some(Shared::new(fd))),
        queues: Arc::default(),
        reader: Mutex::new(None),
      }),
    })
  }

  /// The core, for a handle that outlives no one: closing stays with this object.
  pub(crate) fn core(&self) -> Arc<StreamCore> {
    Arc::clone(&self.core)
  }
}

impl StreamCore {
  pub(crate) fn shared(&self) -> Result<Arc<Shared>> {
    lock(&self.shared).clone().ok_or_else(error::closed)
  }

  /// The outbound queue: fds that ride on the next write.
  pub(crate) fn outbound(&self) -> &Mutex<OutboundQueue> {
    &self.queues.outbound
  }

  /// Sends `data` as `messages` (each from its `start` to the next one's, with its fds on
  /// its first byte; starts ascending, the first at 0), after every earlier write.
  ///
  /// When no earlier write is pending, the messages go out at once on the calling thread,
  /// one `sendmsg` each, until the socket is full; the byte count comes back directly if
  /// everything went, and otherwise a Promise sends the rest in order. The rest is copied
  /// first: JS may detach, resize or change its buffer meanwhile, and a pointer into it
  /// could then send freed memory.
  pub(crate) fn send_messages(
    env: &Env,
    shared: Arc<Shared>,
    data: Uint8ArraySlice<'_>,
    mut messages: Vec<Message>,
    id: f64,
  ) -> napi::Result<Option<f64>> {
    let len = data.len();
    let mut sent = 0;
    let mut next = 0;
    if shared.writes.is_idle() {
      while next < messages.len() {
        let end = message_end(&messages, next, len);
        if sent == end {
          next += 1;
          continue;
        }
        let raw: Vec<_> = messages[next].fds.iter().map(AsRawFd::as_raw_fd).collect();
        match scm_rights::send_with_fds(shared.fd.as_fd(), &data[sent..end], &raw, true) {
          Ok(n) => {
            // The fds went with these bytes; the kernel holds its own references.
            scm_rights::close_all(std::mem::take(&mut messages[next].fds));
            sent += n;
          }
          Err(Errno::EAGAIN | Errno::EINTR) => break,
          // Waited out (with the fds kept) by the asynchronous rest below.
          Err(e) if scm_rights::is_transient(e) => break,
          Err(e) => return fail(env, id, error::sys(e, "sendmsg")),
        }
      }
      if next == messages.len() {
        shared.writable.release_if_idle();
        return Ok(Some(byte_count(len)));
      }
    }
    let home = handoff::home(env).map_err(rejection)?;
    let data = data[sent..].to_vec();
    let mut rest: Vec<Message> = messages
      .drain(next..)
      .map(|m| Message {
        start: m.start.saturating_sub(sent),
        fds: m.fds,
      })
      .collect();
    let ticket = shared.writes.ticket();
    let op = async move {
      let outcome = shared
        .unless_closed(async {
          ticket.turn().await;
          let mut from = 0;
          for i in 0..rest.len() {
            let end = message_end(&rest, i, data.len());
            let fds = std::mem::take(&mut rest[i].fds);
            shared.write_all(&data[from..end], fds, 0).await?;
            from = end;
          }
          Ok(byte_count(len))
        })
        .await;
      drop(shared);
      outcome
    };
    settle_later(home, id, op, number);
    Ok(None)
  }

  /// Duplicates `fd` (close-on-exec) into the outbound queue; it rides on the next
  /// `write` called after this.
  pub(crate) fn enqueue(&self, fd: i32) -> Result<()> {
    self.shared()?;
    let mut outbound = lock(&self.queues.outbound);
    if outbound.is_full() {
      return Err(error::outbound_full());
    }
    let duplicate = scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
    outbound
      .enqueue(duplicate)
      .map_err(|_| error::outbound_full())
  }

  /// The oldest received fd, now the caller's to close; `null` when none is waiting.
  pub(crate) fn dequeue(&self) -> Result<Option<i32>> {
    self.shared()?;
    let fd = lock(&self.queues.inbound).dequeue();
    self.queues.room.notify_waiters();
    match fd {
      Ok(fd) => Ok(fd.map(IntoRawFd::into_raw_fd)),
      Err(_) => Err(error::truncated()),
    }
  }

  /// One `recvmsg` of at most `size` bytes, served after every earlier `read`. The fds
  /// that came with the bytes join the inbound queue on the JS thread, just before the
  /// promise resolves. An empty Buffer means end of stream.
  ///
  /// When no earlier read is pending and data is ready, the `recvmsg` happens at once on
  /// the calling thread and the result comes back directly (the TypeScript layer wraps it
  /// in a resolved Promise), as libuv reads ready sockets on the loop thread.
  ///
  /// Otherwise it returns `null` and settles operation `id` later; `canceller` (from a JS
  /// `AbortSignal`) can cancel it until it has read anything.
  pub(crate) fn read<'env>(
    &self,
    env: &'env Env,
    size: u32,
    id: f64,
    canceller: Option<Arc<Canceller>>,
  ) -> napi::Result<Option<BufferSlice<'env>>> {
    if size == 0 || size > MAX_READ_SIZE {
      return Err(rejection(error::out_of_range("size", size)));
    }
    let shared = match self.shared() {
      Ok(shared) => shared,
      Err(e) => return fail(env, id, e),
    };
    if shared.reads.is_idle() && !self.queues.inbound_full() {
      match shared.try_read(env, size as usize) {
        Ok(Some((data, received))) => {
          shared.readable.release_if_idle();
          lock(&self.queues.inbound).receive(received.fds, received.truncated);
          return Ok(Some(data));
        }
        Ok(None) => {}
        Err(e) => return fail(env, id, e),
      }
    }
    let home = handoff::home(env).map_err(rejection)?;
    let ticket = shared.reads.ticket();
    let queues = Arc::clone(&self.queues);
    let reading = Arc::clone(&queues);
    let op = async move {
      let read = read_in_turn(&shared, &reading, ticket, size as usize);
      let outcome = shared
        .unless_closed(cancel::unless_cancelled(canceller, read))
        .await;
      drop(shared);
      outcome
    };
    settle_later(home, id, op, move |env, (data, received, ticket)| {
      // Closed while the result travelled: the fds are closed, not queued.
      receive_parts(&queues, vec![(received.fds, received.truncated)])?;
      // Only now may the next read go: its fds must queue behind these.
      drop(ticket);
      bytes(env, data)
    });
    Ok(None)
  }

  /// Writes every byte of `data`, after every earlier `write`; the fds queued when this
  /// was called ride on its first `sendmsg`. Resolves with the byte count.
  ///
  /// When no earlier write is pending, the first `sendmsg` happens at once on the calling
  /// thread; if it wrote everything the byte count comes back directly (the TypeScript
  /// layer wraps it in a resolved Promise), and otherwise the rest goes on asynchronously.
  pub(crate) fn write(
    &self,
    env: &Env,
    data: Uint8ArraySlice<'_>,
    id: f64,
  ) -> napi::Result<Option<f64>> {
    let shared = match self.shared() {
      Ok(shared) => shared,
      Err(e) => return fail(env, id, e),
    };
    let fds = {
      let mut outbound = lock(&self.queues.outbound);
      if data.is_empty() && !outbound.is_empty() {
        return Err(rejection(error::empty_write()));
      }
      outbound.take()
    };
    let message = Message { start: 0, fds };
    Self::send_messages(env, shared, data, vec![message], id)
  }
}

#[napi]
impl AsyncUnixStream {
  /// Two connected streams (`socketpair`).
  #[napi]
  pub fn pair() -> Result<Vec<AsyncUnixStream>> {
    let (a, b) = unix::pair(true)?;
    Ok(vec![Self::wrap(a)?, Self::wrap(b)?])
  }

  /// Connects to the listener at `path` (or the abstract name `\0name`). A Unix socket
  /// connects at once or not at all (a full backlog is `EAGAIN`, as in Node's `net`), so
  /// this never waits; the TypeScript layer turns the outcome into a Promise.
  #[napi]
  pub fn connect(path: String) -> Result<AsyncUnixStream> {
    unix::connect(&path, true, None).and_then(Self::wrap)
  }

  /// Takes ownership of `fd`, a connected Unix stream socket (`ERR_INVALID_FD_TYPE`
  /// otherwise, and the fd is left alone), and makes it close-on-exec. Its `O_NONBLOCK`
  /// is left as it is: every read and write here is non-blocking by itself.
  #[napi]
  pub fn from_fd(fd: i32) -> Result<AsyncUnixStream> {
    unix::adopt(fd, Adopt::Connected).and_then(Self::wrap)
  }

  /// This stream's handle for the functions in `fast`.
  #[napi(getter, ts_return_type = "ExternalObject<'StreamCore'>")]
  pub fn handle(&self) -> crate::fast::StreamHandle {
    External::new(self.core())
  }

  /// The socket's fd, or -1 once closed.
  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    lock(&self.shared).as_ref().map_or(-1, |s| s.fd.as_raw_fd())
  }

  #[napi(getter)]
  pub fn max_queued_fds(&self) -> u32 {
    lock(&self.queues.inbound).limit() as u32
  }

  #[napi(setter)]
  pub fn set_max_queued_fds(&self, limit: u32) {
    lock(&self.queues.inbound).set_limit(limit as usize);
    self.queues.room.notify_waiters();
  }

  /// The peer's pid, uid and gid, as the kernel recorded them at connect time.
  #[napi]
  pub fn peer_credentials(&self) -> Result<PeerCredentials> {
    credentials::peer_credentials(self.shared()?.fd.as_fd())
  }

  /// How many received fds wait for `dequeue`.
  #[napi(getter)]
  pub fn queued_inbound(&self) -> u32 {
    lock(&self.queues.inbound).len() as u32
  }

  /// How many fds wait to ride on the next `write`.
  #[napi(getter)]
  pub fn queued_outbound(&self) -> u32 {
    lock(&self.queues.outbound).len() as u32
  }

  /// Shuts down one or both directions, after every earlier `write` went out; settles
  /// operation `id` then.
  #[napi]
  pub fn shutdown(&self, env: &Env, how: String, id: f64) -> napi::Result<()> {
    let how = shutdown_how(&how).map_err(rejection)?;
    let shared = match self.shared() {
      Ok(shared) => shared,
      Err(e) => return fail::<()>(env, id, e).map(drop),
    };
    let home = handoff::home(env).map_err(rejection)?;
    let ticket = shared.writes.ticket();
    let op = async move {
      let outcome = shared
        .unless_closed(async {
          ticket.turn().await;
          shutdown_now(&shared, how)
        })
        .await;
      drop(shared);
      outcome
    };
    settle_later(home, id, op, |_, ()| Ok(Settled::Value(None)));
    Ok(())
  }

  /// Starts push delivery: `callback(chunk, fdCount, error)` for every batch read, then
  /// `callback(null, 0, null)` at end of stream. Reading pauses at `maxQueuedFds`.
  #[napi(
    ts_args_type = "callback: (chunk: Buffer | null, fdCount: number, error: string | null) => void"
  )]
  pub fn start_reading(&self, env: &Env, callback: Function<'_, ReadArgs, ()>) -> Result<()> {
    let shared = self.shared()?;
    let mut reader = lock(&self.reader);
    if reader.is_none() {
      let started = Reader::start(env, shared, Arc::clone(&self.queues), callback);
      *reader = Some(started.map_err(internal)?);
    }
    Ok(())
  }

  /// Pauses (`false`) or resumes (`true`) push delivery.
  #[napi]
  pub fn set_reading(&self, env: &Env, wanted: bool) -> Result<()> {
    match lock(&self.reader).as_mut() {
      Some(reader) => reader.set_wanted(env, wanted).map_err(internal),
      None => Ok(()),
    }
  }

  /// Whether a waiting push reader keeps the process alive (`ref()` / `unref()`).
  #[napi]
  pub fn set_referenced(&self, env: &Env, referenced: bool) -> Result<()> {
    match lock(&self.reader).as_mut() {
      Some(reader) => reader.set_referenced(env, referenced).map_err(internal),
      None => Ok(()),
    }
  }

  /// Closes every fd waiting in the outbound queue (nothing will carry them).
  #[napi]
  pub fn clear_outbound(&self) {
    lock(&self.queues.outbound).clear();
  }

  /// Closes the socket and every queued fd, and settles every pending operation with
  /// `ERR_SOCKET_CLOSED`. A second call does nothing.
  #[napi]
  pub fn close(&self) {
    let shared = lock(&self.shared).take();
    if let Some(shared) = shared {
      lock(&self.reader).take();
      self.queues.close();
      // Pending operations settle through the close signal alone. The connection itself
      // is left alone (no `shutdown`): another process may hold this socket too (it was
      // handed over), and only this descriptor is released.
      shared.closed.send_replace(true);
      release(shared);
    }
  }
}

impl Drop for AsyncUnixStream {
  fn drop(&mut self) {
    self.close();
  }
}

/// A read in its turn. The turn is handed back with the result and ends on the JS thread,
/// once the fds it brought are in the inbound queue: a read called meanwhile (which may
/// `recvmsg` at once) must not queue its fds first.
async fn read_in_turn(
  shared: &Shared,
  queues: &Queues,
  ticket: Ticket,
  size: usize,
) -> Result<(Vec<u8>, Received, Ticket)> {
  ticket.turn().await;
  let (data, received) = shared.read(queues, size).await?;
  Ok((data, received, ticket))
}

fn shutdown_now(shared: &Shared, how: Shutdown) -> Result<()> {
  if *shared.closed.borrow() {
    return Err(error::closed());
  }
  match socket::shutdown(shared.fd.as_raw_fd(), how) {
    Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
    Err(e) => Err(error::sys(e, "shutdown")),
  }
}

/// A listening Unix socket driven by tokio.
#[napi(js_name = "NativeAsyncUnixListener")]
pub struct AsyncUnixListener {
  io: Mutex<Option<Arc<ListenerShared>>>,
  /// The socket file this listener created, removed on close unless told otherwise.
  file: Option<SocketFile>,
  path: String,
  unlink_on_close: AtomicBool,
  acceptor: Mutex<Option<Acceptor>>,
}

pub(crate) struct ListenerShared {
  io: AsyncFd<OwnedFd>,
  pub(crate) closed: watch::Sender<bool>,
}

impl AsyncUnixListener {
  fn listening(fd: OwnedFd, file: Option<SocketFile>, path: String) -> Result<Self> {
    let io = match register(fd, Interest::READABLE) {
      Ok(io) => io,
      Err(e) => {
        if let Some(file) = &file {
          file.remove();
        }
        return Err(e);
      }
    };
    Ok(Self {
      io: Mutex::new(Some(Arc::new(ListenerShared {
        io,
        closed: watch::Sender::new(false),
      }))),
      unlink_on_close: AtomicBool::new(file.is_some()),
      file,
      path,
      acceptor: Mutex::new(None),
    })
  }
}

#[napi]
impl AsyncUnixListener {
  /// Creates the socket file at `path` (or the abstract name `\0name`) and listens on it.
  #[napi]
  pub fn bind(path: String) -> Result<AsyncUnixListener> {
    let bound = unix::bind(&path, true)?;
    Self::listening(bound.fd, bound.file, path)
  }

  /// Takes ownership of `fd`, a listening Unix stream socket (`ERR_INVALID_FD_TYPE`
  /// otherwise, and the fd is left alone), and makes it close-on-exec and non-blocking:
  /// `O_NONBLOCK` is set on the open file description, which other holders share (as
  /// Node's `listen({ fd })` does), because `accept` has no per-call non-blocking flag and
  /// must never block tokio's thread when another holder took the connection first. An
  /// adopted listener never removes a file.
  #[napi]
  pub fn from_fd(fd: i32) -> Result<AsyncUnixListener> {
    let sock = unix::adopt(fd, Adopt::Listening)?;
    unix::set_nonblocking(sock.as_fd()).map_err(|e| error::sys(e, "fcntl"))?;
    let path = unix::local_path(sock.as_fd());
    Self::listening(sock, None, path)
  }

  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    lock(&self.io).as_ref().map_or(-1, |s| s.io.as_raw_fd())
  }

  /// The address it listens on: a path, `\0name` for an abstract one, or `''` for none.
  #[napi(getter)]
  pub fn path(&self) -> String {
    self.path.clone()
  }

  /// Whether `close()` removes the socket file this listener created (default `true`;
  /// `false` keeps it for a successor the listener was handed to).
  #[napi]
  pub fn set_unlink_on_close(&self, unlink: bool) {
    self
      .unlink_on_close
      .store(unlink && self.file.is_some(), Ordering::Release);
  }

  /// Accepts the next connection and settles operation `id` with it; `canceller` (from a
  /// JS `AbortSignal`) can cancel the wait, leaving the connection for the next accept.
  /// Running out of fds (`EMFILE`, ...) fails this accept only: the listener stays open.
  ///
  /// tokio waits until a connection is pending; the `accept` itself happens on the JS
  /// thread when the Promise settles, so a connection is never taken from the backlog
  /// unless it is delivered (a `close()` meanwhile leaves it there, for whoever holds the
  /// listener next).
  #[napi(ts_args_type = "id: number, canceller?: ExternalObject<'Canceller'> | undefined | null")]
  pub fn accept(&self, env: &Env, id: f64, canceller: Option<&CancelHandle>) -> napi::Result<()> {
    let Some(shared) = lock(&self.io).clone() else {
      return fail::<()>(env, id, error::closed()).map(drop);
    };
    let home = handoff::home(env).map_err(rejection)?;
    accept_later(home, shared, id, canceller.map(|c| Arc::clone(c)));
    Ok(())
  }

  /// Starts accepting in a loop: `callback(stream, null, false)` per connection; see
  /// `AcceptArgs` for the rest.
  #[napi(
    ts_args_type = "callback: (streams: NativeAsyncUnixStream[], error: string | null, retrying: boolean) => void"
  )]
  pub fn start_accepting(&self, callback: Function<'_, AcceptArgs, ()>) -> Result<()> {
    let shared = lock(&self.io).clone().ok_or_else(error::closed)?;
    let mut acceptor = lock(&self.acceptor);
    if acceptor.is_none() {
      *acceptor = Some(Acceptor::start(shared, callback).map_err(internal)?);
    }
    Ok(())
  }

  /// Whether waiting for connections keeps the process alive (`ref()` / `unref()`).
  #[napi]
  pub fn set_referenced(&self, env: &Env, referenced: bool) -> Result<()> {
    match lock(&self.acceptor).as_ref() {
      Some(acceptor) => acceptor.set_referenced(env, referenced).map_err(internal),
      None => Ok(()),
    }
  }

  /// Stops listening (this descriptor: another holder keeps listening), removes the socket
  /// file unless `setUnlinkOnClose(false)`, and rejects pending accepts with
  /// `ERR_SOCKET_CLOSED`. A second call does nothing.
  #[napi]
  pub fn close(&self) {
    let shared = lock(&self.io).take();
    if let Some(shared) = shared {
      lock(&self.acceptor).take();
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

impl Drop for AsyncUnixListener {
  fn drop(&mut self) {
    self.close();
  }
}

/// Resolves once a connection is pending on the listener. tokio's readiness may be stale
/// (JS accepted since, or another holder of the listener did): it is checked with a
/// zero-timeout `poll`, and cleared when nothing is pending.
pub(crate) async fn connection_pending(shared: &ListenerShared) -> io::Result<()> {
  loop {
    let mut guard = shared.io.readable().await?;
    let mut fds = [PollFd::new(shared.io.get_ref().as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
      Ok(0) => guard.clear_ready(),
      // Pending, or an error that the accept will report.
      _ => return Ok(()),
    }
  }
}

/// One non-blocking `accept` (on the JS thread): the connection, or `EAGAIN` when none is
/// pending, or why it failed.
pub(crate) fn accept_now(shared: &ListenerShared) -> nix::Result<OwnedFd> {
  loop {
    match unix::accept(shared.io.get_ref().as_fd(), true) {
      Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
      other => return other,
    }
  }
}

/// Waits (on tokio) for a connection for operation `id`, then accepts it on the JS thread;
/// starts over if another holder took it first.
fn accept_later(
  home: Arc<Home>,
  shared: Arc<ListenerShared>,
  id: f64,
  canceller: Option<Arc<Canceller>>,
) {
  let closed = shared.closed.subscribe();
  let listener = Arc::downgrade(&shared);
  let waiting = canceller.clone();
  let depot = Arc::clone(&home);
  let op = async move {
    let pending = async {
      connection_pending(&shared)
        .await
        .map_err(|e| error::sys(errno_of(&e), "accept"))
    };
    let outcome = tokio::select! {
      biased;
      _ = closing(&shared.closed) => Err(error::closed()),
      result = cancel::unless_cancelled(waiting, pending) => result,
    };
    drop(shared);
    outcome
  };
  settle_later(home, id, op, move |env, ()| {
    // Closed or aborted before JS got here: nothing was taken from the backlog.
    if *closed.borrow() {
      return Err(error::closed());
    }
    if canceller.as_ref().is_some_and(|c| c.is_cancelled()) {
      return Err(cancel::aborted());
    }
    let Some(shared) = listener.upgrade() else {
      return Err(error::closed());
    };
    match accept_now(&shared) {
      Ok(fd) => {
        // Registered here, on the JS thread, inside the runtime.
        let stream = AsyncUnixStream::wrap(fd)?;
        let instance = stream.into_instance(env).map_err(internal)?;
        Ok(Settled::Value(Some(RawValue(instance.raw()))))
      }
      Err(Errno::EAGAIN) => {
        accept_later(depot, shared, id, canceller);
        Ok(Settled::Later)
      }
      Err(e) => Err(error::sys(e, "accept")),
    }
  });
}

/// A napi-rs failure (creating a threadsafe function, ref-counting it).
fn internal(e: napi::Error) -> error::Error {
  error::coded("ERR_INTERNAL", e.reason.clone())
}
