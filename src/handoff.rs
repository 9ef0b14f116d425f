//! What tokio's threads hand to a JS thread without losing it at teardown.
//!
//! Results travel from tokio to JS through napi-rs threadsafe functions (push delivery and
//! every Promise). When a JS environment is torn down (`worker.terminate()`, process exit)
//! with items still queued there, Node calls back with no environment and napi-rs drops
//! nothing: an fd inside such an item would stay open for good. So nothing that owns an fd
//! travels that way. It is deposited here instead, in the home of the JS thread that will
//! take it, and only a [`Parcel`] number travels. When the environment goes, its home
//! closes everything still deposited, and refuses (closes at once) whatever comes later.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use napi::Env;

use crate::error::{self, Result};
use crate::nonblocking::lock;

/// The number of something deposited in a [`Home`]; it owns nothing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parcel(u64);

type Item = Box<dyn Any + Send>;

/// Where results for one JS thread wait to be claimed there.
#[derive(Default)]
pub struct Home {
  parcels: Mutex<HashMap<u64, Item>>,
  next: AtomicU64,
  /// Cleared once the environment is being torn down.
  open: AtomicBool,
}

thread_local! {
  static HOME: RefCell<Option<Arc<Home>>> = const { RefCell::new(None) };
}

/// The home of the calling JS thread, made (with a cleanup hook on its environment) on
/// first use.
pub fn home(env: &Env) -> Result<Arc<Home>> {
  HOME.with_borrow_mut(|slot| {
    if let Some(home) = slot.as_ref() {
      return Ok(Arc::clone(home));
    }
    let home = Arc::new(Home {
      open: AtomicBool::new(true),
      ..Home::default()
    });
    let closing = Arc::clone(&home);
    env
      .add_env_cleanup_hook((), move |()| {
        closing.close();
        // A later environment on this thread (an Electron reload) gets a home of its own.
        let _ = HOME.try_with(|slot| slot.borrow_mut().take());
      })
      .map_err(|e| error::coded("ERR_INTERNAL", e.reason.clone()))?;
    *slot = Some(Arc::clone(&home));
    Ok(home)
  })
}

impl Home {
  /// Keeps `value` for the JS thread. `None` when the environment is gone: `value` is
  /// dropped (its fds closed) at once.
  pub fn deposit<T: Send + 'static>(&self, value: T) -> Option<Parcel> {
    let mut parcels = lock(&self.parcels);
    // Checked under the lock, so a close cannot slip between the check and the insert.
    if !self.open.load(Ordering::Acquire) {
      drop(parcels);
      drop(value);
      return None;
    }
    let number = self.next.fetch_add(1, Ordering::Relaxed);
    parcels.insert(number, Box::new(value));
    Some(Parcel(number))
  }

  /// Takes what `parcel` names, on the JS thread. `None` if it is gone (closed at
  /// teardown) or was of another type (then it is dropped).
  pub fn claim<T: 'static>(&self, parcel: Parcel) -> Option<T> {
    let item = lock(&self.parcels).remove(&parcel.0)?;
    item.downcast::<T>().ok().map(|boxed| *boxed)
  }

  fn close(&self) {
    let items: Vec<Item> = {
      let mut parcels = lock(&self.parcels);
      self.open.store(false, Ordering::Release);
      parcels.drain().map(|(_, item)| item).collect()
    };
    // Dropped outside the lock: each drop may close fds.
    drop(items);
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::os::fd::OwnedFd;

  fn open_home() -> Home {
    Home {
      open: AtomicBool::new(true),
      ..Home::default()
    }
  }

  fn watched() -> (OwnedFd, std::fs::File) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    (writer, std::fs::File::from(reader))
  }

  fn closed(reader: &mut std::fs::File) -> bool {
    use std::io::Read;
    reader.read(&mut [0u8; 1]).expect("read") == 0
  }

  #[test]
  fn a_parcel_is_claimed_once_as_its_type() {
    let home = open_home();
    let (fd, _reader) = watched();
    let parcel = home.deposit(vec![fd]).expect("open");
    assert!(home.claim::<Vec<OwnedFd>>(parcel).is_some());
    assert!(home.claim::<Vec<OwnedFd>>(parcel).is_none());
  }

  #[test]
  fn closing_closes_what_waits_and_refuses_what_comes_later() {
    let home = open_home();
    let (waiting, mut waiting_reader) = watched();
    let (late, mut late_reader) = watched();
    let parcel = home.deposit(waiting).expect("open");
    home.close();
    assert!(closed(&mut waiting_reader));
    assert!(home.claim::<OwnedFd>(parcel).is_none());
    assert!(home.deposit(late).is_none());
    assert!(closed(&mut late_reader));
  }
}
