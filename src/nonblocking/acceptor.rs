//! Push accepting for `FdServer`: a tokio task waits until a connection is pending and
//! rings JS, which then accepts them one by one (`acceptNext()`), handing each to its
//! `'connection'` listeners before it takes the next, and says how the turn ended
//! (`endAcceptTurn()`). Nothing is taken from the backlog except by a JS call: a server
//! closed by a `'connection'` listener leaves the rest to whoever holds the listener next,
//! and a worker torn down with a ring still queued takes nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{Function, FunctionRef};
use napi::threadsafe_function::{
  ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::{Env, Status};
use tokio::sync::Notify;

use crate::nonblocking::core::{closing, connection_pending, ListenerShared};
use crate::settle::{self, set_ref, Home};
use crate::sync::lock;

type AcceptCallback = ThreadsafeFunction<(), (), (), Status, false>;

/// Longest wait between accepts while the process has no fd (or memory) to spare.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// How JS's turn of accepting ended (`endAcceptTurn(verdict)`): the waiting task's next
/// step.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
  /// No connection left (`EAGAIN`), or the server stopped: wait for the next one.
  Drained,
  /// JS stopped before the backlog was empty (a full batch, a listener that threw): ring
  /// again at once.
  More,
  /// Out of fds or memory: back off, then ring again.
  Exhausted,
  /// Accepting failed for good.
  Failed,
}

impl Verdict {
  pub fn from_js(value: u32) -> Self {
    match value {
      0 => Self::Drained,
      2 => Self::Exhausted,
      3 => Self::Failed,
      _ => Self::More,
    }
  }
}

/// The handshake between the task that waits for connections and JS's turn.
#[derive(Default)]
struct Turn {
  verdict: Mutex<Option<Verdict>>,
  done: Notify,
}

/// Rings JS whenever a connection is pending, until the listener closes.
pub struct Acceptor {
  callback: Arc<Mutex<Option<AcceptCallback>>>,
  turn: Arc<Turn>,
}

impl Acceptor {
  pub fn start(
    env: &Env,
    listener: Arc<ListenerShared>,
    callback: Function<'_, (), ()>,
  ) -> napi::Result<Self> {
    let home = settle::home(env).map_err(|e| napi::Error::from_reason(e.reason))?;
    // On the JS-thread runtime the task calls JS itself, right after the drive that saw the
    // connection; the threadsafe function then only keeps the loop alive (ref/unref).
    let direct = if crate::runtime::runs_elsewhere() {
      None
    } else {
      Some(Arc::new(callback.create_ref()?))
    };
    let tsfn: AcceptCallback = callback
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .build_callback(|_ctx: ThreadsafeCallContext<()>| Ok(()))?;
    let callback = Arc::new(Mutex::new(Some(tsfn)));
    let turn = Arc::new(Turn::default());
    let ring = Ring {
      callback: Arc::clone(&callback),
      direct,
      home,
    };
    let waiting = Arc::clone(&turn);
    crate::runtime::spawn(async move {
      tokio::select! {
        biased;
        _ = closing(&listener.closed) => {}
        _ = wait_and_ring(&listener, &waiting, &ring) => {}
      }
      drop(listener);
      lock(&ring.callback).take();
    });
    Ok(Self { callback, turn })
  }

  /// `ref()`/`unref()` of the owning server.
  pub fn set_referenced(&self, env: &Env, referenced: bool) -> napi::Result<()> {
    set_ref(&self.callback, env, referenced)
  }

  /// JS's turn is over (see [`Verdict`]).
  pub fn end_turn(&self, verdict: Verdict) {
    *lock(&self.turn.verdict) = Some(verdict);
    self.turn.done.notify_one();
  }
}

/// How the task tells JS that connections are pending.
struct Ring {
  callback: Arc<Mutex<Option<AcceptCallback>>>,
  direct: Option<Arc<FunctionRef<(), ()>>>,
  home: Arc<Home>,
}

impl Ring {
  /// `false` once the acceptor is stopped.
  fn ring(&self) -> bool {
    let callback = lock(&self.callback);
    let Some(tsfn) = callback.as_ref() else {
      return false;
    };
    match &self.direct {
      Some(direct) => {
        let direct = Arc::clone(direct);
        self.home.post(Box::new(move |env| {
          settle::call_js(env, &direct.borrow_back(env)?, ())
        }));
      }
      None => {
        tsfn.call((), ThreadsafeFunctionCallMode::NonBlocking);
      }
    }
    true
  }
}

/// Waits for a connection, rings JS, and waits for the end of its turn; until accepting
/// fails for good.
async fn wait_and_ring(listener: &ListenerShared, turn: &Turn, ring: &Ring) {
  let mut backoff = Duration::from_millis(1);
  loop {
    // An error here (the reactor refused the listener) is left for JS's accept to report.
    let _ = connection_pending(listener).await;
    let done = turn.done.notified();
    *lock(&turn.verdict) = None;
    if !ring.ring() {
      return;
    }
    done.await;
    // Set by `end_turn` before it notifies.
    let verdict = lock(&turn.verdict).take().unwrap_or(Verdict::More);
    match verdict {
      Verdict::Exhausted => {
        crate::runtime::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
      }
      Verdict::Failed => return,
      Verdict::Drained | Verdict::More => backoff = Duration::from_millis(1),
    }
  }
}
