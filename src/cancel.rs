//! Cancelling a pending async operation (`{ signal }` in JS). The operation's future waits
//! on its `Canceller` beside its work, with the cancel checked first on every poll: the
//! work either has not touched the socket yet (then nothing is consumed, and the next
//! operation gets the bytes, fds or connection), or it finished in that same poll (then it
//! settles with its result: the abort came too late to lose anything).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::External;
use napi_derive::napi;
use tokio::sync::Notify;

use crate::error::{self, Result};

/// One operation's cancel switch, shared by JS (which flips it) and the future.
#[derive(Default)]
pub struct Canceller {
  cancelled: AtomicBool,
  notify: Notify,
}

pub type CancelHandle = External<Arc<Canceller>>;

impl Canceller {
  fn cancel(&self) {
    self.cancelled.store(true, Ordering::Release);
    self.notify.notify_waiters();
  }

  /// Whether the operation was cancelled (on the JS thread: just before it settles).
  pub fn is_cancelled(&self) -> bool {
    self.cancelled.load(Ordering::Acquire)
  }

  /// Resolves once cancelled.
  async fn cancelled(&self) {
    loop {
      let notified = self.notify.notified();
      if self.cancelled.load(Ordering::Acquire) {
        return;
      }
      notified.await;
    }
  }
}

/// A new cancel switch for one operation.
#[napi(ts_return_type = "ExternalObject<'Canceller'>")]
#[cfg_attr(test, allow(dead_code))]
pub fn new_canceller() -> CancelHandle {
  External::new(Arc::default())
}

/// Cancels the operation `canceller` was given to, unless it has finished already.
#[napi(ts_args_type = "canceller: ExternalObject<'Canceller'>")]
#[cfg_attr(test, allow(dead_code))]
pub fn cancel(canceller: &CancelHandle) {
  canceller.cancel();
}

/// The error of a cancelled operation (the TypeScript layer makes it Node's `AbortError`).
pub fn aborted() -> error::Error {
  error::coded("ABORT_ERR", "The operation was aborted")
}

/// Runs `op` unless `canceller` fires first (checked before `op` on every poll): `None`
/// when cancelled.
async fn run_unless_cancelled<F: Future>(
  canceller: Option<Arc<Canceller>>,
  op: F,
) -> Option<F::Output> {
  match canceller {
    None => Some(op.await),
    Some(canceller) => tokio::select! {
      biased;
      _ = canceller.cancelled() => None,
      result = op => Some(result),
    },
  }
}

/// Runs `op` unless `canceller` fires first; a cancel is the `ABORT_ERR` error.
pub async fn unless_cancelled<T>(
  canceller: Option<Arc<Canceller>>,
  op: impl Future<Output = Result<T>>,
) -> Result<T> {
  run_unless_cancelled(canceller, op)
    .await
    .unwrap_or_else(|| Err(aborted()))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_cancel_before_the_work_is_ready_wins_and_the_work_never_runs() {
    let runtime = tokio::runtime::Builder::new_current_thread()
      .build()
      .expect("runtime");
    runtime.block_on(async {
      let canceller = Arc::new(Canceller::default());
      let ran = Arc::new(AtomicBool::new(false));
      let ran_in_op = Arc::clone(&ran);
      let op = async move {
        std::future::pending::<()>().await;
        ran_in_op.store(true, Ordering::Release);
      };
      let waiting = run_unless_cancelled(Some(Arc::clone(&canceller)), op);
      canceller.cancel();
      assert!(waiting.await.is_none());
      assert!(!ran.load(Ordering::Acquire));
    });
  }

  #[test]
  fn work_that_is_ready_in_the_same_poll_still_loses_to_an_earlier_cancel() {
    let runtime = tokio::runtime::Builder::new_current_thread()
      .build()
      .expect("runtime");
    runtime.block_on(async {
      let canceller = Arc::new(Canceller::default());
      canceller.cancel();
      let outcome = run_unless_cancelled(Some(canceller), async { 7 }).await;
      assert_eq!(outcome, None, "the cancel is checked first");
      assert_eq!(run_unless_cancelled(None, async { 7 }).await, Some(7));
    });
  }
}
