//! Push delivery for the stream wrappers: a tokio task reads (or accepts) and calls JS
//! through a threadsafe function, so no Promise is made per chunk, and the wait for data
//! can be unref'd like a `net` handle. A reader task drains every message that is ready
//! (up to one chunk) per wake-up and hands them to JS in one call; at most two such
//! batches are in flight, and the JS side pauses the task when its buffer is full.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{Buffer, FnArgs, Function};
use napi::threadsafe_function::{
  ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::{Env, Status};
use nix::errno::Errno;
use tokio::io::Interest;
use tokio::sync::{watch, Notify, Semaphore};

use crate::error;
use crate::handoff::{self, Home};
use crate::nonblocking::{
  accept_now, closing, connection_pending, errno_of, lock, tagged, Arrival, AsyncUnixStream,
  ListenerShared, Queues, Shared,
};
use crate::scm_rights;

/// Bytes one delivery carries at first; a batch that fills it doubles the next one, up
/// to `MAX_CHUNK`, so bulk transfers make fewer, larger deliveries.
const CHUNK: usize = 64 * 1024;
const MAX_CHUNK: usize = 1024 * 1024;
/// Batches read but not yet handed to JS.
const IN_FLIGHT: usize = 2;

/// `(chunk, fdCount, error)`: a chunk with the number of fds that arrived with it (already
/// dequeue-able), or `(null, 0, null)` at end of stream, or `(null, 0, "[CODE] message")`.
pub type ReadArgs = FnArgs<(Option<Buffer>, u32, Option<String>)>;
type ReadCallback = ThreadsafeFunction<Delivery, (), ReadArgs, Status, false>;

/// What the reader task sends to JS. It owns no fd: those wait in the JS thread's home.
pub enum Delivery {
  Data {
    data: Vec<u8>,
    /// The fds of each message in the batch, and whether the kernel truncated them.
    arrival: Arrival,
    _credit: tokio::sync::OwnedSemaphorePermit,
  },
  End,
  Failed(error::Error),
}

/// The JS-facing controls of a running reader.
pub struct Reader {
  want: watch::Sender<bool>,
  callback: Arc<Mutex<Option<ReadCallback>>>,
  referenced: bool,
}

impl Reader {
  /// Starts the reader task for `shared`, delivering to `callback`.
  pub fn start(
    env: &Env,
    shared: Arc<Shared>,
    queues: Arc<Queues>,
    callback: Function<'_, ReadArgs, ()>,
  ) -> napi::Result<Self> {
    let home = handoff::home(env).map_err(|e| napi::Error::from_reason(e.reason))?;
    let depot = Arc::clone(&home);
    let delivering = Arc::clone(&queues);
    let tsfn: ReadCallback = callback
      .build_threadsafe_function::<Delivery>()
      .callee_handled::<false>()
      .build_callback(move |ctx: ThreadsafeCallContext<Delivery>| {
        Ok(deliver(&delivering, ctx.value))
      })?;
    let callback = Arc::new(Mutex::new(Some(tsfn)));
    let (want, wanted) = watch::channel(true);
    let task_callback = Arc::clone(&callback);
    napi::bindgen_prelude::spawn(async move {
      let credits = Arc::new(Semaphore::new(IN_FLIGHT));
      tokio::select! {
        biased;
        _ = closing(&shared.closed) => {}
        _ = pump(&shared, &queues, &depot, &task_callback, wanted, credits) => {}
      }
      // Releasing the threadsafe function lets the event loop exit.
      lock(&task_callback).take();
    });
    Ok(Self {
      want,
      callback,
      referenced: true,
    })
  }

  /// Pauses or resumes reading. A paused reader does not keep the process alive, like a
  /// `net.Socket` that stopped reading.
  pub fn set_wanted(&mut self, env: &Env, wanted: bool) -> napi::Result<()> {
    self.want.send_replace(wanted);
    self.apply_ref(env)
  }

  /// `ref()`/`unref()` of the owning socket.
  pub fn set_referenced(&mut self, env: &Env, referenced: bool) -> napi::Result<()> {
    self.referenced = referenced;
    self.apply_ref(env)
  }

  fn apply_ref(&mut self, env: &Env) -> napi::Result<()> {
    let keep_alive = self.referenced && *self.want.borrow();
    set_ref(&self.callback, env, keep_alive)
  }
}

/// Runs on the JS thread: the fds of the batch join the inbound queue, then JS gets the
/// chunk, so they are dequeue-able by the time it is delivered.
fn deliver(queues: &Queues, delivery: Delivery) -> ReadArgs {
  match delivery {
    Delivery::Data { data, arrival, .. } => {
      let count = arrival.count;
      queues.pending.fetch_sub(count, Ordering::AcqRel);
      if arrival.receive(queues).is_err() {
        return (None, 0, Some(tagged(error::closed()))).into();
      }
      (Some(Buffer::from(data)), count as u32, None).into()
    }
    Delivery::End => (None, 0, None).into(),
    Delivery::Failed(e) => (None, 0, Some(tagged(e))).into(),
  }
}

fn send(callback: &Mutex<Option<ReadCallback>>, delivery: Delivery) {
  if let Some(tsfn) = lock(callback).as_ref() {
    // Unbounded queue, so NonBlocking never fails for lack of room; if JS is gone, the
    // delivery (and any fds in it) is dropped, which closes them.
    tsfn.call(delivery, ThreadsafeFunctionCallMode::NonBlocking);
  }
}

async fn pump(
  shared: &Shared,
  queues: &Queues,
  home: &Arc<Home>,
  callback: &Mutex<Option<ReadCallback>>,
  mut wanted: watch::Receiver<bool>,
  credits: Arc<Semaphore>,
) {
  let mut chunk = CHUNK;
  // Registered for readability for as long as the reader runs (it is the one waiting).
  let io = match shared.readable.acquire(&shared.fd) {
    Ok(io) => io,
    Err(e) => return send(callback, Delivery::Failed(e.into())),
  };
  loop {
    if wanted.wait_for(|w| *w).await.is_err() {
      return;
    }
    let Ok(credit) = Arc::clone(&credits).acquire_owned().await else {
      return;
    };
    queues.wait_for_room().await;
    // Allocated once data is ready (inside the closure), so an idle connection holds no
    // read buffer.
    let mut data = Vec::new();
    let mut parts = Vec::new();
    let mut ending = None;
    // The first read waits for readiness; the rest take only what is already there.
    let first = loop {
      let result = io
        .async_io(Interest::READABLE, |fd| {
          data.reserve(chunk);
          scm_rights::recv_appending(fd.as_fd(), &mut data, chunk, true).map_err(io::Error::from)
        })
        .await;
      match result {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        other => break other,
      }
    };
    match first {
      Ok(received) if received.bytes == 0 => ending = Some(Delivery::End),
      Ok(received) => {
        queues
          .pending
          .fetch_add(received.fds.len(), Ordering::AcqRel);
        parts.push((received.fds, received.truncated));
      }
      Err(e) => ending = Some(Delivery::Failed(error::sys(errno_of(&e), "recvmsg"))),
    }
    while ending.is_none() && !data.is_empty() && data.len() < chunk && !queues.inbound_full() {
      let result = io.try_io(Interest::READABLE, |fd| {
        scm_rights::recv_appending(fd.as_fd(), &mut data, chunk, true).map_err(io::Error::from)
      });
      match result {
        Ok(received) if received.bytes == 0 => ending = Some(Delivery::End),
        Ok(received) => {
          queues
            .pending
            .fetch_add(received.fds.len(), Ordering::AcqRel);
          parts.push((received.fds, received.truncated));
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
        Err(e) => ending = Some(Delivery::Failed(error::sys(errno_of(&e), "recvmsg"))),
      }
    }
    if !data.is_empty() {
      let filled = data.len() >= chunk;
      if data.len() * 2 < chunk {
        data.shrink_to_fit();
      }
      send(
        callback,
        Delivery::Data {
          data,
          arrival: Arrival::deposit(home, parts),
          _credit: credit,
        },
      );
      chunk = if filled {
        (chunk * 2).min(MAX_CHUNK)
      } else {
        CHUNK
      };
    }
    if let Some(ending) = ending {
      send(callback, ending);
      return;
    }
  }
}

/// `(streams, error, retrying)`: the connections accepted on this turn, in order; then, if
/// accepting failed, `("[CODE] message", true)` for a lack of fds or memory (reported once
/// per episode; accepting resumes after a backoff) or `("[CODE] message", false)` when it
/// failed for good.
pub type AcceptArgs = FnArgs<(Vec<AsyncUnixStream>, Option<String>, bool)>;
type AcceptCallback = ThreadsafeFunction<(), (), AcceptArgs, Status, false>;

/// Most connections JS accepts in one turn before the event loop gets a say.
const BATCH: usize = 64;
/// Longest wait between accepts while the process has no fd (or memory) to spare.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// What one turn of accepting on the JS thread found: the waiting task's next step.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Verdict {
  /// No connection left (`EAGAIN`): wait for the next one.
  Drained,
  /// A full batch: ring again at once.
  More,
  /// Out of fds or memory: back off, then try again.
  Exhausted,
  /// Accepting failed for good.
  Failed,
}

/// The handshake between the task that waits for connections and the JS thread that
/// accepts them.
#[derive(Default)]
struct Turn {
  verdict: AtomicU8,
  done: Notify,
  /// An exhaustion episode is under way (reported once).
  busy: AtomicBool,
}

/// Accepts in turns until the listener closes, handing the connections to JS. A tokio
/// task waits until a connection is pending and rings JS, which accepts it on its own
/// thread: a connection is either still in the kernel's backlog or delivered, never in
/// between, so a `close()` (a hand-over, say) leaves every waiting connection to whoever
/// holds the listener next, and nothing is lost when a worker ends.
pub struct Acceptor {
  callback: Arc<Mutex<Option<AcceptCallback>>>,
}

impl Acceptor {
  pub fn start(
    listener: Arc<ListenerShared>,
    callback: Function<'_, AcceptArgs, ()>,
  ) -> napi::Result<Self> {
    let turn = Arc::new(Turn::default());
    let answering = Arc::clone(&turn);
    // Weak: the JS side must not keep the listener's fd open after `close()`.
    let accepting = Arc::downgrade(&listener);
    let tsfn: AcceptCallback = callback
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .build_callback(move |_ctx: ThreadsafeCallContext<()>| {
        let (streams, error, verdict) = match accepting.upgrade() {
          Some(listener) if !*listener.closed.borrow() => accept_turn(&listener),
          _ => (Vec::new(), None, Verdict::Drained),
        };
        let retrying = verdict != Verdict::Failed;
        let report = match verdict {
          // Once per episode; the episode ends with the next accepted connection.
          Verdict::Exhausted => !answering.busy.swap(true, Ordering::AcqRel),
          _ => {
            if !streams.is_empty() {
              answering.busy.store(false, Ordering::Release);
            }
            true
          }
        };
        answering.verdict.store(verdict as u8, Ordering::Release);
        answering.done.notify_one();
        let error = error.filter(|_| report).map(tagged);
        Ok((streams, error, retrying).into())
      })?;
    let callback = Arc::new(Mutex::new(Some(tsfn)));
    let task_callback = Arc::clone(&callback);
    napi::bindgen_prelude::spawn(async move {
      tokio::select! {
        biased;
        _ = closing(&listener.closed) => {}
        _ = wait_and_ring(&listener, &turn, &task_callback) => {}
      }
      drop(listener);
      lock(&task_callback).take();
    });
    Ok(Self { callback })
  }

  /// `ref()`/`unref()` of the owning server.
  pub fn set_referenced(&self, env: &Env, referenced: bool) -> napi::Result<()> {
    set_ref(&self.callback, env, referenced)
  }
}

/// One turn on the JS thread: accepts until no connection is left, a batch is full, or
/// accepting fails. Running out of fds or memory is not fatal (a peer can cause it on
/// purpose): the connections wait in the backlog, and the task backs off.
fn accept_turn(listener: &ListenerShared) -> (Vec<AsyncUnixStream>, Option<error::Error>, Verdict) {
  let mut streams = Vec::new();
  while streams.len() < BATCH {
    match accept_now(listener) {
      // Registered here, on the JS thread, inside the runtime.
      Ok(fd) => match AsyncUnixStream::wrap(fd) {
        Ok(stream) => streams.push(stream),
        Err(e) => return (streams, Some(e), Verdict::More),
      },
      Err(Errno::EAGAIN) => return (streams, None, Verdict::Drained),
      Err(errno) if exhausted(errno) => {
        return (
          streams,
          Some(error::sys(errno, "accept")),
          Verdict::Exhausted,
        )
      }
      Err(errno) => return (streams, Some(error::sys(errno, "accept")), Verdict::Failed),
    }
  }
  (streams, None, Verdict::More)
}

/// Waits for a connection, rings JS to accept it, and waits for JS's verdict; until a
/// fatal error.
async fn wait_and_ring(
  listener: &ListenerShared,
  turn: &Turn,
  callback: &Mutex<Option<AcceptCallback>>,
) {
  let mut backoff = Duration::from_millis(1);
  loop {
    // An error here (the reactor refused the listener) is left for JS's accept to report.
    let _ = connection_pending(listener).await;
    let done = turn.done.notified();
    match lock(callback).as_ref() {
      Some(tsfn) => tsfn.call((), ThreadsafeFunctionCallMode::NonBlocking),
      None => return,
    };
    done.await;
    match turn.verdict.load(Ordering::Acquire) {
      v if v == Verdict::Exhausted as u8 => {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
      }
      v if v == Verdict::Failed as u8 => return,
      _ => backoff = Duration::from_millis(1),
    }
  }
}

/// Accept errors that only say the process (or system) is out of fds or memory for now.
pub(crate) fn exhausted(errno: Errno) -> bool {
  matches!(
    errno,
    Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
  )
}

/// Whether a waiting threadsafe function keeps the event loop alive (a no-op once the
/// task has released it).
#[allow(deprecated)] // napi-rs keeps refer/unref for exactly this: a handle that may idle.
fn set_ref<T: 'static, Args: 'static + napi::bindgen_prelude::JsValuesTupleIntoVec>(
  callback: &Mutex<Option<ThreadsafeFunction<T, (), Args, Status, false>>>,
  env: &Env,
  keep_alive: bool,
) -> napi::Result<()> {
  if let Some(tsfn) = lock(callback).as_mut() {
    if keep_alive {
      tsfn.refer(env)?;
    } else {
      tsfn.unref(env)?;
    }
  }
  Ok(())
}
