//! Push delivery for the stream wrappers: a tokio task reads (or accepts) and calls JS
//! through a threadsafe function, so no Promise is made per chunk, and the wait for data
//! can be unref'd like a `net` handle. A reader task drains every message that is ready
//! (up to one chunk) per wake-up and hands them to JS in one call; at most two such
//! batches are in flight, and the JS side pauses the task when its buffer is full.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{Buffer, FnArgs, Function};
use napi::threadsafe_function::{
  ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::{Env, Status};
use tokio::io::Interest;
use tokio::sync::{watch, Semaphore};

use crate::error;
use crate::nonblocking::{
  accept_one, closing, errno_of, lock, tagged, AsyncUnixStream, ListenerShared, Queues, Shared,
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

/// What the reader task sends to JS.
pub enum Delivery {
  Data {
    data: Vec<u8>,
    /// The fds of each message in the batch, and whether the kernel truncated them.
    parts: Vec<(Vec<OwnedFd>, bool)>,
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
        _ = pump(&shared, &queues, &task_callback, wanted, credits) => {}
      }
      // Releasing the threadsafe function lets the event loop exit.
      lock(&task_callback).take();
    });
    let _ = env;
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
    Delivery::Data { data, parts, .. } => {
      let count: usize = parts.iter().map(|(fds, _)| fds.len()).sum();
      queues.pending.fetch_sub(count, Ordering::AcqRel);
      if queues.closed.load(Ordering::Acquire) {
        return (None, 0, Some(tagged(error::closed()))).into();
      }
      let mut inbound = lock(&queues.inbound);
      for (fds, truncated) in parts {
        inbound.receive(fds, truncated);
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
          parts,
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

/// `(stream, error)`: a new connection, or `(null, "[CODE] message")` when accepting
/// failed for good.
pub type AcceptArgs = FnArgs<(Option<AsyncUnixStream>, Option<String>)>;
type AcceptCallback = ThreadsafeFunction<error::Result<OwnedFd>, (), AcceptArgs, Status, false>;

/// Accepts in a loop until the listener closes, handing each connection to JS.
pub struct Acceptor {
  callback: Arc<Mutex<Option<AcceptCallback>>>,
}

impl Acceptor {
  pub fn start(
    listener: Arc<ListenerShared>,
    callback: Function<'_, AcceptArgs, ()>,
  ) -> napi::Result<Self> {
    let tsfn: AcceptCallback = callback
      .build_threadsafe_function::<error::Result<OwnedFd>>()
      .callee_handled::<false>()
      .build_callback(|ctx: ThreadsafeCallContext<error::Result<OwnedFd>>| {
        // Registering the accepted socket happens here, on the JS thread, inside the runtime.
        let args = match ctx.value.and_then(AsyncUnixStream::wrap) {
          Ok(stream) => (Some(stream), None),
          Err(e) => (None, Some(tagged(e))),
        };
        Ok(args.into())
      })?;
    let callback = Arc::new(Mutex::new(Some(tsfn)));
    let task_callback = Arc::clone(&callback);
    napi::bindgen_prelude::spawn(async move {
      loop {
        let next = tokio::select! {
          biased;
          _ = closing(&listener.closed) => break,
          next = accept_one(&listener) => next,
        };
        let failed = next.is_err();
        if let Some(tsfn) = lock(&task_callback).as_ref() {
          tsfn.call(next, ThreadsafeFunctionCallMode::NonBlocking);
        }
        if failed {
          break;
        }
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
