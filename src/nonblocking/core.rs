//! What the async classes are made of: a stream's socket with its readiness and the order
//! of its calls, its fd queues, a listener's socket, and the syscalls they make.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::BufferSlice;
use napi::Env;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};

use crate::error::{self, errno_of, Result};
use crate::lent::{Changed, Rest};
use crate::queue::{InboundQueue, OutboundQueue};
use crate::runtime::register;
use crate::scm_rights::{self, Received};
use crate::settle::{Deposit, Home};
use crate::socket as unix;
use crate::spare;
use crate::sync::lock;
use crate::turnstile::Turnstile;

thread_local! {
  // Where reads on the JS thread land before being copied into a Buffer of their size.
  static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// Runs `f` on a buffer of `size` bytes: the thread's scratch buffer when it is large
/// enough and not in use, a new one otherwise.
fn with_read_buffer<T>(size: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
  SCRATCH.with(|cell| {
    let mut scratch = cell.try_borrow_mut().ok();
    let mut owned;
    let buf: &mut [u8] = match scratch.as_deref_mut() {
      Some(scratch) if size <= scratch.len() => &mut scratch[..size],
      _ => {
        owned = vec![0u8; size];
        &mut owned
      }
    };
    f(buf)
  })
}

/// What `recv` put in a read buffer of `size` bytes, copied out (see
/// [`Shared::recv_copied`]).
fn copied_from(
  size: usize,
  recv: impl FnOnce(&mut [u8]) -> nix::Result<Received>,
) -> nix::Result<(Vec<u8>, Received)> {
  with_read_buffer(size, |buf| {
    let received = recv(buf)?;
    Ok((spare::copied(&buf[..received.bytes]), received))
  })
}

/// Where a read made at once put its bytes.
pub(crate) enum ReadNow<'env> {
  /// In the caller's scratch Buffer, this many.
  InScratch(usize),
  /// In a Buffer of their own (more than the scratch Buffer holds were asked for).
  Copied(BufferSlice<'env>),
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
pub(crate) fn release<T>(mut shared: Arc<T>) {
  // On the JS-thread runtime the futures run here and now.
  crate::runtime::run_woken();
  if !crate::runtime::runs_elsewhere() {
    return drop(shared);
  }
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
  pub(crate) outbound: Mutex<OutboundQueue>,
  pub(crate) inbound: Mutex<InboundQueue>,
  /// Fds read by a push reader and on their way to the JS thread, which adds them to
  /// `inbound`; they count against `maxQueuedFds` already.
  pub(crate) pending: AtomicUsize,
  /// Woken when the inbound queue gets room (a dequeue, a larger limit, a close).
  pub(crate) room: Notify,
  /// How many `wait_for_room` calls are under way: a dequeue, the call made per fd, wakes
  /// `room` only when something may wait on it.
  room_waiters: AtomicUsize,
  pub(crate) closed: AtomicBool,
  /// A push reader hands the fds of each chunk to JS with it (an `'fds'` listener owns
  /// them) instead of adding them to `inbound`.
  pub(crate) hand_fds: AtomicBool,
  /// The fds of a push reader's batches on their way to the JS thread: `close()` closes
  /// them at once, instead of when each batch arrives.
  in_flight: InFlight,
  /// The fds handed to JS with chunks it has not emitted yet (an `'fds'` listener gets
  /// them right before the chunk's `'data'`), one entry per chunk, oldest first. They stay
  /// the stream's until then, so that `close()` or a worker's teardown closes them.
  handed: Mutex<VecDeque<Handed>>,
}

/// Counts one `wait_for_room` until it ends or is dropped.
struct WaitingForRoom<'a>(&'a AtomicUsize);

impl Drop for WaitingForRoom<'_> {
  fn drop(&mut self) {
    self.0.fetch_sub(1, Ordering::SeqCst);
  }
}

/// A batch's deposit, reachable by both its delivery and the stream's `close()`: whichever
/// comes first takes it.
type Slot = Arc<Mutex<Option<Deposit>>>;

#[derive(Default)]
struct InFlight(Mutex<Vec<Slot>>);

impl std::fmt::Debug for InFlight {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "InFlight({})", lock(&self.0).len())
  }
}

impl Queues {
  pub(crate) fn inbound_full(&self) -> bool {
    self.fd_room() == 0
  }

  /// How many fds may still arrive before the inbound queue is at its bound.
  pub(crate) fn fd_room(&self) -> usize {
    let inbound = lock(&self.inbound);
    let held = inbound.len() + self.pending.load(Ordering::Acquire);
    inbound.limit().saturating_sub(held)
  }

  /// Waits until the inbound queue is below its bound: reading pauses at `maxQueuedFds`.
  pub(crate) async fn wait_for_room(&self) {
    // Counted before the check below (made under the inbound lock), and until this ends or
    // is dropped: a dequeue that comes after the check sees the count (see `dequeued`).
    self.room_waiters.fetch_add(1, Ordering::SeqCst);
    let _counted = WaitingForRoom(&self.room_waiters);
    loop {
      let room = self.room.notified();
      if !self.inbound_full() || self.closed.load(Ordering::Acquire) {
        return;
      }
      room.await;
    }
  }

  /// The oldest fd of the inbound queue (`Err`: the kernel dropped some there), after
  /// which a read waiting for room is woken.
  pub(crate) fn dequeue(&self) -> std::result::Result<Option<OwnedFd>, crate::queue::Truncated> {
    let fd = lock(&self.inbound).dequeue();
    // After the lock: a waiter counted itself before it checked for room under it.
    if self.room_waiters.load(Ordering::SeqCst) > 0 {
      self.room.notify_waiters();
    }
    fd
  }

  pub(crate) fn close(&self) {
    self.closed.store(true, Ordering::Release);
    lock(&self.outbound).clear();
    lock(&self.inbound).clear();
    lock(&self.handed).clear();
    let in_flight = std::mem::take(&mut *lock(&self.in_flight.0));
    // Dropping a deposit closes its fds (outside the list's lock).
    let deposits: Vec<Option<Deposit>> = in_flight.iter().map(|slot| lock(slot).take()).collect();
    drop(deposits);
    self.room.notify_waiters();
  }

  /// Holds the fds handed to JS with a chunk until JS emits it ([`Self::release_handed`]).
  /// `false` when the stream is closed: they are closed now, and the chunk goes nowhere.
  pub(crate) fn hold_handed(&self, handed: Handed) -> bool {
    // Checked under the lock, which `close()` takes after setting `closed`.
    let mut held = lock(&self.handed);
    if self.closed.load(Ordering::Acquire) {
      drop(held);
      drop(handed);
      return false;
    }
    held.push_back(handed);
    true
  }

  /// The chunk held with `count` fds starting with `first`, no longer held; with no fds
  /// (`count` 0: the kernel dropped them all), the oldest such chunk. Found by the fds
  /// rather than by position, so a chunk whose call into JS failed cannot shift the others
  /// (its fds stay held until `close()`).
  fn take_handed(&self, first: RawFd, count: usize) -> Option<Handed> {
    let mut held = lock(&self.handed);
    let at = held.iter().position(|handed| {
      handed.count() == count && (count == 0 || handed.first() == Some(first))
    })?;
    held.remove(at)
  }

  /// The fds held for the chunk with `count` fds starting with `first` become JS's;
  /// `false` when no such chunk is held (the stream closed, and closed them).
  pub(crate) fn release_handed(&self, first: RawFd, count: usize) -> bool {
    match self.take_handed(first, count) {
      Some(handed) => {
        for fd in handed.0.into_iter().flat_map(|(fds, _)| fds) {
          let _ = fd.into_raw_fd();
        }
        true
      }
      None => false,
    }
  }

  /// The fds held for the chunk with `count` fds starting with `first` join the inbound
  /// queue, each message's with a marker where the kernel dropped some, as if no
  /// `'fds'` listener had been there: JS's listeners went away before the chunk was
  /// emitted. `false` when the stream closed (and closed them).
  pub(crate) fn requeue_handed(&self, first: RawFd, count: usize) -> bool {
    let Some(handed) = self.take_handed(first, count) else {
      return false;
    };
    receive_parts(self, handed.0).is_ok()
  }
}

/// What one chunk brought, one `(fds, truncated)` per message, while its fds are handed to
/// JS's `'fds'` listeners.
#[derive(Debug)]
pub(crate) struct Handed(Arrived);

impl Handed {
  /// How many fds arrived.
  pub(crate) fn count(&self) -> usize {
    self.0.iter().map(|(fds, _)| fds.len()).sum()
  }

  /// The first fd, if any arrived.
  fn first(&self) -> Option<RawFd> {
    self.fds().next()
  }

  /// The fds, in order.
  pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
    self
      .0
      .iter()
      .flat_map(|(fds, _)| fds.iter().map(AsRawFd::as_raw_fd))
  }

  /// Whether the kernel dropped fds of any of its messages.
  pub(crate) fn truncated(&self) -> bool {
    self.0.iter().any(|(_, truncated)| *truncated)
  }
}

/// The fds that reads on tokio's threads brought, one `(fds, truncated)` per message, on
/// their way to the JS thread's inbound queue: deposited in that thread's home, so that a
/// teardown closes them (see `handoff`).
pub(crate) struct Arrival {
  /// The deposit, and the queues whose `close()` can take it too.
  deposit: Option<(Slot, Arc<Queues>)>,
  /// How many fds arrived.
  pub(crate) count: usize,
}

impl Drop for Arrival {
  /// A batch dropped undelivered (its reader stopped, or JS is gone) closes its fds now.
  fn drop(&mut self) {
    drop(self.take());
  }
}

pub(crate) type Arrived = Vec<(Vec<OwnedFd>, bool)>;

impl Arrival {
  /// Deposits what a batch brought in `home`, where `queues`' `close()` can reach it too.
  pub(crate) fn deposit(home: &Arc<Home>, queues: &Arc<Queues>, parts: Arrived) -> Self {
    let count = parts.iter().map(|(fds, _)| fds.len()).sum();
    let any = parts
      .iter()
      .any(|(fds, truncated)| *truncated || !fds.is_empty());
    let deposit = if any { Deposit::new(home, parts) } else { None };
    let deposit = deposit.and_then(|deposit| {
      // Checked under the list's lock, which `close()` takes after setting `closed`.
      let mut in_flight = lock(&queues.in_flight.0);
      if queues.closed.load(Ordering::Acquire) {
        drop(in_flight);
        // Closed already: nobody will take it, so its fds are closed now.
        return None;
      }
      let slot = Arc::new(Mutex::new(Some(deposit)));
      in_flight.push(Arc::clone(&slot));
      Some((slot, Arc::clone(queues)))
    });
    Self { deposit, count }
  }

  /// The batch's deposit, unless `close()` took it (and closed its fds) first.
  fn take(&mut self) -> Option<Deposit> {
    let (slot, queues) = self.deposit.take()?;
    lock(&queues.in_flight.0).retain(|other| !Arc::ptr_eq(other, &slot));
    let deposit = lock(&slot).take();
    deposit
  }

  /// The batch's fds, unless `close()` took them (and closed them) first.
  fn claim(mut self) -> Option<Arrived> {
    self.take().and_then(Deposit::claim::<Arrived>)
  }

  /// On the JS thread: the fds join the inbound queue, or are closed if the stream closed
  /// meanwhile (then the read fails with `ERR_SOCKET_CLOSED`).
  pub(crate) fn receive(self, queues: &Queues) -> Result<()> {
    let counted = self.count;
    let parts = self.claim();
    // Counted as pending until they are in the inbound queue, or the reader (on another
    // thread with the threaded driver) could see room that is not there and read one
    // message more than the bound allows; no longer pending once they are, in the same
    // stretch under the inbound lock, or a check for room between the two would count
    // them twice and wait for a dequeue that may never come.
    let mut inbound = lock(&queues.inbound);
    queues.pending.fetch_sub(counted, Ordering::AcqRel);
    receive_locked(queues, &mut inbound, parts.unwrap_or_default())
  }

  /// On the JS thread: what each message brought, in order (its fds, and whether the
  /// kernel dropped some: `MSG_CTRUNC`); `None` when no fd arrived and none was dropped.
  pub(crate) fn hand_over(self) -> Option<Handed> {
    self.claim().map(Handed)
  }
}

/// On the JS thread: what reads brought joins the inbound queue, or is closed (and the
/// read fails with `ERR_SOCKET_CLOSED`) if the stream closed meanwhile.
pub(crate) fn receive_parts(
  queues: &Queues,
  parts: impl IntoIterator<Item = (Vec<OwnedFd>, bool)>,
) -> Result<()> {
  receive_locked(queues, &mut lock(&queues.inbound), parts)
}

/// [`receive_parts`] with the inbound lock held.
fn receive_locked(
  queues: &Queues,
  inbound: &mut InboundQueue,
  parts: impl IntoIterator<Item = (Vec<OwnedFd>, bool)>,
) -> Result<()> {
  // Checked under the lock, which `close()` takes after setting `closed`.
  if queues.closed.load(Ordering::Acquire) {
    return Err(error::closed());
  }
  for (fds, truncated) in parts {
    inbound.receive(fds, truncated);
  }
  Ok(())
}

/// Whether the reactor recorded `io` readable (or closed for reading) since a read last
/// found it empty.
pub(crate) fn readiness_recorded(io: &AsyncFd<Registered>) -> bool {
  io.try_io(Interest::READABLE, |_| Ok(())).is_ok()
}

/// One `recvmsg` of `io`'s socket if the reactor recorded it readable, `EAGAIN` otherwise;
/// the readiness is cleared when the socket turns out empty.
fn recv_if_recorded(io: &AsyncFd<Registered>, buf: &mut [u8]) -> nix::Result<Received> {
  io.try_io(Interest::READABLE, |fd| {
    scm_rights::recv_with_fds(fd.as_fd(), buf, true).map_err(io::Error::from)
  })
  .map_err(|e| match e.kind() {
    io::ErrorKind::WouldBlock => Errno::EAGAIN,
    _ => errno_of(&e),
  })
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
/// operations keep waiting, and it goes once `keep_for` operations in a row found the
/// socket ready without waiting (`release_if_idle`).
///
/// Reads register the socket's own fd, and let it go after [`keep_readable`] reads in a
/// row that did not wait.
/// Writes register a duplicate, because epoll takes an fd number once and the two
/// directions come and go independently. Making and dropping it costs four syscalls
/// (`fcntl`, `epoll_ctl` twice, `close`), and a stream that writes faster than its peer
/// reads waits every few writes: so it stays for [`KEEP_WRITABLE`] writes that did not
/// wait, or until a sweep finds the stream idle ([`Shared::sweep_writable`]). Meanwhile its events are few: the kernel reports room to the reactor only while
/// less than a quarter of the send buffer is in use (`unix_writable`).
pub(crate) struct Watch {
  pub(crate) interest: Interest,
  pub(crate) duplicate: bool,
  pub(crate) current: Mutex<Option<Arc<AsyncFd<Registered>>>>,
  /// Whether `current` holds a registration: lets the ready path skip the lock.
  pub(crate) registered: AtomicBool,
  /// Operations that found the fd ready without waiting since the last one that waited.
  pub(crate) ready_since_wait: AtomicU32,
  /// How many of those let the registration go.
  pub(crate) keep_for: u32,
  /// Registrations acquired so far (made or reused): a sweep that sees this unchanged for
  /// a whole period knows nothing waited meanwhile.
  waits: AtomicU64,
  /// A sweep ([`Shared::sweep_writable`]) watches this registration.
  sweeping: AtomicBool,
}

impl Watch {
  pub(crate) fn new(interest: Interest, duplicate: bool, keep_for: u32) -> Self {
    Self {
      interest,
      duplicate,
      keep_for,
      current: Mutex::new(None),
      registered: AtomicBool::new(false),
      ready_since_wait: AtomicU32::new(0),
      waits: AtomicU64::new(0),
      sweeping: AtomicBool::new(false),
    }
  }

  /// The registration, made now if there is none. Hold it while waiting. It must be
  /// called on tokio's workers (inside a future), where the reactor is reachable.
  pub(crate) fn acquire(
    &self,
    fd: &Arc<OwnedFd>,
  ) -> std::result::Result<Arc<AsyncFd<Registered>>, Acquire> {
    self.ready_since_wait.store(0, Ordering::Relaxed);
    self.waits.fetch_add(1, Ordering::Relaxed);
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

  /// Whether the fd is registered with the reactor now (its events reach it).
  pub(crate) fn is_registered(&self) -> bool {
    self.registered.load(Ordering::Acquire)
  }

  /// The socket was just found ready without waiting: after `keep_for` such operations in
  /// a row, drops the registration if no operation holds it.
  pub(crate) fn release_if_idle(&self) {
    if !self.registered.load(Ordering::Acquire) {
      return;
    }
    if self.ready_since_wait.fetch_add(1, Ordering::Relaxed) + 1 >= self.keep_for {
      self.release_unused();
    }
  }

  /// Drops the registration if no operation holds it (under the lock, so that a new
  /// registration of the same fd cannot come first). `true` when there is none left.
  fn release_unused(&self) -> bool {
    if !self.registered.load(Ordering::Acquire) {
      return true;
    }
    let mut current = lock(&self.current);
    match current.as_ref() {
      Some(io) if Arc::strong_count(io) > 1 => false,
      _ => {
        self.registered.store(false, Ordering::Release);
        drop(current.take());
        true
      }
    }
  }
}

/// How many writes in a row that did not wait let a stream's write registration go. In
/// 256 MiB sent in 64 KiB writes to a slower reader, 8 left 51 `epoll_ctl` calls of
/// 18,600 (measured on this machine, both processes on one CPU).
pub(crate) const KEEP_WRITABLE: u32 = 8;

/// How many reads in a row that did not wait let a stream's read registration go.
///
/// On the threaded runtime, 1: a registered socket wakes the reactor thread for every
/// message that arrives, even while the JS thread reads them directly. On the JS-thread
/// runtime those arrivals cost at most one turn of the reactor per loop iteration (the
/// loop reports its epoll fd once, however many came), while a registration that goes
/// and comes costs two `epoll_ctl` calls. With both ends of a round trip on one CPU, the
/// peer's answer is often there before the next read: 1 made 0.33 `epoll_ctl` calls per
/// round trip on this machine, 8 makes 0.05 and took the AsyncUnixStream round trip from
/// 18.5 to 17.6 µs (medians of four runs each, both processes under `taskset -c 0`);
/// 1-fd streaming made as many `epoll_ctl` calls either way.
fn keep_readable() -> u32 {
  if crate::runtime::runs_elsewhere() {
    1
  } else {
    8
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
  pub(crate) writable: Watch,
  pub(crate) closed: watch::Sender<bool>,
  pub(crate) reads: Arc<Turnstile>,
  pub(crate) writes: Arc<Turnstile>,
  /// Bytes the writes that had to wait for room have sent so far: how an idle timer tells
  /// a long write that goes on from one that is stuck.
  pub(crate) sent_waiting: AtomicU64,
  /// The last read that tried the socket on the JS thread found it empty: its reads wait
  /// for their peer (a round trip's), and the next may wait for the reactor's word instead
  /// of trying first ([`Shared::nothing_recorded`]).
  pub(crate) reads_wait: AtomicBool,
}

impl Shared {
  pub(crate) fn new(fd: OwnedFd) -> Arc<Self> {
    Arc::new(Self {
      fd: Arc::new(fd),
      readable: Watch::new(Interest::READABLE, false, keep_readable()),
      writable: Watch::new(Interest::WRITABLE, true, KEEP_WRITABLE),
      closed: watch::Sender::new(false),
      reads: Turnstile::new(),
      writes: Turnstile::new(),
      sent_waiting: AtomicU64::new(0),
      reads_wait: AtomicBool::new(false),
    })
  }

  /// After a write that waited: lets the write registration (and its duplicate fd) go once
  /// a sweep finds that no write waited since the one before, within two sweep periods of
  /// the last wait. A stream that stops writing would keep it for good otherwise (only
  /// writes that do not wait let it go).
  pub(crate) fn sweep_writable(self: &Arc<Self>) {
    let watch = &self.writable;
    if !watch.is_registered() || watch.sweeping.swap(true, Ordering::AcqRel) {
      return;
    }
    let shared = Arc::downgrade(self);
    let mut seen = watch.waits.load(Ordering::Relaxed);
    crate::runtime::every_while_idle(Box::new(move || {
      let Some(shared) = shared.upgrade() else {
        return true;
      };
      let watch = &shared.writable;
      let waits = watch.waits.load(Ordering::Relaxed);
      if waits != seen || !watch.release_unused() {
        seen = waits;
        return false;
      }
      watch.sweeping.store(false, Ordering::Release);
      // Registered again meanwhile (a write on another thread), and no other sweep took
      // it on: this one goes on.
      if watch.is_registered() && !watch.sweeping.swap(true, Ordering::AcqRel) {
        seen = watch.waits.load(Ordering::Relaxed);
        return false;
      }
      true
    }));
  }

  /// Runs `op` until the stream is closed. A close settles the operation with
  /// `ERR_SOCKET_CLOSED` whatever `op` was about to report.
  pub(crate) async fn unless_closed<T>(
    &self,
    op: impl std::future::Future<Output = Result<T>>,
  ) -> Result<T> {
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
  /// A read that fits in `scratch` (the caller's Buffer) receives into it, and JS copies
  /// the bytes out (a small Buffer made in JS lives in V8's heap; one made here needs
  /// memory of its own, a good third of a 1-byte read's time). A larger one is copied
  /// into a Buffer that V8 owns (no external buffer with a finalizer per read).
  pub(crate) fn try_read<'env>(
    &self,
    env: &'env Env,
    size: usize,
    scratch: &mut [u8],
  ) -> Result<Option<(ReadNow<'env>, Received)>> {
    // `None` means empty (EAGAIN) and nothing else: a read that found its socket empty
    // may wait for the next event before it tries again.
    let recv = |buf: &mut [u8]| loop {
      match self.recv_now(buf) {
        Err(Errno::EINTR) => continue,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(error::sys(e, "recvmsg")),
        Ok(received) => return Ok(Some(received)),
      }
    };
    if let Some(buf) = scratch.get_mut(..size) {
      return Ok(recv(buf)?.map(|received| (ReadNow::InScratch(received.bytes), received)));
    }
    with_read_buffer(size, |buf| {
      let Some(received) = recv(buf)? else {
        return Ok(None);
      };
      let bytes = BufferSlice::copy_from(env, &buf[..received.bytes])
        .map_err(|e| error::coded("ERR_INTERNAL", e.reason.clone()))?;
      Ok(Some((ReadNow::Copied(bytes), received)))
    })
  }

  /// One `recvmsg` of at most `size` bytes into a read buffer, the bytes copied out: an
  /// empty socket costs no allocation that outlives the call.
  pub(crate) fn recv_copied(&self, size: usize) -> nix::Result<(Vec<u8>, Received)> {
    copied_from(size, |buf| {
      scm_rights::recv_with_fds(self.fd.as_fd(), buf, true)
    })
  }

  /// The socket's read registration, while it has one.
  fn read_registration(&self) -> Option<Arc<AsyncFd<Registered>>> {
    self
      .readable
      .registered
      .load(Ordering::Acquire)
      .then(|| lock(&self.readable.current).clone())
      .flatten()
  }

  /// Whether the socket is registered for reading and the reactor has recorded no
  /// readiness since a read last found it empty: then anything in it came after the
  /// reactor's last turn, and the loop's next event brings it (see
  /// `runtime::tried_after_turn`).
  pub(crate) fn nothing_recorded(&self) -> bool {
    self.readable.is_registered()
      && lock(&self.readable.current)
        .as_deref()
        .is_some_and(|io| !readiness_recorded(io))
  }

  /// One `recvmsg` on the JS thread. While the socket is registered, readiness the reactor
  /// recorded before this call is cleared when the socket turns out empty, so the read
  /// that waits next does not try once more before the next event (only the readiness it
  /// saw: an event recorded meanwhile stays).
  fn recv_now(&self, buf: &mut [u8]) -> nix::Result<Received> {
    match self.read_registration() {
      Some(io) if readiness_recorded(&io) => recv_if_recorded(&io, buf),
      _ => scm_rights::recv_with_fds(self.fd.as_fd(), buf, true),
    }
  }

  /// [`Shared::recv_copied`] for a parked read tried right after a turn of the reactor
  /// (`runtime::tried_after_turn`): with no readiness recorded, `EAGAIN` with no syscall.
  pub(crate) fn recv_copied_if_recorded(&self, size: usize) -> nix::Result<(Vec<u8>, Received)> {
    let Some(io) = self.read_registration() else {
      return self.recv_copied(size);
    };
    // Checked before a read buffer is set up (a large read's is allocated per call).
    if !readiness_recorded(&io) {
      return Err(Errno::EAGAIN);
    }
    copied_from(size, |buf| recv_if_recorded(&io, buf))
  }

  /// One `recvmsg` of at most `size` bytes, after the inbound queue has room. `try_first`:
  /// try before waiting for readiness (the read starts with an event the reactor has not
  /// recorded yet).
  pub(crate) async fn read(
    &self,
    queues: &Queues,
    size: usize,
    try_first: bool,
  ) -> Result<(Vec<u8>, Received)> {
    // Allocated once data is ready (inside the closure), so a waiting read holds no buffer.
    let mut data = Vec::new();
    queues.wait_for_room().await;
    if try_first {
      loop {
        match self.recv_copied(size) {
          Ok(read) => return Ok(read),
          Err(Errno::EINTR) => continue,
          // Waited for below, holding no buffer.
          Err(Errno::EAGAIN) => {}
          Err(e) => return Err(error::sys(e, "recvmsg")),
        }
        // Tried as a parked read: tried again by the loop, unless it becomes a task.
        if !crate::runtime::park(false) {
          break;
        }
        crate::runtime::until_tried_again().await;
        if !crate::runtime::polled_directly() {
          break;
        }
      }
    }
    let io = self
      .readable
      .acquire(&self.fd)
      .map_err(error::Error::from)?;
    loop {
      let result = io
        .async_io(Interest::READABLE, |fd| {
          spare::recv_first(fd.as_fd(), &mut data, size).map_err(io::Error::from)
        })
        .await;
      match result {
        Ok(received) => {
          // A small message must not pin a large allocation in its Buffer (up to
          // COPIED_MAX it is copied into V8's memory anyway).
          if data.len() > spare::COPIED_MAX && data.len() * 2 < size {
            data.shrink_to_fit();
          }
          return Ok((data, received));
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) => {
          spare::release_if_empty(&mut data);
          return Err(error::sys(errno_of(&e), "recvmsg"));
        }
      }
    }
  }

  /// Writes bytes `from..to` of `data`; `fds` ride on the first `sendmsg` and are closed
  /// once it succeeded (the kernel holds its own references) or the write failed.
  pub(crate) async fn write_all(
    &self,
    data: &mut Rest,
    (from, to): (usize, usize),
    mut fds: Vec<OwnedFd>,
  ) -> Result<()> {
    let mut sent = from;
    // Kept from one `sendmsg` to the next: once the socket was full, the next try waits
    // for room first.
    let mut registered = None;
    while sent < to {
      let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
      let n = self
        .send_when_ready(&mut registered, |fd| {
          data.with(sent, to, |iov| {
            scm_rights::send_vectored_with_fds(fd, iov, &raw, true).map_err(io::Error::from)
          })
        })
        .await?;
      scm_rights::close_all(std::mem::take(&mut fds));
      sent += n;
      self.sent_waiting.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
  }

  /// Writes messages `first..last` of a write of `len` bytes (each one that
  /// [`scm_rights::fits_run`]), the rest of which `data` holds from the start of `first`,
  /// with one `sendmmsg` once the socket has room, and closes the fds of those that went;
  /// returns how many did (0: none could go in a run, and the first must go alone).
  pub(crate) async fn write_run(
    &self,
    data: &mut Rest,
    messages: &mut [Message],
    (first, last): (usize, usize),
    len: usize,
  ) -> Result<usize> {
    if first >= last {
      return Ok(0);
    }
    let from = messages[first].start;
    let ends: Vec<usize> = (first..last)
      .map(|i| message_end(messages, i, len))
      .collect();
    let to = ends[ends.len() - 1];
    let run = &mut messages[first..last];
    let count = self
      .send_when_ready(&mut None, |fd| {
        data.with(from, to, |iov| {
          let slices: Vec<&[u8]> = iov.iter().map(|slice| &**slice).collect();
          let covered: usize = slices.iter().map(|slice| slice.len()).sum();
          // The messages the slices hold whole (all of them, unless a Buffer changed).
          let outgoing: Vec<scm_rights::Outgoing<'_>> = run
            .iter()
            .zip(&ends)
            .map(|(m, &end)| (m.start - from, end - from, &m.fds[..]))
            .take_while(|&(_, end, _)| end <= covered)
            .collect();
          if outgoing.len() < 2 {
            return Ok(0);
          }
          let mut gather = scm_rights::Gather::new(&slices);
          scm_rights::send_many(fd, &mut gather, &outgoing, &mut Vec::new())
            .map_err(io::Error::from)
        })
      })
      .await?;
    let mut gone = Vec::new();
    for message in &mut run[..count] {
      gone.append(&mut message.fds);
    }
    scm_rights::close_all(gone);
    if let Some(end) = count.checked_sub(1).map(|last| ends[last]) {
      self
        .sent_waiting
        .fetch_add((end - from) as u64, Ordering::Relaxed);
    }
    Ok(count)
  }

  /// Runs `send` until it succeeds or fails for good. It tries at once first (an earlier
  /// write may have made room by now) and registers for writability only when the socket
  /// is full (`registered` then holds the registration, for the caller's next send). If
  /// no fd is left for that registration (the process is at its open-file limit), it
  /// polls instead, backing off up to 16 ms. A transient shortage (`ETOOMANYREFS` until
  /// the peer takes fds in flight, `ENOBUFS`, `ENOMEM`) has no readiness to wait for: the
  /// send is retried (its fds kept), backing off up to 64 ms.
  async fn send_when_ready<T>(
    &self,
    registered: &mut Option<Arc<AsyncFd<Registered>>>,
    mut send: impl FnMut(BorrowedFd<'_>) -> io::Result<T>,
  ) -> Result<T> {
    let mut backoff = Duration::from_millis(1);
    loop {
      let result = match &registered {
        Some(io) => io.async_io(Interest::WRITABLE, |fd| send(fd.as_fd())).await,
        None => send(self.fd.as_fd()),
      };
      match result {
        Ok(value) => return Ok(value),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && registered.is_none() => {
          match self.writable.acquire(&self.fd) {
            Ok(io) => *registered = Some(io),
            Err(Acquire::NoFdLeft) => {
              crate::runtime::sleep(backoff).await;
              backoff = (backoff * 2).min(Duration::from_millis(16));
            }
            Err(Acquire::Failed(e)) => return Err(e),
          }
        }
        Err(e) if scm_rights::is_transient(errno_of(&e)) => {
          crate::runtime::sleep(backoff).await;
          backoff = (backoff * 2).min(Duration::from_millis(64));
        }
        Err(e) => {
          return Err(Changed::of(&e).unwrap_or_else(|| error::sys(errno_of(&e), "sendmsg")))
        }
      }
    }
  }
}

/// Part of one write that goes out as its own `sendmsg`: the bytes from `start` to the
/// next message's start, with `fds` on the first of them.
pub(crate) struct Message {
  pub(crate) start: usize,
  pub(crate) fds: Vec<OwnedFd>,
}

/// Where message `i` of a write of `len` bytes ends.
pub(crate) fn message_end(messages: &[Message], i: usize, len: usize) -> usize {
  messages.get(i + 1).map_or(len, |m| m.start)
}

pub(crate) struct ListenerShared {
  pub(crate) io: AsyncFd<OwnedFd>,
  pub(crate) closed: watch::Sender<bool>,
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
