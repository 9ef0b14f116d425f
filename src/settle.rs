//! What tokio's threads hand to a JS thread without losing it at teardown.
//!
//! Each JS thread has a home here. Two things wait in it:
//! - parcels: results the push readers and acceptors hand over through their own
//!   threadsafe functions. When a JS environment is torn down (`worker.terminate()`,
//!   process exit) with items still queued in a threadsafe function, Node calls back with
//!   no environment and napi-rs drops nothing: an fd inside such an item would stay open
//!   for good. So those items carry only a [`Parcel`] number, and what they own waits here.
//! - settlements: the outcomes of the async classes' pending operations. One threadsafe
//!   function per thread (the doorbell) tells JS that some are ready; JS then settles the
//!   Promise of each by its id. The doorbell is referenced only while a referenced object
//!   has an operation pending (`ref()`/`unref()`), and rings once for any number of them.
//!
//! When the environment goes, its home closes everything still waiting, and refuses
//! (closes at once) whatever comes later.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{
  BufferSlice, FnArgs, Function, FunctionRef, JsValuesTupleIntoVec, ToNapiValue, Uint8Array,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env, JsValue, Status};

use crate::error::tagged;
use crate::error::{self, internal, Result};
use crate::spare;
use crate::sync::lock;
use crate::turnstile::Held;

/// The number of something deposited in a [`Home`]; it owns nothing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parcel(u64);

/// A claim on something deposited in a home: what travels through a threadsafe function
/// instead of the thing itself. Claimed on the JS thread; dropped unclaimed (the message
/// was never delivered: its socket closed, say), it drops the deposit too.
pub struct Deposit {
  home: Arc<Home>,
  parcel: Parcel,
}

impl Deposit {
  /// Deposits `value` in `home`. `None` when the environment is gone: `value` is dropped
  /// (its fds closed) at once.
  pub fn new<T: Send + 'static>(home: &Arc<Home>, value: T) -> Option<Self> {
    let parcel = home.parcels.deposit(value)?;
    Some(Self {
      home: Arc::clone(home),
      parcel,
    })
  }

  /// Takes the deposit back, on the JS thread. `None` if it is gone (closed at teardown).
  pub fn claim<T: 'static>(self) -> Option<T> {
    // Drop then finds nothing left to discard.
    self.home.parcels.claim(self.parcel)
  }
}

impl Drop for Deposit {
  fn drop(&mut self) {
    self.home.parcels.discard(self.parcel);
  }
}

type Item = Box<dyn Any + Send>;

/// A JS value made on the JS thread, passed straight on to a JS call in the same scope.
pub struct RawValue(pub sys::napi_value);

impl ToNapiValue for RawValue {
  unsafe fn to_napi_value(_env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
    Ok(value.0)
  }
}

/// `(id, error, value, callback)`: pending operation `id` settled, with `value` or with
/// `error` (`"[CODE] message"`) (a read whose bytes fit the scratch area settles through
/// `onRead()` instead: see [`Home::read_in_scratch`]); `callback` numbers the loop callback of the JS-thread runtime that delivers it (-1 on
/// the threaded runtime). JS ignores id 0, which the doorbell itself passes.
pub type SettleArgs = FnArgs<(f64, Option<String>, Option<RawValue>, f64)>;
type Doorbell = ThreadsafeFunction<(), (), SettleArgs, Status, false>;

/// What a finished operation does on the JS thread, just before its Promise settles:
/// queue the fds a read brought, hand the turn to the next read, make the JS value. It
/// owns what the operation produced, so dropping it unrun (at teardown) closes any fd.
pub type Finish = Box<dyn FnOnce(&Env) -> Result<Settled> + Send>;

/// How a finished operation settles.
pub enum Settled {
  /// With this value (`None`: `null`).
  Value(Option<RawValue>),
  /// With these bytes as a Buffer: small ones through the scratch area of the operation's
  /// copy of the JS layer (see [`Home::read_in_scratch`]), larger ones made here.
  Bytes(Vec<u8>),
  /// Not yet: it started over (an accept whose connection another holder took first).
  Later,
}

struct Settlement {
  id: f64,
  finish: Finish,
}

/// A JS call made on the JS thread when the home delivers (push deliveries on the
/// JS-thread runtime), in a handle scope of its own; it calls through [`call_js`], which
/// runs the call as an I/O callback. Dropped unrun at teardown, with what it owns.
pub type Posted = Box<dyn FnOnce(&Env) -> napi::Result<()> + Send>;

/// Things deposited for a JS thread, by number, until it claims them or goes.
#[derive(Default)]
struct Parcels {
  items: Mutex<HashMap<u64, Item>>,
  next: AtomicU64,
  /// Cleared once the environment is being torn down.
  open: AtomicBool,
}

impl Parcels {
  fn open() -> Self {
    Self {
      open: AtomicBool::new(true),
      ..Self::default()
    }
  }

  fn is_open(&self) -> bool {
    self.open.load(Ordering::Acquire)
  }

  fn deposit<T: Send + 'static>(&self, value: T) -> Option<Parcel> {
    let mut items = lock(&self.items);
    // Checked under the lock, so a close cannot slip between the check and the insert.
    if !self.is_open() {
      drop(items);
      drop(value);
      return None;
    }
    let number = self.next.fetch_add(1, Ordering::Relaxed);
    items.insert(number, Box::new(value));
    Some(Parcel(number))
  }

  fn claim<T: 'static>(&self, parcel: Parcel) -> Option<T> {
    let item = lock(&self.items).remove(&parcel.0)?;
    item.downcast::<T>().ok().map(|boxed| *boxed)
  }

  /// Drops what `parcel` names, if it is still here (outside the lock: it may close fds).
  fn discard(&self, parcel: Parcel) {
    let item = lock(&self.items).remove(&parcel.0);
    drop(item);
  }

  fn close(&self) {
    let items: Vec<Item> = {
      let mut items = lock(&self.items);
      self.open.store(false, Ordering::Release);
      items.drain().map(|(_, item)| item).collect()
    };
    // Dropped outside the lock: each drop may close fds.
    drop(items);
  }
}

/// Where results for one JS thread wait to be claimed there.
pub struct Home {
  parcels: Parcels,
  settled: Mutex<Vec<Settlement>>,
  /// An empty list that `deliver` swaps with `settled`, so that neither is allocated anew
  /// per delivery.
  spare: Mutex<Vec<Settlement>>,
  posted: Mutex<Vec<Posted>>,
  /// Places in line that wait for the reactions to the outcomes delivered (see
  /// [`Home::after_reactions`]).
  after_reactions: Mutex<Vec<Held>>,
  /// The doorbell has been rung and has not yet run: no need to ring again.
  rung: AtomicBool,
  doorbell: Mutex<Option<Doorbell>>,
  /// Each copy of the JS layer loaded on this thread (a test runner may load it again per
  /// test file): operation ids name their copy.
  copies: Mutex<Vec<LayerCopy>>,
  /// Copies of the JS layer that have a referenced operation pending.
  referenced: Mutex<u32>,
}

/// A copy of the JS layer, as settlements and push deliveries reach it.
struct LayerCopy {
  on_settle: FunctionRef<SettleArgs, ()>,
  /// `onRead()`: settles the read whose header and bytes wait in `scratch` (see
  /// [`Home::read_in_scratch`]).
  on_read: FunctionRef<(), ()>,
  /// The copy's scratch area (held by reference: see [`Home::bytes_value`]): the scratch
  /// Buffer's bytes, then a header of [`HEADER`] bytes.
  scratch: Uint8Array,
  /// The copy's vote for the doorbell, shared with it: byte 0 is 1 while the copy counts
  /// in [`Home::set_referenced`], byte 1 is 1 when that vote is to end once the delivery
  /// is over (see [`Home::end_owed_votes`]).
  votes: Uint8Array,
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
      parcels: Parcels::open(),
      settled: Mutex::default(),
      spare: Mutex::default(),
      posted: Mutex::default(),
      after_reactions: Mutex::default(),
      rung: AtomicBool::new(false),
      doorbell: Mutex::default(),
      copies: Mutex::default(),
      referenced: Mutex::default(),
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
  /// Queues the outcome of operation `id` (from any thread) and rings the doorbell. When
  /// the environment is gone, `finish` is dropped at once instead (closing what it owns).
  pub fn settle(&self, id: f64, finish: Finish) {
    {
      let mut settled = lock(&self.settled);
      if !self.parcels.is_open() {
        drop(settled);
        drop(finish);
        return;
      }
      settled.push(Settlement { id, finish });
    }
    // On the JS-thread runtime, JS gets them right after the drive that produced them.
    if crate::runtime::deliver_later(deliver_here) {
      return;
    }
    self.ring();
  }

  /// Rings the doorbell of the threaded runtime: a call of its own delivers.
  fn ring(&self) {
    if !self.rung.swap(true, Ordering::AcqRel) {
      if let Some(doorbell) = lock(&self.doorbell).as_ref() {
        doorbell.call((), ThreadsafeFunctionCallMode::NonBlocking);
      }
    }
  }

  /// Called during a delivery: keeps `kept` (a read's place in line) until the reactions to
  /// the outcome being delivered have run, the code after an `await` of it included (a
  /// drive that code starts, for another stream's read say, must not serve the next read
  /// yet). The JS-thread runtime delivers each outcome in a callback scope of its own,
  /// whose close runs them: `kept` goes right after. The threaded runtime delivers a batch
  /// in one call, after which they run: `kept` goes at the start of the next call, which
  /// the delivery rings for.
  pub fn after_reactions(&self, kept: Held) {
    lock(&self.after_reactions).push(kept);
  }

  /// Gives up what waited for the reactions to the outcomes delivered so far. (Dropped
  /// under the lock, which keeps the list's memory: dropping a place in line only wakes
  /// the next one's task.)
  fn reactions_done(&self) {
    lock(&self.after_reactions).clear();
  }

  /// Queues a JS call for the JS thread's next delivery (right after the drive on the
  /// JS-thread runtime, from any thread on the threaded one, which rings for it). When the
  /// environment is gone, `call` is dropped at once instead.
  pub fn post(&self, call: Posted) {
    {
      let mut posted = lock(&self.posted);
      if !self.parcels.is_open() {
        drop(posted);
        drop(call);
        return;
      }
      posted.push(call);
    }
    if !crate::runtime::deliver_later(deliver_here) {
      self.ring();
    }
  }

  /// On the JS thread: settles every queued operation through `on_settle`, then makes the
  /// posted calls. A JS callback that throws is reported as uncaught (as Node does for an
  /// I/O callback), and the rest are still delivered.
  fn deliver(&self, env: &Env) -> napi::Result<()> {
    // Cleared first: a settlement queued from now on rings again.
    self.rung.store(false, Ordering::Release);
    // The reactions to the last delivery have run by now.
    self.reactions_done();
    // Every one is delivered even if a call fails; the first failure is returned.
    let mut outcome = Ok(());
    let mut settled = std::mem::take(&mut *lock(&self.spare));
    std::mem::swap(&mut settled, &mut *lock(&self.settled));
    // In call order (ids grow with each call of a copy of the JS layer): operations that
    // end together, as every pending one does at `close()`, settle in the order they were
    // made, not in the order their tasks happened to run.
    settled.sort_by(|a, b| a.id.total_cmp(&b.id));
    let settling = !settled.is_empty();
    // Which loop callback of the JS-thread runtime delivers (JS counts the operations that
    // complete at once between two; one callback may deliver many outcomes, each running
    // code of its own). The threaded runtime's doorbell may be called many times in one
    // turn of the loop: -1, and JS watches the turns itself.
    let callback = crate::runtime::turn().map_or(-1.0, |(turn, _)| turn as f64);
    if settling {
      let here = !crate::runtime::runs_elsewhere();
      // The caller's handle scope holds the values made for a lone settlement (a round
      // trip's); with more, each gets a scope of its own.
      let scoped = settled.len() > 1;
      for Settlement { id, finish } in settled.drain(..) {
        let settle = || {
          // A value that could not be made fails the operation (user code that a setter ran
          // may have thrown: that is reported as uncaught first).
          let failed = |e: error::Error| {
            report_pending(env);
            Some((Some(tagged(e)), None))
          };
          let args = match finish(env) {
            Ok(Settled::Later) => None,
            Ok(Settled::Value(value)) => Some((None, value)),
            Ok(Settled::Bytes(data)) => match self.read_in_scratch(env, id, callback, &data) {
              // No value made: the copy's `onRead()` finds everything in its scratch area.
              Ok(Some(on_read)) => {
                spare::give_back(data);
                return crate::runtime::call_as_io(env, on_read, &[]);
              }
              // Nothing fits the scratch area then: the bytes become a Buffer.
              Ok(None) => match buffer_value(env, data) {
                Ok(value) => Some((None, Some(value))),
                Err(e) => failed(internal(e)),
              },
              Err(e) => failed(internal(e)),
            },
            Err(e) => failed(e),
          };
          let Some((error, value)) = args else {
            return Ok(());
          };
          let argv = settle_argv(env, id, error, value, callback)?;
          // Borrowed back, not held under the lock: JS may call into the addon from it.
          // The area is armed for the call, with the id it settles, whatever it holds (see
          // `arm`); an area that cannot be reached does not stop the settlement.
          let on_settle = lock(&self.copies)
            .get_mut(copy_of(id))
            .map(|copy| {
              let _ = with_bytes_now(env, &mut copy.scratch, |area| {
                if let Some((_, header)) = split_header(area) {
                  write_fields(header, [id]);
                  arm(header);
                }
              });
              copy.on_settle.borrow_back(env)
            })
            .transpose()?;
          let Some(on_settle) = on_settle else {
            return Ok(());
          };
          crate::runtime::call_as_io(env, on_settle.raw(), &argv)
        };
        let called = if scoped {
          crate::runtime::with_handle_scope(env, settle)
        } else {
          settle()
        };
        outcome = outcome.and(called);
        // On the JS-thread runtime, its callback scope has closed: the reactions ran.
        if here {
          self.reactions_done();
        }
      }
    }
    // Kept, empty, for the next delivery.
    *lock(&self.spare) = settled;
    let posted = std::mem::take(&mut *lock(&self.posted));
    for call in posted {
      let mut call = Some(call);
      let scoped = crate::runtime::with_handle_scope(env, || match call.take() {
        Some(call) => call(env),
        None => Ok(()),
      });
      // A scope that could not be opened: the call is made all the same (its values then
      // live in the delivery's scope), since dropping it would lose a chunk or a doorbell.
      outcome = outcome.and(match call.take() {
        Some(call) => call(env),
        None => scoped,
      });
    }
    // Only a settlement marks a vote owed.
    if settling {
      outcome = outcome.and(self.end_owed_votes(env));
    }
    // A call of its own gives up what waits for this delivery's reactions.
    if !lock(&self.after_reactions).is_empty() {
      self.ring();
    }
    outcome
  }

  /// Ends the doorbell votes that copies of the JS layer left owed during a delivery.
  ///
  /// A copy whose last referenced operation settles (always inside a delivery) does not
  /// unref the doorbell then: the code its settlement runs usually starts the next
  /// operation (a read after a read), which would ref it again, two calls into the addon
  /// per round trip. It marks its vote owed instead, and starting an operation clears the
  /// mark; here, after every call of the delivery and the microtasks they ran, a vote still
  /// owed ends.
  ///
  /// Each copy's vote ends in the native count as its mark is cleared, and a copy whose
  /// votes cannot be read does not stop the others: a vote left counted would keep the
  /// process alive for good.
  fn end_owed_votes(&self, env: &Env) -> napi::Result<()> {
    let mut outcome = Ok(());
    let copies = lock(&self.copies).len();
    for copy in 0..copies {
      let owed = match lock(&self.copies).get_mut(copy) {
        Some(layer) => take_owed_vote(env, &mut layer.votes),
        None => Ok(false),
      };
      outcome = outcome.and(match owed {
        Ok(true) => self.set_referenced(env, false),
        other => other.map(drop),
      });
    }
    outcome
  }

  /// `data` for JS, on the JS thread, right before the call to copy `copy` of the JS layer
  /// that passes it (a push delivery). Small data go into that copy's scratch Buffer and
  /// this returns their count: the first thing the JS callback does is copy them out, so no
  /// other JS runs between this write and that copy. Larger data become a Buffer (see
  /// [`buffer_value`]): the second copy costs more than the Buffer it saves.
  pub(crate) fn bytes_value(
    &self,
    env: &Env,
    copy: usize,
    data: Vec<u8>,
  ) -> napi::Result<RawValue> {
    let copied = match lock(&self.copies).get_mut(copy) {
      Some(layer) if data.len() <= SCRATCH_MAX => write_scratch(env, &mut layer.scratch, &data)?,
      _ => false,
    };
    if !copied {
      return buffer_value(env, data);
    }
    // At most SCRATCH_MAX.
    let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
    spare::give_back(data);
    // SAFETY: a value made in this environment, on its thread, for the call that follows.
    let value = unsafe { u32::to_napi_value(env.raw(), count) }?;
    Ok(RawValue(value))
  }

  /// The fast way a read's `data` reaches JS: into the scratch area of operation `id`'s
  /// copy of the JS layer, with a header (`id`, `callback` as in [`SettleArgs`], the byte
  /// count) after the scratch Buffer's bytes, for the copy's `onRead()` to settle it
  /// with no argument made. Returns that function, to be called at once (it reads the
  /// header and copies the bytes out before anything else runs); `None` when the bytes do
  /// not fit (or the area is detached): the read then settles through `onSettle`.
  fn read_in_scratch(
    &self,
    env: &Env,
    id: f64,
    callback: f64,
    data: &[u8],
  ) -> napi::Result<Option<sys::napi_value>> {
    if data.len() > SCRATCH_MAX {
      return Ok(None);
    }
    let mut copies = lock(&self.copies);
    let Some(layer) = copies.get_mut(copy_of(id)) else {
      return Ok(None);
    };
    let written = with_bytes_now(env, &mut layer.scratch, |area| {
      let Some((bytes, header)) = split_header(area) else {
        return false;
      };
      let Some(start) = bytes.get_mut(..data.len()) else {
        return false;
      };
      start.copy_from_slice(data);
      // At most SCRATCH_MAX: exact as a double.
      write_fields(header, [id, callback, data.len() as f64, ARMED]);
      true
    })?;
    if !written {
      return Ok(None);
    }
    Ok(Some(layer.on_read.borrow_back(env)?.raw()))
  }

  /// Writes the numbers of `count` fds into copy `copy`'s scratch area, from [`FDS_AT`]
  /// on (native byte order, 4 bytes each), for the JS callback called next to read first
  /// thing, as it copies the scratch bytes out. `false` when they do not fit (or the area
  /// is detached).
  pub(crate) fn fds_in_scratch(
    &self,
    env: &Env,
    copy: usize,
    fds: impl Iterator<Item = RawFd>,
    count: usize,
  ) -> napi::Result<bool> {
    let mut copies = lock(&self.copies);
    let Some(layer) = copies.get_mut(copy) else {
      return Ok(false);
    };
    with_bytes_now(env, &mut layer.scratch, |area| {
      let Some((bytes, header)) = split_header(area) else {
        return false;
      };
      if !write_fd_numbers(bytes, fds, count) {
        return false;
      }
      arm(header);
      true
    })
  }

  /// Whether the doorbell keeps the event loop alive: while a referenced object has an
  /// operation pending. Each copy of the JS layer counts its own and says when its count
  /// leaves or reaches 0; the doorbell is referenced while any copy says so.
  #[allow(deprecated)] // napi-rs keeps refer/unref for exactly this: a handle that may idle.
  pub fn set_referenced(&self, env: &Env, referenced: bool) -> napi::Result<()> {
    let mut count = lock(&self.referenced);
    let before = *count;
    *count = if referenced {
      before + 1
    } else {
      before.saturating_sub(1)
    };
    match lock(&self.doorbell).as_mut() {
      Some(doorbell) if before == 0 && *count > 0 => doorbell.refer(env),
      Some(doorbell) if before > 0 && *count == 0 => doorbell.unref(env),
      _ => Ok(()),
    }
  }

  fn close(&self) {
    // Closed under the settlement lock: a settlement queued from now on is refused.
    let settled = {
      let mut settled = lock(&self.settled);
      self.parcels.close();
      std::mem::take(&mut *settled)
    };
    drop(settled);
    let posted = std::mem::take(&mut *lock(&self.posted));
    drop(posted);
    self.reactions_done();
    lock(&self.copies).clear();
    lock(&self.doorbell).take();
  }
}

/// `onSettle`'s arguments (see [`SettleArgs`]), made here and kept on the stack.
fn settle_argv(
  env: &Env,
  id: f64,
  error: Option<String>,
  value: Option<RawValue>,
  callback: f64,
) -> napi::Result<[sys::napi_value; 4]> {
  // SAFETY: values made in this environment, on its thread, for the call that follows.
  unsafe {
    Ok([
      f64::to_napi_value(env.raw(), id)?,
      Option::<String>::to_napi_value(env.raw(), error)?,
      Option::<RawValue>::to_napi_value(env.raw(), value)?,
      f64::to_napi_value(env.raw(), callback)?,
    ])
  }
}

/// Calls `function` as Node calls an event handler from an I/O callback: what it throws
/// goes to `process.on('uncaughtException')` (or ends the process, as any uncaught
/// exception would), and the caller carries on; on a delivery of the JS-thread runtime,
/// the microtasks and `process.nextTick` callbacks it queued run before it returns (see
/// `runtime::call_as_io`). Only a failure to make the call is an error.
pub(crate) fn call_js<Args: JsValuesTupleIntoVec>(
  env: &Env,
  function: &Function<'_, Args, ()>,
  args: Args,
) -> napi::Result<()> {
  let argv = args.into_vec(env.raw())?;
  crate::runtime::call_as_io(env, function.raw(), &argv)
}

/// Settles what waits in this thread's home (called by the JS-thread runtime, in a
/// callback scope).
fn deliver_here(env: &Env) {
  let home = HOME.try_with(|slot| slot.borrow().clone()).ok().flatten();
  if let Some(home) = home {
    if let Err(e) = home.deliver(env) {
      // A failure to call JS, or to make a call's arguments: reported as uncaught (there
      // is no JS on the stack to throw to).
      if !report_pending(env) {
        if let Ok(error) = env.create_error(napi::Error::from_reason(e.reason)) {
          // SAFETY: a value of this live environment, on its thread.
          unsafe { sys::napi_fatal_exception(env.raw(), error.raw()) };
        }
      }
    }
  }
}

/// Reports the JS exception that a failed N-API call left pending (user code run by a
/// setter threw, say) as uncaught, as Node reports one thrown by an I/O callback, so that
/// the calls that follow run normally. Whether there was one.
pub(crate) fn report_pending(env: &Env) -> bool {
  let mut pending = false;
  // SAFETY: plain N-API calls on the calling JS thread's live environment, with
  // out-pointers to locals.
  unsafe {
    if sys::napi_is_exception_pending(env.raw(), &mut pending) != sys::Status::napi_ok || !pending {
      return false;
    }
    let mut thrown = std::ptr::null_mut();
    if sys::napi_get_and_clear_last_exception(env.raw(), &mut thrown) == sys::Status::napi_ok {
      sys::napi_fatal_exception(env.raw(), thrown);
    }
  }
  true
}

/// Starts the settlement of async operations on this JS thread: `onSettle(id, error,
/// value, callback)` settles the Promise of operation `id` (see
/// [`SettleArgs`]); `onRead()` settles the read whose header and bytes wait in `scratch`
/// (see [`Home::read_in_scratch`]). `scratch` is the copy's scratch area: the bytes
/// passed to JS (and fd numbers, see [`Home::fds_in_scratch`]), then a header of
/// [`HEADER`] bytes. `votes` (2 bytes) is the copy's vote for the
/// doorbell: byte 0 is 1 while it counts in (`referenceSettlements`), byte 1 is 1 when the
/// vote is to end after the current delivery (see `Home::end_owed_votes`). Called by each
/// copy of the TypeScript layer when it loads; returns the copy's number `c`, and its
/// operation ids are `n * 65536 + c`.
#[napi_derive::napi(
  ts_args_type = "onSettle: (id: number, error: string | null, value: unknown, callback: number) => void, onRead: () => void, scratch: Uint8Array, votes: Uint8Array"
)]
#[cfg_attr(test, allow(dead_code))]
pub fn init_settlements(
  env: Env,
  on_settle: Function<'_, SettleArgs, ()>,
  on_read: Function<'_, (), ()>,
  mut scratch: Uint8Array,
  mut votes: Uint8Array,
) -> napi::Result<u32> {
  check_scratch(&env, &mut scratch)?;
  if scratch.len() < SCRATCH_MAX + HEADER {
    return Err(napi::Error::new(
      Status::InvalidArg,
      "the scratch area is too small",
    ));
  }
  check_scratch(&env, &mut votes)?;
  let home = home(&env).map_err(|e| napi::Error::from_reason(e.reason))?;
  let mut copies = lock(&home.copies);
  let copy = copies.len();
  if copy >= COPIES {
    return Err(napi::Error::from_reason(format!(
      "fd-queue was loaded more than {COPIES} times on this thread"
    )));
  }
  copies.push(LayerCopy {
    on_settle: on_settle.create_ref()?,
    on_read: on_read.create_ref()?,
    scratch,
    votes,
  });
  drop(copies);
  if lock(&home.doorbell).is_some() {
    return Ok(copy as u32);
  }
  let delivering = Arc::clone(&home);
  let mut doorbell: Doorbell = on_settle
    .build_threadsafe_function::<()>()
    .callee_handled::<false>()
    .build_callback(move |ctx| {
      delivering.deliver(&ctx.env)?;
      Ok((0.0, None, None, -1.0).into())
    })?;
  // Nothing is pending yet: the doorbell alone must not keep the process alive.
  #[allow(deprecated)]
  doorbell.unref(&env)?;
  *lock(&home.doorbell) = Some(doorbell);
  Ok(copy as u32)
}

/// Copies of the JS layer one thread can hold: an operation id is `n * COPIES + copy`.
const COPIES: usize = 1 << 16;

/// The copy of the JS layer that operation `id` belongs to.
fn copy_of(id: f64) -> usize {
  (id as u64 % COPIES as u64) as usize
}

/// `ref`/`unref` of the settlement doorbell; see `Home::set_referenced`.
#[napi_derive::napi]
#[cfg_attr(test, allow(dead_code))]
pub fn reference_settlements(env: Env, referenced: bool) -> napi::Result<()> {
  let home = home(&env).map_err(|e| napi::Error::from_reason(e.reason))?;
  home.set_referenced(&env, referenced)
}

/// Runs `op` on tokio and settles operation `id` with what `finish` makes of its outcome on
/// the JS thread.
pub(crate) fn settle_later<T: Send + 'static>(
  home: Arc<Home>,
  id: f64,
  op: impl std::future::Future<Output = Result<T>> + Send + 'static,
  finish: impl FnOnce(&Env, T) -> Result<Settled> + Send + 'static,
) {
  settle_later_keeping(home, id, op, finish, ());
}

/// [`settle_later`], keeping `keep` until the outcome is delivered to JS (or dropped
/// undelivered): a [`crate::turnstile::Undelivered`], say.
pub(crate) fn settle_later_keeping<T: Send + 'static, K: Send + 'static>(
  home: Arc<Home>,
  id: f64,
  op: impl std::future::Future<Output = Result<T>> + Send + 'static,
  finish: impl FnOnce(&Env, T) -> Result<Settled> + Send + 'static,
  keep: K,
) {
  crate::runtime::spawn(settling(home, id, op, finish, keep));
}

/// Runs `op`, then settles operation `id` with what `finish` makes of its outcome (with
/// `keep` kept until then): the task that [`settle_later_keeping`] spawns.
pub(crate) fn settling<T: Send + 'static, K: Send + 'static>(
  home: Arc<Home>,
  id: f64,
  op: impl std::future::Future<Output = Result<T>> + Send + 'static,
  finish: impl FnOnce(&Env, T) -> Result<Settled> + Send + 'static,
  keep: K,
) -> impl std::future::Future<Output = ()> + Send + 'static {
  let op = async move { op.await.map(|value| (value, ())) };
  settling_in_line(home, id, op, finish, keep)
}

/// [`settling`] for an operation whose outcome comes with its place in a line (a
/// [`crate::turnstile::Ticket`]): the place is given up right after the outcome is queued
/// for JS, so the next operation may go at once, and its outcome is queued (and reaches JS)
/// after this one.
pub(crate) fn settling_in_line<T: Send + 'static, P: Send + 'static, K: Send + 'static>(
  home: Arc<Home>,
  id: f64,
  op: impl std::future::Future<Output = Result<(T, P)>> + Send + 'static,
  finish: impl FnOnce(&Env, T) -> Result<Settled> + Send + 'static,
  keep: K,
) -> impl std::future::Future<Output = ()> + Send + 'static {
  // On the heap at once: an operation's future takes kilobytes (a read's about 3 KiB),
  // which each move on the way to the run queue would copy.
  let op = Box::pin(op);
  async move {
    let (settle, place): (Finish, Option<P>) = match op.await {
      Ok((value, place)) => (
        Box::new(move |env| {
          let _kept = keep;
          finish(env, value)
        }),
        Some(place),
      ),
      Err(e) => (
        Box::new(move |_| {
          let _kept = keep;
          Err(e)
        }),
        None,
      ),
    };
    home.settle(id, settle);
    drop(place);
  }
}

/// A byte count as a JS number value.
pub(crate) fn number(env: &Env, n: f64) -> Result<Settled> {
  let value = env.create_double(n).map_err(internal)?;
  Ok(Settled::Value(Some(RawValue(value.raw()))))
}

/// The header after the bytes of a copy's scratch area: the `id`, `callback` and byte
/// count of the read that `onRead()` settles, and whether the area holds what a JS call is
/// about to copy out ([`arm`]), as doubles in native byte order (JS reads them through a
/// Float64Array).
const HEADER: usize = 32;

/// The last field of [`HEADER`] while the area holds what a JS call is to copy out (JS
/// sets it back to 0 once it has).
const ARMED: f64 = 1.0;

/// Where the fd numbers that [`Home::fds_in_scratch`] passes begin in a scratch area: past
/// the bytes passed there (at most [`SCRATCH_MAX`]); also where a message received at once
/// passes what it is besides its bytes (`message::receive`).
pub(crate) const FDS_AT: usize = SCRATCH_MAX;

/// Writes the numbers of `count` fds into a scratch Buffer's `bytes`, native-endian `i32`s
/// from [`FDS_AT`] on, for JS to read through an Int32Array. `false` when they do not fit.
pub(crate) fn write_fd_numbers(
  bytes: &mut [u8],
  fds: impl Iterator<Item = RawFd>,
  count: usize,
) -> bool {
  let end = count.checked_mul(4).and_then(|n| n.checked_add(FDS_AT));
  let Some(region) = end.and_then(|end| bytes.get_mut(FDS_AT..end)) else {
    return false;
  };
  for (slot, fd) in region.chunks_exact_mut(4).zip(fds) {
    slot.copy_from_slice(&fd.to_ne_bytes());
  }
  true
}

/// The most bytes [`Home::bytes_value`] passes through a scratch Buffer. That costs a
/// second copy, cheaper than the Buffer it saves for small data only.
pub(crate) const SCRATCH_MAX: usize = 4096;

/// What `napi_get_typedarray_info` says now of the typed array `scratch` refers to:
/// `(data, length, arraybuffer)`.
fn typed_array_now(
  env: &Env,
  scratch: &mut Uint8Array,
) -> napi::Result<(*mut u8, usize, sys::napi_value)> {
  // SAFETY: plain N-API calls on the calling JS thread's live environment: the value comes
  // from the typed array's own reference (which napi-rs leaves in place), the out-pointers
  // are locals.
  unsafe {
    let value = <&mut Uint8Array>::to_napi_value(env.raw(), scratch)?;
    let (mut kind, mut length, mut offset) = (0, 0, 0);
    let mut data = std::ptr::null_mut();
    let mut buffer = std::ptr::null_mut();
    let status = sys::napi_get_typedarray_info(
      env.raw(),
      value,
      &mut kind,
      &mut length,
      &mut data,
      &mut buffer,
      &mut offset,
    );
    if status != sys::Status::napi_ok {
      return Err(napi::Error::new(
        Status::from(status),
        "napi_get_typedarray_info",
      ));
    }
    Ok((data.cast(), length, buffer))
  }
}

/// Clears the owed mark in a copy's `votes`, and its vote with it; `true` if it was owed.
fn take_owed_vote(env: &Env, votes: &mut Uint8Array) -> napi::Result<bool> {
  with_bytes_now(env, votes, |votes| match votes {
    [vote, owed, ..] if *owed == 1 => {
      (*vote, *owed) = (0, 0);
      true
    }
    _ => false,
  })
}

/// Refuses a scratch Buffer (or votes) whose bytes are not an ArrayBuffer's (a
/// SharedArrayBuffer's may be in use on another thread meanwhile), once, when it is
/// registered: a typed array never changes its buffer.
fn check_scratch(env: &Env, scratch: &mut Uint8Array) -> napi::Result<()> {
  let (_, _, buffer) = typed_array_now(env, scratch)?;
  let mut plain = false;
  // SAFETY: as in `typed_array_now`; `buffer` is a value it just returned.
  let status = unsafe { sys::napi_is_arraybuffer(env.raw(), buffer, &mut plain) };
  if status != sys::Status::napi_ok || !plain {
    return Err(napi::Error::new(
      Status::InvalidArg,
      "the scratch Buffer and votes must be Uint8Arrays over ArrayBuffers",
    ));
  }
  Ok(())
}

/// Writes `bytes` at the start of the scratch Buffer `scratch` refers to. `false` when
/// they do not fit (a detached buffer has no bytes).
fn write_scratch(env: &Env, scratch: &mut Uint8Array, bytes: &[u8]) -> napi::Result<bool> {
  with_bytes_now(env, scratch, |scratch| {
    let Some((area, header)) = split_header(scratch) else {
      return Ok(false);
    };
    match area.get_mut(..bytes.len()) {
      Some(start) => {
        start.copy_from_slice(bytes);
        arm(header);
        Ok(true)
      }
      None => Ok(false),
    }
  })?
}

/// A scratch area as its bytes and its header ([`HEADER`] bytes at its end); `None` for
/// one too small to have a header (detached).
fn split_header(area: &mut [u8]) -> Option<(&mut [u8], &mut [u8])> {
  let at = area.len().checked_sub(HEADER)?;
  Some(area.split_at_mut(at))
}

/// Writes `values` into the header fields from the first on, as doubles in native order.
fn write_fields<const N: usize>(header: &mut [u8], values: [f64; N]) {
  for (field, value) in header.chunks_exact_mut(8).zip(values) {
    field.copy_from_slice(&value.to_ne_bytes());
  }
}

/// Marks a scratch area, by its `header`, as holding what a JS call is about to copy out
/// (the header's last field), or as the area of a copy whose settlement call is on its way
/// with nothing in it: until that call has begun, code that runs first (an `async_hooks`
/// `before` callback that Node runs right before the call, say) must not receive into the
/// area, and a read it starts of the object whose operation settles (its id in the first
/// field) settles later (the JS layer's `readMustDefer`), so that it cannot resolve before
/// the one being settled, with that one's fds.
fn arm(header: &mut [u8]) {
  if let Some(last) = header.len().checked_sub(8) {
    write_fields(&mut header[last..], [ARMED]);
  }
}

/// Runs `f` on the bytes of the typed array `array` refers to, looked up now (a typed
/// array caches its data pointer, which its ArrayBuffer's detachment would leave dangling;
/// a detached one has no bytes).
fn with_bytes_now<R>(
  env: &Env,
  array: &mut Uint8Array,
  f: impl FnOnce(&mut [u8]) -> R,
) -> napi::Result<R> {
  let (data, length, _) = typed_array_now(env, array)?;
  if data.is_null() {
    return Ok(f(&mut []));
  }
  // SAFETY: `data` starts the `length` bytes of a live ArrayBuffer (checked at
  // registration, so never shared with another thread), kept alive by the reference; this
  // runs on the JS thread and `f` is Rust code that runs no JS, so nothing can detach or
  // touch them meanwhile, and no other slice of them exists.
  let bytes = unsafe { std::slice::from_raw_parts_mut(data, length) };
  Ok(f(bytes))
}

/// Bytes as a Buffer value: a small one copied into V8's memory (cheaper than an external
/// buffer, whose finalizer costs more than the copy), a large one handed over. A read
/// buffer of the size `spare` keeps goes back there once copied, or once JS lets go of it.
pub(crate) fn buffer_value(env: &Env, data: Vec<u8>) -> napi::Result<RawValue> {
  if data.len() <= spare::COPIED_MAX {
    let buffer = BufferSlice::copy_from(env, &data)?;
    spare::give_back(data);
    return Ok(RawValue(buffer.raw()));
  }
  if data.capacity() != spare::SIZE {
    return Ok(RawValue(BufferSlice::from_data(env, data)?.raw()));
  }
  let mut data = data;
  let (bytes, len) = (data.as_mut_ptr(), data.len());
  // SAFETY: `bytes` points at the `len` initialised bytes of `data`'s heap allocation,
  // which moving `data` into the finalizer's hint does not move. It stays allocated, and
  // untouched by Rust, until the finalizer runs: after V8 has let go of the Buffer's
  // memory (Node calls it once, on the JS thread), at the environment's teardown, when no
  // JS of it runs any more, or at once on a runtime that copies instead of allowing
  // external buffers (napi-rs copies before it calls the finalizer).
  let buffer = unsafe {
    BufferSlice::from_external(env, bytes, len, data, |_env, data| spare::give_back(data))
  }?;
  Ok(RawValue(buffer.raw()))
}

/// Whether a waiting threadsafe function keeps the event loop alive (a no-op once the
/// task has released it).
#[allow(deprecated)] // napi-rs keeps refer/unref for exactly this: a handle that may idle.
pub(crate) fn set_ref<T: 'static, Args: 'static + napi::bindgen_prelude::JsValuesTupleIntoVec>(
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

#[cfg(test)]
mod tests {
  use super::*;
  use std::os::fd::OwnedFd;

  // The store alone: a whole `Home` holds napi-rs handles, which a test binary cannot link.

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
    let home = Parcels::open();
    let (fd, _reader) = watched();
    let parcel = home.deposit(vec![fd]).expect("open");
    assert!(home.claim::<Vec<OwnedFd>>(parcel).is_some());
    assert!(home.claim::<Vec<OwnedFd>>(parcel).is_none());
  }

  #[test]
  fn closing_closes_what_waits_and_refuses_what_comes_later() {
    let home = Parcels::open();
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
