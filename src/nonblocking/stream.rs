//! `AsyncUnixStream`: a connected Unix stream socket with Promise-returning I/O. Methods
//! take `&self` (napi refuses `&mut self` while an async call on the object is pending);
//! each call draws its place in line (and its outbound fds) synchronously, in call order.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{Function, Uint8ArraySlice};
use napi::Env;
use napi_derive::napi;
use nix::errno::Errno;
use nix::sys::socket::{self, Shutdown};

use crate::cancel::{self, Canceller};
use crate::credentials::{self, PeerCredentials};
use crate::error::{self, internal, rejection, Result};
use crate::handle::Handle;
use crate::js::{byte_count, shutdown_how};
use crate::lent::Rest;
use crate::nonblocking::core::{
  message_end, receive_parts, release, Message, Queues, ReadNow, Shared,
};
use crate::nonblocking::reader::{ReadArgs, Reader};
use crate::queue::OutboundQueue;
use crate::runtime::Waits;
use crate::scm_rights::{self, Received};
use crate::settle::{self, number, settle_later_keeping, Home, Settled};
use crate::socket::{self as unix, Adopt, Kind};
use crate::sync::lock;
use crate::turnstile::{Ticket, Undelivered};

/// Largest `read(size)`.
const MAX_READ_SIZE: u32 = 1 << 30;

/// A connected Unix stream socket driven by tokio.
#[napi(js_name = "NativeAsyncUnixStream")]
pub struct AsyncUnixStream {
  core: Arc<StreamCore>,
}

/// Settles operation `id` as failed with `e` (a call on a closed stream, say), and says
/// "pending" to the caller: the Promise rejects through the normal path.
pub(crate) fn fail<T>(env: &Env, id: f64, e: error::Error) -> napi::Result<Option<T>> {
  settle::home(env)
    .map_err(rejection)?
    .settle(id, Box::new(move |_| Err(e)));
  Ok(None)
}

/// A stream's core as JS holds it (the argument of the calls in `fast`). Closing stays
/// with the stream object: the handle only keeps the memory alive, never the socket.
pub type StreamHandle = Handle<Arc<StreamCore>>;

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

  /// `ERR_SOCKET_CLOSED` once closed: the check of the calls made per fd, cheaper than
  /// [`Self::shared`] (`close()` sets the flag when it takes the socket).
  fn check_open(&self) -> Result<()> {
    if self.queues.closed.load(Ordering::Acquire) {
      return Err(error::closed());
    }
    Ok(())
  }

  /// The outbound queue: fds that ride on the next write.
  pub(crate) fn outbound(&self) -> &Mutex<OutboundQueue> {
    &self.queues.outbound
  }

  /// Sends the bytes of `data`, a write's Buffers in order, as `messages` (each from its
  /// `start` to the next one's, with its fds on its first byte; starts ascending, the
  /// first at 0), after every earlier write. The Buffers are never joined: a `sendmsg`
  /// gathers the slices of its message from them.
  ///
  /// When no earlier write is pending, the messages go out at once on the calling thread,
  /// one `sendmsg` each, until the socket is full; the byte count comes back directly if
  /// everything went, and otherwise a Promise sends the rest in order, from the caller's
  /// Buffers on the JS-thread runtime (copied on the threaded one: see [`Rest`]). With
  /// `defer` everything goes later, once the event loop has turned (see
  /// [`StreamCore::read`]).
  pub(crate) fn send_messages(
    env: &Env,
    shared: Arc<Shared>,
    data: &[Uint8ArraySlice<'_>],
    mut messages: Vec<Message>,
    id: f64,
    defer: bool,
  ) -> napi::Result<Option<f64>> {
    // The Buffers' bytes, with no allocation for a single Buffer.
    let one: [&[u8]; 1];
    let many: Vec<&[u8]>;
    let parts: &[&[u8]] = match data {
      [only] => {
        one = [&only[..]];
        &one
      }
      _ => {
        many = data.iter().map(|part| &part[..]).collect();
        &many
      }
    };
    let len = parts.iter().map(|part| part.len()).sum();
    let mut gather = scm_rights::Gather::new(parts);
    // The slices of one `sendmsg` of several Buffers (reused from message to message).
    let mut iov = Vec::new();
    let mut sent = 0;
    let mut next = 0;
    // Queued behind an earlier write (whose outcome JS has not had yet): it starts in the
    // drive that serves that one, with every other write queued meanwhile.
    let queued = !shared.writes.is_idle();
    if !queued && !defer {
      // The fds that went out, closed together after the loop: the duplicates of a batch
      // of messages usually hold neighbouring numbers, so one `close_range` closes them.
      let mut gone = Vec::new();
      while next < messages.len() {
        let end = message_end(&messages, next, len);
        if sent == end {
          next += 1;
          continue;
        }
        // A run of short messages goes in one `sendmmsg`, each whole; a run cut short
        // leaves the rest to the asynchronous part below, which reports why.
        if let Some(went) = send_run(&shared, &mut gather, &messages, (next, sent, len), &mut iov) {
          match went {
            Ok((0, _)) => break,
            Ok((count, whole)) => {
              for message in &mut messages[next..next + count] {
                gone.append(&mut message.fds);
              }
              next += count;
              sent = message_end(&messages, next - 1, len);
              if whole {
                continue;
              }
              break;
            }
            Err(Errno::EAGAIN | Errno::EINTR) => break,
            Err(e) if scm_rights::is_transient(e) => break,
            Err(e) => return fail(env, id, error::sys(e, "sendmsg")),
          }
        }
        // The fds' numbers, on the stack up to what one message may carry (more are sent
        // as they are, for the kernel to refuse).
        let fds = &messages[next].fds;
        let mut stack = [0; scm_rights::SCM_MAX_FD];
        let heap: Vec<_>;
        let raw = match stack.get_mut(..fds.len()) {
          Some(raw) => {
            for (slot, fd) in raw.iter_mut().zip(fds) {
              *slot = fd.as_raw_fd();
            }
            &*raw
          }
          None => {
            heap = fds.iter().map(AsRawFd::as_raw_fd).collect();
            &heap
          }
        };
        match scm_rights::send_range(shared.fd.as_fd(), &mut gather, (sent, end), raw, &mut iov) {
          Ok(n) => {
            // The fds went with these bytes; the kernel holds its own references. (The
            // first message's list is taken over whole: no copy, no allocation.)
            if gone.is_empty() {
              std::mem::swap(&mut gone, &mut messages[next].fds);
            } else {
              gone.append(&mut messages[next].fds);
            }
            sent += n;
          }
          Err(Errno::EAGAIN | Errno::EINTR) => break,
          // Waited out (with the fds kept) by the asynchronous rest below.
          Err(e) if scm_rights::is_transient(e) => break,
          Err(e) => return fail(env, id, error::sys(e, "sendmsg")),
        }
      }
      scm_rights::close_all(gone);
      if next == messages.len() {
        shared.writable.release_if_idle();
        return Ok(Some(byte_count(len)));
      }
    }
    let home = settle::home(env).map_err(rejection)?;
    let mut data = Rest::of(env, data, sent);
    let mut rest: Vec<Message> = messages
      .drain(next..)
      .map(|m| Message {
        start: m.start.saturating_sub(sent),
        fds: m.fds,
      })
      .collect();
    let ticket = shared.writes.ticket();
    let undelivered = shared.writes.undelivered();
    let op = async move {
      let outcome = shared
        .unless_closed(async {
          ticket.turn().await;
          let total = len - sent;
          let mut written = Ok(());
          let mut i = 0;
          while i < rest.len() {
            // A run of short messages goes in one `sendmmsg`, as above.
            let last = run_end(&rest, i, total);
            if last - i > 1 {
              match shared
                .write_run(&mut data, &mut rest, (i, last), total)
                .await
              {
                Ok(0) => {}
                Ok(count) => {
                  i += count;
                  continue;
                }
                Err(e) => {
                  written = Err(e);
                  break;
                }
              }
            }
            let end = message_end(&rest, i, total);
            let fds = std::mem::take(&mut rest[i].fds);
            written = shared.write_all(&mut data, (rest[i].start, end), fds).await;
            if written.is_err() {
              break;
            }
            i += 1;
          }
          // Failed or not, a write that waited leaves its registration to the sweep.
          shared.sweep_writable();
          written?;
          // Given up once the outcome is queued for JS: the next write's settles after it.
          Ok((byte_count(len), ticket))
        })
        .await;
      drop(shared);
      outcome
    };
    let task = settle::settling_in_line(home, id, op, number, undelivered);
    crate::runtime::spawn_operation(task, Waits { defer, queued });
    Ok(None)
  }

  /// Duplicates `fd` (close-on-exec) into the outbound queue; it rides on the next
  /// `write` called after this.
  pub(crate) fn enqueue(&self, fd: i32) -> Result<()> {
    self.check_open()?;
    let mut outbound = lock(&self.queues.outbound);
    if outbound.is_full() {
      return Err(error::outbound_full());
    }
    let duplicate = scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
    outbound
      .enqueue(duplicate)
      .map_err(|_| error::outbound_full())
  }

  /// The fds handed to JS with a chunk (`count` of them, the first `first`), held until
  /// JS emits that chunk, are JS's from now on; `false` if the stream closed them.
  pub(crate) fn release_handed(&self, first: i32, count: u32) -> bool {
    self.queues.release_handed(first, count as usize)
  }

  /// The oldest received fd, now the caller's to close; `null` when none is waiting.
  pub(crate) fn dequeue(&self) -> Result<Option<i32>> {
    self.check_open()?;
    match self.queues.dequeue() {
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
  /// in a resolved Promise), as libuv reads ready sockets on the loop thread: in `scratch`
  /// (the TypeScript layer's Buffer, which it copies them out of) when `size` fits. (On
  /// the JS-thread runtime, a stream whose last read found it empty does not look first
  /// while the reactor has recorded nothing for it: see `Shared::nothing_recorded`.)
  ///
  /// Otherwise it returns `null` and settles operation `id` later; `canceller` (from a JS
  /// `AbortSignal`) can cancel it until it has read anything. `defer` makes it settle later
  /// whatever is there: the JS thread has completed many operations at once since its
  /// event loop last turned, and the loop must get a turn.
  pub(crate) fn read<'env>(
    &self,
    env: &'env Env,
    size: u32,
    id: f64,
    canceller: Option<Arc<Canceller>>,
    scratch: &mut [u8],
    defer: bool,
  ) -> napi::Result<Option<ReadNow<'env>>> {
    if size == 0 || size > MAX_READ_SIZE {
      return Err(rejection(error::out_of_range("size", size)));
    }
    let held = lock(&self.shared);
    let Some(shared) = held.as_ref() else {
      drop(held);
      return fail(env, id, error::closed());
    };
    // Whether this read found the socket empty while it is registered with this thread's
    // reactor: then it can do nothing before the next event, and starts with it
    // (spawn_after_event). A read with a signal starts at once: an abort must reach it.
    let mut after_event = false;
    // Queued behind an earlier read (whose outcome JS has not had yet): it starts in the
    // drive that serves that one, with every other read queued meanwhile.
    let idle = shared.reads.is_idle();
    let queued = !idle && canceller.is_none();
    // A stream whose reads find it empty (their peer answers each) parks the next one
    // without trying it when the reactor has recorded nothing since: the loop tries it
    // once the reactor says, or at its next event (see `runtime::tried_after_turn`).
    let at_once = !defer && idle && !self.queues.inbound_full();
    let guessed = at_once
      && canceller.is_none()
      && shared.reads_wait.load(Ordering::Relaxed)
      && !crate::runtime::runs_elsewhere()
      && shared.nothing_recorded();
    if guessed {
      after_event = true;
    } else if at_once {
      // Tried with the socket borrowed under its lock (held by nothing else on this path:
      // `close()` runs on this thread), which spares a reference count per read.
      match shared.try_read(env, size as usize, scratch) {
        Ok(Some((data, received))) => {
          shared.readable.release_if_idle();
          shared.reads_wait.store(false, Ordering::Relaxed);
          drop(held);
          if !received.fds.is_empty() || received.truncated {
            lock(&self.queues.inbound).receive(received.fds, received.truncated);
          }
          return Ok(Some(data));
        }
        Ok(None) => {
          shared.reads_wait.store(true, Ordering::Relaxed);
          after_event = canceller.is_none()
            && shared.readable.is_registered()
            && !crate::runtime::runs_elsewhere()
        }
        Err(e) => {
          drop(held);
          return fail(env, id, e);
        }
      }
    }
    let read = PendingRead {
      shared: Arc::clone(shared),
      queues: Arc::clone(&self.queues),
      home: settle::home(env).map_err(rejection)?,
      id,
      size: size as usize,
      ticket: shared.reads.ticket(),
      undelivered: shared.reads.undelivered(),
      guessed,
    };
    drop(held);
    if after_event {
      crate::runtime::park_direct(Box::new(read));
    } else {
      crate::runtime::spawn_operation(read.task(canceller, false), Waits { defer, queued });
    }
    Ok(None)
  }

  /// Writes every byte of `data`, after every earlier `write`; the fds queued when this
  /// was called ride on its first `sendmsg`. Resolves with the byte count.
  ///
  /// When no earlier write is pending, the first `sendmsg` happens at once on the calling
  /// thread; if it wrote everything the byte count comes back directly (the TypeScript
  /// layer wraps it in a resolved Promise), and otherwise the rest goes on asynchronously.
  /// `defer`: it all goes once the event loop has turned (see [`StreamCore::read`]).
  pub(crate) fn write(
    &self,
    env: &Env,
    data: Uint8ArraySlice<'_>,
    id: f64,
    defer: bool,
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
    Self::send_messages(
      env,
      shared,
      std::slice::from_ref(&data),
      vec![message],
      id,
      defer,
    )
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
    unix::adopt(fd, Adopt::Connected(Kind::Stream)).and_then(Self::wrap)
  }

  /// This stream's handle for the functions in `fast`.
  #[napi(getter, ts_return_type = "ExternalObject<'StreamCore'>")]
  pub fn handle(&self) -> StreamHandle {
    Handle(self.core())
  }

  /// The socket's fd, or -1 once closed.
  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    lock(&self.shared).as_ref().map_or(-1, |s| s.fd.as_raw_fd())
  }

  /// How many bytes the writes that had to wait for room have sent so far (it grows while
  /// one goes on; `FdSocket`'s idle timer reads it).
  #[napi]
  pub fn waiting_writes_progress(&self) -> f64 {
    lock(&self.shared)
      .as_ref()
      .map_or(0.0, |s| s.sent_waiting.load(Ordering::Relaxed) as f64)
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
    let home = settle::home(env).map_err(rejection)?;
    let ticket = shared.writes.ticket();
    let undelivered = shared.writes.undelivered();
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
    settle_later_keeping(home, id, op, |_, ()| Ok(Settled::Value(None)), undelivered);
    Ok(())
  }

  /// Starts push delivery: `callback(chunk, handed, error, truncated)` for every batch
  /// read, then `callback(null, null, null, false)` at end of stream. A small
  /// chunk comes as its byte count, in the scratch Buffer of copy `copy` of the JS layer
  /// (the number `initSettlements` gave it), for the callback to copy out first thing.
  /// `handed`: the fds handed over with the chunk, or `null`: a lone one as its number,
  /// two or more as minus their count, their numbers in the scratch area of copy `copy`
  /// (past its first 4096 bytes, 4 bytes each in native order), none (all lost to
  /// truncation) as an empty array, and more than the area holds as an array.
  /// Reading pauses at `maxQueuedFds` (fds handed to JS do not count).
  #[napi(
    ts_args_type = "callback: (chunk: Buffer | number | null, handed: number[] | number | null, error: string | null, truncated: boolean) => void, copy: number"
  )]
  pub fn start_reading(
    &self,
    env: &Env,
    callback: Function<'_, ReadArgs, ()>,
    copy: u32,
  ) -> Result<()> {
    let shared = self.shared()?;
    let mut reader = lock(&self.reader);
    if reader.is_none() {
      let started = Reader::start(
        env,
        shared,
        Arc::clone(&self.queues),
        callback,
        copy as usize,
      );
      *reader = Some(started.map_err(internal)?);
    }
    Ok(())
  }

  /// Whether push delivery hands each chunk's fds to JS with it (`true`: JS has `'fds'`
  /// listeners, which own them) or adds them to the inbound queue for `dequeue()`.
  #[napi]
  pub fn set_handing_fds(&self, handing: bool) {
    self.queues.hand_fds.store(handing, Ordering::Release);
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

  /// The fds handed to JS with a chunk not yet emitted (`count` of them, the first
  /// `first`) join the inbound queue for `dequeue()`, with a marker where the kernel
  /// dropped some: the `'fds'` listeners went away. `false` if the stream closed them.
  #[napi]
  pub fn requeue_handed(&self, first: i32, count: u32) -> bool {
    self.queues.requeue_handed(first, count as usize)
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

/// A `read` that did not complete at once: its place in line, and where its outcome goes.
struct PendingRead {
  shared: Arc<Shared>,
  queues: Arc<Queues>,
  home: Arc<Home>,
  id: f64,
  size: usize,
  ticket: Ticket,
  undelivered: Undelivered,
  /// Parked without a try (see `StreamCore::read`), and not tried since.
  guessed: bool,
}

impl PendingRead {
  /// The read as a task: in its turn, once the inbound queue has room, one `recvmsg`
  /// (`try_first`: tried before it waits for readiness, for an event the reactor may not
  /// have recorded), unless the stream closes or `canceller` fires first.
  fn task(
    self,
    canceller: Option<Arc<Canceller>>,
    try_first: bool,
  ) -> impl std::future::Future<Output = ()> + Send + 'static {
    let Self {
      shared,
      queues,
      home,
      id,
      size,
      ticket,
      undelivered,
      ..
    } = self;
    let reading = Arc::clone(&queues);
    let op = async move {
      let read = read_in_turn(&shared, &reading, ticket, size, try_first);
      let outcome = shared
        .unless_closed(cancel::unless_cancelled(canceller, read))
        .await;
      drop(shared);
      outcome
    };
    let giving_up = Arc::clone(&home);
    let finish =
      move |_: &Env, read: (Vec<u8>, Received, Ticket)| finish_read(&queues, &giving_up, read);
    settle::settling(home, id, op, finish, undelivered)
  }
}

impl crate::runtime::Direct for PendingRead {
  fn try_now(mut self: Box<Self>, after_turn: bool) -> crate::runtime::Tried {
    use crate::runtime::Tried;
    // Anything but its turn come with room for fds on an open stream: the task sees to it.
    if *self.shared.closed.borrow() || !self.ticket.is_turn() || self.queues.inbound_full() {
      return Tried::Task(Box::pin(self.task(None, true)));
    }
    let outcome = loop {
      let read = if after_turn {
        self.shared.recv_copied_if_recorded(self.size)
      } else {
        self.shared.recv_copied(self.size)
      };
      match read {
        Err(Errno::EINTR) => continue,
        Err(Errno::EAGAIN) => {
          self.guessed = false;
          return Tried::Empty(self);
        }
        Err(e) => break Err(error::sys(e, "recvmsg")),
        Ok(read) => break Ok(read),
      }
    };
    // Parked without a try, yet something was there at once: the stream's reads no longer
    // wait for their peer, and the next one tries first again.
    if self.guessed {
      self.shared.reads_wait.store(false, Ordering::Relaxed);
    }
    let Self {
      queues,
      home,
      id,
      ticket,
      undelivered,
      ..
    } = *self;
    let giving_up = Arc::clone(&home);
    home.settle(
      id,
      match outcome {
        Ok((data, received)) => Box::new(move |_| {
          let _kept = undelivered;
          finish_read(&queues, &giving_up, (data, received, ticket))
        }),
        // Its place goes now, as a task's would.
        Err(e) => Box::new(move |_| {
          let _kept = undelivered;
          Err(e)
        }),
      },
    );
    Tried::Done
  }

  fn into_task(self: Box<Self>, tried: bool) -> crate::runtime::Task {
    Box::pin(self.task(None, !tried))
  }
}

/// On the JS thread, right before read's Promise settles with `data`: the fds that came
/// with it join the inbound queue (closed instead, and the read fails, if the stream
/// closed meanwhile), and its place in line goes once the code after it has run (see
/// `read_in_turn`).
fn finish_read(
  queues: &Queues,
  home: &Home,
  (data, received, ticket): (Vec<u8>, Received, Ticket),
) -> Result<Settled> {
  receive_parts(queues, [(received.fds, received.truncated)])?;
  home.after_reactions(ticket.hold());
  Ok(Settled::Bytes(data))
}

/// A read in its turn. The turn is handed back with the result and ends on the JS thread,
/// once the fds it brought are in the inbound queue (a read called meanwhile, which may
/// `recvmsg` at once, must not queue its fds first) and the code after this read has run
/// (`Home::after_reactions`): the next pending read takes nothing from the socket before
/// then, so that a `close()` or an abort there leaves what JS has not seen to whoever else
/// holds the socket (a successor it was handed to).
async fn read_in_turn(
  shared: &Shared,
  queues: &Queues,
  ticket: Ticket,
  size: usize,
  try_first: bool,
) -> Result<(Vec<u8>, Received, Ticket)> {
  ticket.turn().await;
  let (data, received) = shared.read(queues, size, try_first).await?;
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

/// Where the run of short messages that message `first` of a write of `len` bytes
/// starts ends: as far as each [`scm_rights::fits_run`], at most
/// [`scm_rights::SEND_MANY`]; `first` itself when there is no `sendmmsg`.
fn run_end(messages: &[Message], first: usize, len: usize) -> usize {
  if !scm_rights::sends_many() {
    return first;
  }
  (first..messages.len())
    .take(scm_rights::SEND_MANY)
    .take_while(|&i| {
      let bytes = message_end(messages, i, len) - messages[i].start;
      scm_rights::fits_run(bytes, messages[i].fds.len())
    })
    .last()
    .map_or(first, |i| i + 1)
}

/// Sends the run of short messages that starts at message `next` (untouched so far: `sent`
/// is its start) with one `sendmmsg`, when there are two or more of them. `Some` with how
/// many went out and whether that was all of the run; `None` when there is no run (or no
/// `sendmmsg`), for the message to go alone.
fn send_run<'a>(
  shared: &Shared,
  gather: &mut scm_rights::Gather<'_, 'a>,
  messages: &[Message],
  (next, sent, len): (usize, usize, usize),
  iov: &mut Vec<std::io::IoSlice<'a>>,
) -> Option<nix::Result<(usize, bool)>> {
  if messages.get(next).is_none_or(|m| m.start != sent) {
    return None;
  }
  // Checked before anything is collected: a write of one message (most) allocates nothing.
  let last = run_end(messages, next, len);
  if last - next < 2 {
    return None;
  }
  let run: Vec<scm_rights::Outgoing<'_>> = (next..last)
    .map(|i| {
      (
        messages[i].start,
        message_end(messages, i, len),
        &messages[i].fds[..],
      )
    })
    .collect();
  let went = scm_rights::send_many(shared.fd.as_fd(), gather, &run, iov);
  Some(went.map(|count| (count, count == run.len())))
}
