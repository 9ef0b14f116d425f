//! Push accepting for `FdServer`: a tokio task waits until a connection is pending and
//! rings JS, which accepts on its own thread.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{FnArgs, Function};
use napi::threadsafe_function::{
  ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::{Env, Status};
use nix::errno::Errno;
use tokio::sync::Notify;

use crate::error::{self, tagged};
use crate::nonblocking::core::{accept_now, closing, connection_pending, ListenerShared};
use crate::nonblocking::stream::AsyncUnixStream;
use crate::settle::set_ref;
use crate::sync::lock;

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
    crate::runtime::spawn(async move {
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
        crate::runtime::sleep(backoff).await;
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
