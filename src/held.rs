//! The fds of received messages that no JS code has taken yet. A message carries the id its
//! fds are held under here, not their numbers: the numbers reach JS only when code first
//! reads the message's `fds` (the TypeScript layer then calls [`release_held_fds`] with
//! `keep`, which hands them over). So nothing that closes what is held here can close an
//! fd that JS code has. Held fds are closed when the message is garbage collected unread
//! (the layer's FinalizationRegistry calls [`release_held_fds`] without `keep`), or when the
//! thread's environment is torn down: a worker that ends between a `receive` settling and
//! the code that would have read its fds loses nothing.
//!
//! An id per message, not an External per message: an External's weak reference and
//! finalizer cost more than the rest of a receive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};

use napi::{Env, JsValue};
use napi_derive::napi;

use crate::settle::RawValue;

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

/// The numbers of the fds held under `id`, which are the caller's from now on (`keep`), or
/// nothing, the fds closed. `null` for an id not held (released already, or never given).
#[cfg_attr(test, allow(dead_code))]
#[napi(ts_return_type = "number[] | null")]
pub fn release_held_fds(env: &Env, id: f64, keep: bool) -> napi::Result<Option<RawValue>> {
  if !(id >= 0.0 && id.fract() == 0.0) {
    return Ok(None);
  }
  let fds =
    HELD.with_borrow_mut(|slot| slot.as_mut().and_then(|held| held.fds.remove(&(id as u64))));
  let Some(fds) = fds else {
    return Ok(None);
  };
  if !keep {
    drop(fds);
    return Ok(None);
  }
  // Made first: should that fail, dropping `fds` closes them (no number reached JS).
  let mut numbers = env.create_array(fds.len() as u32)?;
  for (i, fd) in fds.iter().enumerate() {
    numbers.set(i as u32, fd.as_raw_fd())?;
  }
  for fd in fds {
    let _ = fd.into_raw_fd();
  }
  Ok(Some(RawValue(numbers.raw())))
}
