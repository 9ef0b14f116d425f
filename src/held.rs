//! The fds of received messages that no JS code has taken yet. A message's fds are its
//! caller's from the moment code first reads its `fds` (the TypeScript layer then calls
//! [`release_held_fds`] with `keep`); until then they are held here, per JS thread, under
//! an id the message carries. They are closed if the message is garbage collected unread
//! (the layer's FinalizationRegistry calls [`release_held_fds`] without `keep`), or when
//! the thread's environment is torn down: a worker that ends between a `receive` settling
//! and the code that would have read its fds loses nothing.
//!
//! An id per message, not an External per message: an External's weak reference and
//! finalizer cost more than the rest of a receive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{IntoRawFd, OwnedFd};

use napi::Env;
use napi_derive::napi;

#[derive(Default)]
struct Held {
  next: u64,
  fds: HashMap<u64, Vec<OwnedFd>>,
}

thread_local! {
  /// `None` until this thread's environment first holds fds (its cleanup hook is added
  /// then), and again once that environment is gone.
  static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Holds `fds` for JS until [`release_held_fds`]; the id to release them with. (On an
/// error they are closed.)
pub(crate) fn hold(env: &Env, fds: Vec<OwnedFd>) -> napi::Result<f64> {
  HELD.with_borrow_mut(|slot| {
    if slot.is_none() {
      env.add_env_cleanup_hook((), |()| {
        // Taken out first, dropped (closing every fd) outside the borrow.
        let held = HELD.try_with(|slot| slot.borrow_mut().take());
        drop(held);
      })?;
    }
    let held = slot.get_or_insert_with(Held::default);
    let id = held.next;
    held.next += 1;
    held.fds.insert(id, fds);
    // Below 2^53 for as long as any process runs: exact as a JS number.
    Ok(id as f64)
  })
}

/// The fds held under `id` are the caller's from now on (`keep`), or are closed. An id
/// already released (or never given) does nothing.
#[cfg_attr(test, allow(dead_code))]
#[napi]
pub fn release_held_fds(id: f64, keep: bool) {
  let fds =
    HELD.with_borrow_mut(|slot| slot.as_mut().and_then(|held| held.fds.remove(&(id as u64))));
  for fd in fds.into_iter().flatten() {
    if keep {
      let _ = fd.into_raw_fd();
    } else {
      drop(fd);
    }
  }
}
