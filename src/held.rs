//! The fds of received messages that no JS code has taken yet. A message carries the id its
//! fds are held under here, not their numbers: the numbers reach JS only when code first
//! reads the message's `fds` (the TypeScript layer then calls [`release_held_fds`] with
//! `keep`, which hands them over). So nothing that closes what is held here can close an
//! fd that JS code has. Held fds are closed when the message is garbage collected unread
//! (the layer's FinalizationRegistry calls [`release_held_fds`] without `keep`), or when the
//! thread's environment is torn down: a worker that ends between a `receive` settling and
//! the code that would have read its fds loses nothing.
//!
//! Unclaimed fds count against their socket's bound ([`Unclaimed`]), so a peer cannot fill
//! the fd table of a receiver that ignores them: at the bound, its receives wait for room
//! and ask the collector to run ([`nudge_collector`]), which releases the messages dropped
//! unread; if none comes (the messages that hold it are still reachable), a receive takes
//! its message with the fds that fit, as the kernel does when the fd table is full.
//!
//! An id per message, not an External per message: an External's weak reference and
//! finalizer cost more than the rest of a receive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use napi::{Env, JsValue};

use crate::settle::RawValue;

/// More than V8 lets external memory grow between two collections (64 MiB) before it starts
/// one: see [`nudge_collector`].
const NUDGE: i64 = 65 * 1024 * 1024;

/// Asks V8 to start a garbage collection, so that messages dropped with their fds unread
/// are released: external memory that grows past V8's limit starts one (the limit is at
/// most 64 MiB above what there is), and is given back at once. Node-API has no other way
/// to ask for a collection.
pub(crate) fn nudge_collector(env: &Env) {
  if env.adjust_external_memory(NUDGE).is_ok() {
    let _ = env.adjust_external_memory(-NUDGE);
  }
}

/// The received fds of one socket that no JS code has claimed yet, and their bound
/// (`maxQueuedFds`).
pub(crate) struct Unclaimed {
  count: AtomicUsize,
  max: AtomicUsize,
  /// Woken when the count goes down, or the bound up.
  room: Notify,
  /// A wait for room ended without any: receives take what fits without waiting, until
  /// the count goes down or the bound up.
  stalled: AtomicBool,
}

impl Unclaimed {
  pub(crate) fn new(max: usize) -> Arc<Self> {
    Arc::new(Self {
      count: AtomicUsize::new(0),
      max: AtomicUsize::new(max),
      room: Notify::new(),
      stalled: AtomicBool::new(false),
    })
  }

  pub(crate) fn max(&self) -> usize {
    self.max.load(Ordering::Relaxed)
  }

  pub(crate) fn set_max(&self, max: usize) {
    self.max.store(max, Ordering::Relaxed);
    self.stalled.store(false, Ordering::Release);
    self.room.notify_waiters();
  }

  pub(crate) fn stalled(&self) -> bool {
    self.stalled.load(Ordering::Acquire)
  }

  /// A wait for room ended without any (see [`Self::stalled`]).
  pub(crate) fn stall(&self) {
    self.stalled.store(true, Ordering::Release);
  }

  pub(crate) fn unstall(&self) {
    self.stalled.store(false, Ordering::Release);
  }

  /// Whether a receive may take another message (its fds may take the count past the bound
  /// by at most one message's worth, 253).
  pub(crate) fn has_room(&self) -> bool {
    self.count.load(Ordering::Acquire) < self.max()
  }

  /// Waits until [`Self::has_room`]. Cancel safe: it takes nothing.
  pub(crate) async fn room(&self) {
    loop {
      let woken = self.room.notified();
      if self.has_room() {
        return;
      }
      woken.await;
    }
  }

  /// Counts `fds` until they are dropped (closed) or handed to JS; with `fit`, only the
  /// first ones the bound has room for, the rest closed (whether any were).
  pub(crate) fn admit(self: &Arc<Self>, mut fds: Vec<OwnedFd>, fit: bool) -> (Admitted, bool) {
    let wanted = fds.len();
    let mut kept = wanted;
    let _ = self
      .count
      .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
        if fit {
          kept = self.max().saturating_sub(count).min(wanted);
        }
        Some(count + kept)
      });
    fds.truncate(kept);
    let admitted = Admitted {
      fds,
      of: Arc::clone(self),
    };
    (admitted, kept < wanted)
  }

  fn release(&self, count: usize) {
    if count > 0 {
      self.count.fetch_sub(count, Ordering::AcqRel);
      self.stalled.store(false, Ordering::Release);
      self.room.notify_waiters();
    }
  }
}

/// Received fds counted in their socket's [`Unclaimed`] until they are dropped (closed) or
/// handed to JS.
pub(crate) struct Admitted {
  fds: Vec<OwnedFd>,
  of: Arc<Unclaimed>,
}

impl Admitted {
  pub(crate) fn is_empty(&self) -> bool {
    self.fds.is_empty()
  }

  fn len(&self) -> usize {
    self.fds.len()
  }

  fn raw(&self) -> impl Iterator<Item = RawFd> + '_ {
    self.fds.iter().map(|fd| fd.as_raw_fd())
  }

  /// Gives the fds up: they are the caller's, and no longer count.
  fn hand_over(mut self) {
    let fds = std::mem::take(&mut self.fds);
    self.of.release(fds.len());
    for fd in fds {
      let _ = fd.into_raw_fd();
    }
  }
}

impl Drop for Admitted {
  fn drop(&mut self) {
    self.of.release(self.fds.len());
  }
}

#[derive(Default)]
struct Held {
  next: u64,
  fds: HashMap<u64, Admitted>,
}

thread_local! {
  /// `None` until this thread's environment first holds fds (its cleanup hook is added
  /// then), and again once that environment is gone.
  static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Holds `fds` for JS until [`release_held_fds`]; the id to release them with. (On an
/// error they are closed.)
pub(crate) fn hold(env: &Env, fds: Admitted) -> napi::Result<f64> {
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

/// What [`release_held_fds`] gives JS.
pub(crate) enum Released {
  /// Nothing: the fds were closed, or `id` was not held.
  Nothing,
  /// The count of fd numbers written into the scratch Buffer, from its byte 4096 on.
  InScratch(u32),
  /// The fd numbers, as an array (no room in the scratch Buffer).
  Numbers(RawValue),
}

/// The fds held under `id`, which are the caller's from now on (`keep`), or nothing, the
/// fds closed. Their numbers go into `scratch` (native-endian `i32`s from
/// [`crate::settle::FDS_AT`]) when they fit, or else into an array. [`Released::Nothing`]
/// also for an id not held (released already, or never given).
pub(crate) fn release_held_fds(
  env: &Env,
  id: f64,
  keep: bool,
  scratch: &mut [u8],
) -> napi::Result<Released> {
  if !(id >= 0.0 && id.fract() == 0.0) {
    return Ok(Released::Nothing);
  }
  let fds =
    HELD.with_borrow_mut(|slot| slot.as_mut().and_then(|held| held.fds.remove(&(id as u64))));
  let Some(fds) = fds else {
    return Ok(Released::Nothing);
  };
  if !keep {
    drop(fds);
    return Ok(Released::Nothing);
  }
  if crate::settle::write_fd_numbers(scratch, fds.raw(), fds.len()) {
    // At most SCM_MAX_FD (253) per message: a u32.
    let count = u32::try_from(fds.len()).unwrap_or(u32::MAX);
    fds.hand_over();
    return Ok(Released::InScratch(count));
  }
  // Made first: should that fail, dropping `fds` closes them (no number reached JS).
  let mut numbers = env.create_array(fds.len() as u32)?;
  for (i, fd) in fds.raw().enumerate() {
    numbers.set(i as u32, fd)?;
  }
  fds.hand_over();
  Ok(Released::Numbers(RawValue(numbers.raw())))
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::fs::File;
  use std::io::Read;
  use std::os::fd::FromRawFd;

  /// `n` copies of a pipe's write end, and its read end, which sees end-of-file once every
  /// copy is closed.
  fn writers(n: usize) -> (Vec<OwnedFd>, File) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    let mut copies: Vec<OwnedFd> = (1..n).map(|_| writer.try_clone().expect("dup")).collect();
    copies.push(writer);
    nix::fcntl::fcntl(
      &reader,
      nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("O_NONBLOCK");
    (copies, File::from(reader))
  }

  /// Whether any copy of the write end is still open.
  fn open(reader: &mut File) -> bool {
    reader.read(&mut [0u8; 1]).is_err()
  }

  #[test]
  fn counts_until_dropped_or_handed_over_and_has_room_below_the_bound() {
    let unclaimed = Unclaimed::new(5);
    let (first, mut first_reader) = writers(3);
    let (held, cut) = unclaimed.admit(first, false);
    assert!(!cut && unclaimed.has_room());
    let (second, mut second_reader) = writers(4);
    let (kept, cut) = unclaimed.admit(second, false);
    assert!(!cut);
    assert_eq!(kept.len(), 4, "one message may go past the bound");
    assert!(!unclaimed.has_room());
    let (third, mut third_reader) = writers(2);
    let (none, cut) = unclaimed.admit(third, true);
    assert!(cut && none.is_empty(), "no room: fitted, nothing kept");
    assert!(!open(&mut third_reader), "what did not fit is closed");
    drop(none);
    unclaimed.stall();
    drop(held);
    assert!(!open(&mut first_reader), "dropped: closed");
    assert_eq!(unclaimed.count.load(Ordering::Acquire), 4);
    assert!(unclaimed.has_room());
    assert!(!unclaimed.stalled(), "a release ends a stall");
    let numbers: Vec<RawFd> = kept.raw().collect();
    kept.hand_over();
    assert_eq!(
      unclaimed.count.load(Ordering::Acquire),
      0,
      "handed over: no longer counted"
    );
    assert!(open(&mut second_reader), "handed over: still open");
    for fd in numbers {
      // SAFETY: handed over above; closed once, here.
      drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    assert!(!open(&mut second_reader));
  }
}
