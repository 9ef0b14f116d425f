//! Push delivery for the stream wrappers: a tokio task reads (or accepts) and calls JS
//! through a threadsafe function, so no Promise is made per chunk, and the wait for data
//! can be unref'd like a `net` handle. A reader task drains every message that is ready
//! (up to one chunk) per wake-up and hands them to JS in one call; at most [`IN_FLIGHT`]
//! such batches are in flight, and the JS side pauses the task when its buffer is full.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{FnArgs, Function, FunctionRef, ToNapiValue};
use napi::threadsafe_function::{
  ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::{sys, Env, Status};
use nix::errno::Errno;
use tokio::io::Interest;
use tokio::sync::{watch, Semaphore};

use crate::error::{self, errno_of, tagged};
use crate::js::checked;
use crate::nonblocking::core::{closing, readiness_recorded, Arrival, Handed, Queues, Shared};
use crate::scm_rights::{self, Received};
use crate::settle::{self, set_ref, Home, RawValue};
use crate::sync::lock;

/// Bytes one delivery carries at most, as one read of a `net.Socket`. (Deliveries that
/// grew to 1 MiB for bulk transfers held large external Buffers until the next GC: peak RSS
/// 1.26× `net.Socket`'s.)
const CHUNK: usize = crate::spare::SIZE;
/// Batches read but not yet handed to JS. On the JS-thread runtime one drive reads this
/// many before JS gets them, and every drive costs a turn of the reactor (an `epoll_wait`):
/// with 2, a bulk receiver made 0.83 `epoll_wait` calls and 0.09 context switches per
/// 64 KiB chunk, and the bytes benchmark gave 0.82× `net.Socket`; with 8, 0.29 and 0.024,
/// and 0.92–1.02× in five runs. (A sender's default buffer holds about 4 such chunks, so
/// more are rarely ready at once; what is read past the JS side's highWaterMark is bounded
/// by this.)
const IN_FLIGHT: usize = 8;
/// Batches one reader reads in one loop callback at most (see [`TurnBudget`]): 2 took
/// the bytes benchmark from 1.00–1.05× `net.Socket` down to 0.81–0.86×.
const PER_TURN: usize = IN_FLIGHT;
/// Batches all the readers of a thread read in one loop callback at most (2 MiB).
const ALL_PER_TURN: usize = 32;

/// `(chunk, handed, error, truncated)`: a chunk (its byte count when it waits in the
/// scratch Buffer, see [`Home::bytes_value`]), whose fds are already dequeue-able or,
/// while JS asks for them (`'fds'` listeners), are in `handed` (see [`fd_array`]), with whether the
/// kernel truncated them in `truncated` (JS sets the array's `truncated`: a named property
/// set from here cost a string made and looked up, and a generic store, per chunk); or
/// `(null, null, null, false)` at end of stream, or `(null, null, "[CODE] message", false)`.
pub type ReadArgs = FnArgs<(Option<RawValue>, Option<RawValue>, Option<String>, bool)>;
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
  /// Starts the reader task for `shared`, delivering to `callback`, which copy `copy` of
  /// the JS layer made (small chunks come through its scratch Buffer).
  pub fn start(
    env: &Env,
    shared: Arc<Shared>,
    queues: Arc<Queues>,
    callback: Function<'_, ReadArgs, ()>,
    copy: usize,
  ) -> napi::Result<Self> {
    let home = settle::home(env).map_err(|e| napi::Error::from_reason(e.reason))?;
    let depot = Arc::clone(&home);
    let to = To {
      queues: Arc::clone(&queues),
      home: Arc::clone(&home),
      copy,
    };
    let tsfn: ReadCallback = callback
      .build_threadsafe_function::<Delivery>()
      .callee_handled::<false>()
      .build_callback(move |ctx: ThreadsafeCallContext<Delivery>| {
        deliver(&ctx.env, &to, ctx.value)
      })?;
    // On the JS-thread runtime the task calls JS itself, right after the drive that read
    // the data; the threadsafe function then only keeps the loop alive (ref/unref).
    let direct = if crate::runtime::runs_elsewhere() {
      None
    } else {
      Some(Arc::new(Direct {
        callback: callback.create_ref()?,
        to: To {
          queues: Arc::clone(&queues),
          home,
          copy,
        },
      }))
    };
    let callback = Arc::new(Mutex::new(Some(tsfn)));
    let (want, wanted) = watch::channel(true);
    let task_callback = Arc::clone(&callback);
    // In line behind the reads called on the stream before it was wrapped (`FdSocket.from`
    // of a stream with a read pending): they are served first, in call order.
    let after = shared.reads.ticket();
    crate::runtime::spawn(async move {
      let credits = Arc::new(Semaphore::new(IN_FLIGHT));
      let sink = Sink {
        callback: &task_callback,
        direct,
        home: &depot,
      };
      tokio::select! {
        biased;
        _ = closing(&shared.closed) => {}
        _ = async {
          after.turn().await;
          drop(after);
          pump(&shared, &queues, &sink, wanted, credits).await
        } => {}
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

/// Where a reader's chunks go on the JS thread: the stream's queues, and the copy of the
/// JS layer (in this thread's home) whose callback gets them.
struct To {
  queues: Arc<Queues>,
  home: Arc<Home>,
  copy: usize,
}

/// Runs on the JS thread: the fds of the batch join the inbound queue, then JS gets the
/// chunk, so they are dequeue-able by the time it is delivered. Fds handed over in the
/// arguments stay the stream's until JS emits the chunk (and closed if making them fails).
fn deliver(env: &Env, to: &To, delivery: Delivery) -> napi::Result<ReadArgs> {
  let queues = &*to.queues;
  // The scratch area is written right before the call (the fds' numbers, then the
  // chunk's bytes), with no JS run in between: making the other arguments runs none.
  let chunk = |data| to.home.bytes_value(env, to.copy, data);
  Ok(match delivery {
    Delivery::Data { data, arrival, .. } => {
      let count = arrival.count;
      let closed = || Ok((None, None, Some(tagged(error::closed())), false).into());
      if queues.hand_fds.load(Ordering::Acquire) {
        // Handed over, they no longer count against the bound: a reader waiting for room
        // goes on (no dequeue() will tell it).
        queues.pending.fetch_sub(count, Ordering::AcqRel);
        if count > 0 {
          queues.room.notify_waiters();
        }
        let handed = match arrival.hand_over() {
          _ if queues.closed.load(Ordering::Acquire) => return closed(),
          handed => handed,
        };
        let truncated = handed.as_ref().is_some_and(Handed::truncated);
        let array = handed
          .as_ref()
          .map(|handed| fd_array(env, to, handed))
          .transpose()?;
        let chunk = chunk(data)?;
        // Held by the stream until JS emits the chunk (and takes them, see
        // `Queues::release_handed`); dropped with the arguments if making them failed.
        if let Some(handed) = handed {
          if !queues.hold_handed(handed) {
            return closed();
          }
        }
        return Ok((Some(chunk), array, None, truncated).into());
      }
      // No longer pending once in the inbound queue (see `Arrival::receive`).
      if arrival.receive(queues).is_err() {
        return closed();
      }
      (Some(chunk(data)?), None, None, false).into()
    }
    Delivery::End => (None, None, None, false).into(),
    Delivery::Failed(e) => (None, None, Some(tagged(e)), false).into(),
  })
}

/// `fds` for JS (they stay the stream's: see `Queues::hold_handed`), with the array made
/// in JS wherever it can be (through Node-API it costs about 125 ns an element here, in
/// JS about one): a lone fd as its number; two or more as minus their count, their numbers
/// in the scratch area of copy `copy` of the JS layer (see [`Home::fds_in_scratch`]); none
/// (every fd of the batch lost to truncation) as an empty array, and more than the
/// scratch area holds as an array of them all.
fn fd_array(env: &Env, to: &To, handed: &Handed) -> napi::Result<RawValue> {
  let raw = env.raw();
  let count = handed.count();
  let mut fds = handed.fds();
  if let (Some(fd), 1) = (fds.next(), count) {
    // SAFETY: a value made in this environment, on its thread, for the call that follows.
    return Ok(RawValue(unsafe { i32::to_napi_value(raw, fd) }?));
  }
  // (Minus nothing would read as fd 0.)
  if count > 1 && to.home.fds_in_scratch(env, to.copy, handed.fds(), count)? {
    // At most what the scratch area holds: far below i32::MAX.
    let minus = -i32::try_from(count).unwrap_or(i32::MAX);
    // SAFETY: as above.
    return Ok(RawValue(unsafe { i32::to_napi_value(raw, minus) }?));
  }
  let mut array = ptr::null_mut();
  // SAFETY: plain Node-API calls on the calling JS thread's live environment; `array` is
  // an out-pointer to a local, then the array that call made.
  unsafe {
    checked(
      sys::napi_create_array_with_length(raw, handed.count(), &mut array),
      "napi_create_array_with_length",
    )?;
    for (i, fd) in (0u32..).zip(handed.fds()) {
      let value = i32::to_napi_value(raw, fd)?;
      checked(
        sys::napi_set_element(raw, array, i, value),
        "napi_set_element",
      )?;
    }
  }
  Ok(RawValue(array))
}

/// The JS callback, for a reader on the JS-thread runtime.
struct Direct {
  callback: FunctionRef<ReadArgs, ()>,
  to: To,
}

/// Where a reader's deliveries go.
struct Sink<'a> {
  callback: &'a Mutex<Option<ReadCallback>>,
  direct: Option<Arc<Direct>>,
  home: &'a Arc<Home>,
}

impl Sink<'_> {
  fn send(&self, delivery: Delivery) {
    match &self.direct {
      // Stopped: dropping the delivery closes any fd in it.
      _ if lock(self.callback).is_none() => drop(delivery),
      Some(direct) => {
        let direct = Arc::clone(direct);
        self.home.post(Box::new(move |env| {
          let args = match deliver(env, &direct.to, delivery) {
            Ok(args) => args,
            // User code that making them ran (a setter) threw: reported as uncaught, and
            // this chunk is lost (its fds closed), never half-delivered. What the report
            // queued runs now, as after any callback.
            Err(_) if settle::report_pending(env) => {
              crate::runtime::as_io_callback(env, || ());
              return Ok(());
            }
            Err(e) => return Err(e),
          };
          settle::call_js(env, &direct.callback.borrow_back(env)?, args)
        }));
      }
      None => {
        if let Some(tsfn) = lock(self.callback).as_ref() {
          // Unbounded queue, so NonBlocking never fails for lack of room; if JS is gone,
          // the delivery (and any fds in it) is dropped, which closes them.
          tsfn.call(delivery, ThreadsafeFunctionCallMode::NonBlocking);
        }
      }
    }
  }
}

async fn pump(
  shared: &Shared,
  queues: &Arc<Queues>,
  sink: &Sink<'_>,
  mut wanted: watch::Receiver<bool>,
  credits: Arc<Semaphore>,
) {
  let home = sink.home;
  // Registered for readability for as long as the reader runs (it is the one waiting).
  let io = match shared.readable.acquire(&shared.fd) {
    Ok(io) => io,
    Err(e) => return sink.send(Delivery::Failed(e.into())),
  };
  let mut budget = TurnBudget::default();
  // An error `recvmmsg` reported ahead of the data still queued: it ends the stream once
  // nothing is left, where `recvmsg` would have reported it.
  let mut deferred: Option<Errno> = None;
  let end = |deferred: &mut Option<Errno>| match deferred.take() {
    Some(e) => Delivery::Failed(error::sys(e, "recvmsg")),
    None => Delivery::End,
  };
  let mut parking = Parking::default();
  // The last read found the socket empty (a run of reads ended with nothing left).
  let mut drained = false;
  // The last batch's first read was all there was: its messages come one at a time (a
  // round trip's), and the read that would find the socket empty after the next one may
  // be left to the reactor (see below).
  let mut lone = false;
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
    // The first read waits for readiness; the rest take only what is already there. The
    // budget is checked once the socket is ready, right before the read: many readers may
    // become ready in one callback after its budget went.
    let first = loop {
      // Known empty right after a read: parked at once, with no syscall to learn it again.
      if std::mem::take(&mut drained) && parking.park().await {
        continue;
      }
      // Parked, the loop tries the socket itself, at its next event (or right after a turn
      // of the reactor that may have taken that event); otherwise tokio's readiness first.
      let direct = crate::runtime::polled_directly();
      let mut ready = None;
      if !direct {
        match io.readable().await {
          Ok(guard) => ready = Some(guard),
          Err(e) => break Err(e),
        }
      }
      if budget.spent() {
        crate::runtime::next_turn().await;
        continue;
      }
      let recv = |fd: BorrowedFd<'_>, data: &mut Vec<u8>| {
        crate::spare::recv_first(fd, data, CHUNK).map_err(io::Error::from)
      };
      // `Err(())`: nothing there (a parked try, or readiness that was stale and is cleared).
      let result = match ready.as_mut() {
        Some(ready) => ready
          .try_io(|socket| recv(socket.get_ref().as_fd(), &mut data))
          .map_err(drop),
        // Right after a turn, the socket is read only if the turn recorded it readable
        // (an error held back must still end the stream, whatever that says).
        None if crate::runtime::tried_after_turn() && deferred.is_none() => {
          match io.try_io(Interest::READABLE, |fd| recv(fd.as_fd(), &mut data)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(()),
            other => Ok(other),
          }
        }
        None => match recv(io.get_ref().as_fd(), &mut data) {
          Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(()),
          other => Ok(other),
        },
      };
      match result {
        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
        Ok(result) => {
          if direct && result.is_ok() {
            parking.hit();
          }
          break result;
        }
        // Nothing left, and an error was held back for that moment.
        Err(()) if deferred.is_some() => break Ok(Received::default()),
        // Right after a read (or parked already), parked; otherwise wait for the next event.
        Err(()) => {
          parking.park().await;
          continue;
        }
      }
    };
    match first {
      Ok(received) if received.bytes == 0 => ending = Some(end(&mut deferred)),
      Ok(received) => {
        parking.active = true;
        queues
          .pending
          .fetch_add(received.fds.len(), Ordering::AcqRel);
        parts.push((received.fds, received.truncated));
      }
      Err(e) => ending = Some(Delivery::Failed(error::sys(errno_of(&e), "recvmsg"))),
    }
    // A read that brought fds stopped right after their message: more such messages may
    // be waiting, and one `recvmmsg` takes a run of them. Each read may bring SCM_MAX_FD
    // fds, so a run goes past `maxQueuedFds` by no more than one read alone would (the
    // bound the loop has always kept: it reads while there is room for one fd).
    let mut many = parts
      .last()
      .is_some_and(|(fds, _): &(Vec<_>, bool)| !fds.is_empty());
    // A try at the start of a loop callback that read a message when messages come one at
    // a time, or one that took all there was (fewer bytes than asked for, and no fds to
    // stop the read early): the read that would only find the socket empty is left out.
    // A turn of the reactor comes before the next try, and with no readiness recorded now
    // it records whatever is left or comes meanwhile (see `runtime::tried_after_turn`).
    // Parked at once, the reader is tried right after that turn.
    if crate::runtime::tried_before_turn()
      && (lone || (!many && data.len() < CHUNK))
      && ending.is_none()
      && !readiness_recorded(&io)
    {
      drained = true;
    }
    let mut reads = Vec::new();
    let drains = !drained;
    if drains {
      lone = false;
    }
    while drains && ending.is_none() && !data.is_empty() && data.len() < CHUNK {
      let room = queues.fd_room();
      if room == 0 {
        break;
      }
      let at_once = if many {
        room / scm_rights::SCM_MAX_FD + 1
      } else {
        1
      };
      let read = |fd: BorrowedFd<'_>, data: &mut Vec<u8>, reads: &mut Vec<Received>| {
        let room = CHUNK - data.len();
        scm_rights::recv_many_appending(fd, data, room, at_once, reads).map_err(io::Error::from)
      };
      // Parked before a turn, tokio's readiness may say nothing of the socket: it is tried
      // as it is, and so is one whose error waits for the rest to be read. (After a turn,
      // the first read went through tokio's readiness, which a drain that comes to
      // nothing then clears.)
      let result = if crate::runtime::tried_before_turn() || deferred.is_some() {
        read(io.get_ref().as_fd(), &mut data, &mut reads)
      } else {
        io.try_io(Interest::READABLE, |fd| {
          read(fd.as_fd(), &mut data, &mut reads)
        })
      };
      match result {
        Ok(held) => {
          deferred = deferred.or(held);
          many = false;
          for received in reads.drain(..) {
            if received.bytes == 0 {
              ending = Some(end(&mut deferred));
              break;
            }
            many |= !received.fds.is_empty();
            queues
              .pending
              .fetch_add(received.fds.len(), Ordering::AcqRel);
            parts.push((received.fds, received.truncated));
          }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
          if deferred.is_some() {
            ending = Some(end(&mut deferred));
          }
          drained = true;
          lone = parts.len() == 1;
          break;
        }
        Err(e) => ending = Some(Delivery::Failed(error::sys(errno_of(&e), "recvmsg"))),
      }
    }
    if !data.is_empty() {
      budget.spend();
      // Many connections may become ready in one drive: a small batch must not hold on to
      // a whole read buffer until JS gets it (up to 32 KiB it is then copied into V8's
      // memory; a larger batch is handed over as it is, see `settle::buffer_value`).
      if data.len() * 2 < CHUNK {
        data = crate::spare::fitted(data);
      }
      sink.send(Delivery::Data {
        data,
        arrival: Arrival::deposit(home, queues, parts),
        _credit: credit,
      });
    } else {
      crate::spare::release_if_empty(&mut data);
    }
    if let Some(ending) = ending {
      sink.send(ending);
      return;
    }
  }
}

/// Whether a reader that found its socket empty parks (see `runtime::park`): right after it
/// read something, unless parking came to nothing lately. A parked reader that the loop had
/// to turn into a task (its next wake-up brought nothing) parks only after the next 2, 4,
/// ... 64 reads: a connection that gets a message now and then costs a few `recvmsg` that
/// find nothing each time it parks.
struct Parking {
  /// Read something since it last found the socket empty.
  active: bool,
  /// Reads to let go by before parking again.
  skip: u32,
  /// What `skip` becomes after the next park that comes to nothing.
  backoff: u32,
}

impl Default for Parking {
  fn default() -> Self {
    Self {
      active: false,
      skip: 0,
      backoff: 2,
    }
  }
}

impl Parking {
  const MAX_BACKOFF: u32 = 64;

  /// A parked reader's own try found data.
  fn hit(&mut self) {
    self.backoff = 2;
  }

  /// Parks if it may, until the loop tries it again (`true`), or as a task once the loop
  /// gave up on it (`true` as well); `false`: it did not park.
  async fn park(&mut self) -> bool {
    let mut active = std::mem::take(&mut self.active);
    if active && self.skip > 0 {
      self.skip -= 1;
      active = false;
    }
    if !crate::runtime::park(active) {
      return false;
    }
    crate::runtime::until_tried_again().await;
    if !crate::runtime::polled_directly() {
      self.skip = self.backoff;
      self.backoff = (self.backoff * 2).min(Self::MAX_BACKOFF);
    }
    true
  }
}

/// Batches a reader read in the current loop callback of the JS-thread runtime: at most
/// [`PER_TURN`] (512 KiB) of its own and [`ALL_PER_TURN`] with the thread's other readers,
/// then it waits for the next callback. Within one, every batch JS takes frees a credit,
/// and a reader whose peer keeps writing would read again in the same callback for as long
/// as data comes. With many such connections a callback lasted seconds: no timer ran, and
/// the Buffers Node frees from its immediates piled up (a reviewer's 100 connections,
/// 1,600 MiB: timers held back 2.8 s, peak RSS 1.6 GiB). No bound on the threaded
/// runtime, whose reader hands batches over and goes on.
#[derive(Default)]
struct TurnBudget {
  turn: Option<u64>,
  used: usize,
}

impl TurnBudget {
  /// Counts from the start of callback `number`.
  fn refresh(&mut self, number: u64) {
    if self.turn != Some(number) {
      self.turn = Some(number);
      self.used = 0;
    }
  }

  /// Whether this callback's batches are used up.
  fn spent(&mut self) -> bool {
    let Some((number, counted)) = crate::runtime::turn() else {
      return false;
    };
    self.refresh(number);
    self.used >= PER_TURN || counted >= ALL_PER_TURN
  }

  /// One more batch read.
  fn spend(&mut self) {
    if let Some((number, _)) = crate::runtime::turn() {
      self.refresh(number);
      self.used += 1;
      crate::runtime::count_in_turn();
    }
  }
}
