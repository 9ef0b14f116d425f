//! Where the async work runs.
//!
//! On Node, each JS thread (the main one and every worker) gets a current-thread tokio
//! runtime of its own, driven by that thread's libuv loop: a poll handle watches the
//! runtime's reactor (its epoll fd), and when it is readable, or a task was woken from the
//! JS thread, the addon runs the runtime until it is idle, on the JS thread itself. A
//! socket that becomes ready then costs one wake-up of the JS thread, as a `net.Socket`
//! does. tokio still owns readiness and I/O (`AsyncFd` on its reactor), nix the syscalls.
//! A read that has just found its socket empty, when its peer is likely to answer soon,
//! waits parked instead of in a task: each wake-up tries it before tokio's reactor is
//! turned, so that JS gets its result (and writes the answer) first.
//!
//! tokio has no public accessor for its reactor fd (tokio-rs/tokio#7348): the epoll fd is
//! found among the fds that appear while the runtime is built, and trusted only once a pipe
//! registered with the runtime makes exactly that fd readable.
//!
//! Where that cannot be done (a host without libuv, such as Bun; a system other than Linux,
//! where a nested kqueue may never report; a failed check) or `FD_QUEUE_DRIVER=threads`
//! asks for it, the work runs on one tokio worker thread instead (napi-rs's runtime), and
//! results reach JS through threadsafe functions. `runtimeInfo()` says which, and why.

mod uv;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use napi::bindgen_prelude::within_runtime_if_available;
use napi::{sys, Env};
use napi_derive::napi;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{self, errno_of, Result};
use crate::sync::lock;

/// How the calling JS thread runs its async work, and why.
#[napi(object)]
pub struct RuntimeInfo {
  /// `"libuv"`: on the JS thread, driven by its event loop; `"threads"`: on a tokio
  /// worker thread, with results handed over through threadsafe functions.
  pub driver: String,
  /// Why this driver (for `"threads"`: what ruled the other one out).
  pub reason: String,
}

/// The JS-thread runtime of this thread, once chosen.
struct Local {
  /// Dropped with the `Local`, unless it broke (see `broken`).
  runtime: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
  shared: Arc<Shared>,
  env: sys::napi_env,
  /// The async context JS is called in after a drive (for async hooks and microtasks).
  context: sys::napi_async_context,
  /// The object every callback scope a delivery opens is given as its resource: Node 20
  /// ignores it (the async context names its own), but the call takes an object, and one
  /// made per call cost an allocation per settlement. Lives as long as the environment,
  /// as `context` does.
  resource: sys::napi_ref,
  /// Results are waiting for JS: `deliver` runs once the current loop callback's drive is
  /// done (or at the next loop iteration, when they came from a call JS made).
  deliver: Cell<Option<fn(&Env)>>,
  /// A loop callback is running (it delivers when its drive is done).
  in_callback: Cell<bool>,
  /// Results are being handed to JS (each call gets a callback scope of its own).
  delivering: Cell<bool>,
  poll: RefCell<Option<uv::Handle>>,
  timer: RefCell<Option<uv::Handle>>,
  /// An idle handle, started to drive at the next loop iteration. (A timer of 0 ms set
  /// from its own callback fires again in the same timers phase on libuv before 1.47,
  /// whose clock stands still meanwhile: a drive that kept setting it held back the
  /// process's own timers for seconds.)
  next_turn: RefCell<Option<uv::Handle>>,
  driving: Cell<bool>,
  /// The runtime panicked in a drive (its reactor's epoll fd closed under it by code that
  /// closed a number it did not own): see [`Local::break_down`].
  broken: Cell<bool>,
  /// A drive is set for the next loop iteration.
  scheduled: Cell<bool>,
  /// When the tasks in a `sleep` wake (how many at each instant): the timer is set for
  /// the first of them while there are any.
  sleeping: RefCell<BTreeMap<Instant, usize>>,
  /// Tasks to spawn, and wakes to pass on, inside the next drive: done from inside the
  /// runtime, they go straight to its run queue (from outside, tokio would also write to
  /// its wake-up eventfd).
  spawns: RefCell<Vec<Tracked>>,
  wakes: RefCell<Vec<Waker>>,
  /// Reads that can do nothing before an event of the reactor (an `AsyncUnixStream` read,
  /// [`park_direct`]; an `FdSocket` reader that just read, see [`park`]), parked here
  /// with no task: the next loop callback tries them first, and a drive that
  /// turns the reactor either spawns them before the turn or tries them right after it.
  after_event: RefCell<Vec<Waiting>>,
  /// Tasks that wait for the event loop to turn (`spawn_next_turn`): spawned by the next
  /// loop callback, not by the rounds of the current one.
  next_turn_tasks: RefCell<Vec<Task>>,
  /// Loop callbacks so far: a task counts what it did in one ([`turn`]).
  turns: Cell<u64>,
  /// What the tasks counted in the current one ([`count_in_turn`]).
  counted_in_turn: Cell<usize>,
  /// Tasks waiting in [`next_turn`]: woken by the next loop callback.
  turn_waiters: RefCell<Vec<Waker>>,
  /// A timer that runs `sweeps` every [`SWEEP_EVERY`] while there are any.
  sweep_timer: RefCell<Option<uv::Handle>>,
  /// What [`every_while_idle`] asked to run: each is dropped once it returns `true`.
  sweeps: RefCell<Vec<Sweep>>,
}

pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A read that found its socket empty, parked for the loop to try at the next event with
/// no future at all ([`park_direct`]): a round trip's read costs one `recvmsg` and its
/// settlement, not the polls of a task's layers (its place in line, the close and cancel
/// watches, the wait for room), and nothing is allocated for it until the data come.
pub(crate) trait Direct: Send {
  /// One try, on the JS thread, when the loop has an event that may be the one it waits
  /// for. `after_turn`: the reactor has just been turned, and recorded whatever came since
  /// the last turn (see [`tried_after_turn`]).
  fn try_now(self: Box<Self>, after_turn: bool) -> Tried;
  /// The same read as a task: it is to wait in tokio's reactor, or a drive starts it
  /// before it was tried. `tried`: it found its socket empty since the last event.
  fn into_task(self: Box<Self>, tried: bool) -> Task;
}

/// What became of a [`Direct`] read that the loop tried.
pub(crate) enum Tried {
  /// It read (or failed), and its outcome is queued for JS.
  Done,
  /// Its socket is empty: it is parked again, or becomes a task.
  Empty(Box<dyn Direct>),
  /// It must wait for something else first (its turn, room in the queue; or its stream
  /// closed): the task that does.
  Task(Task),
}

/// What waits for an event of the reactor in `after_event`.
enum Waiting {
  /// A parked task's future ([`park`]).
  Task(Task),
  Direct(Box<dyn Direct>),
}

/// A waiting read as a task, to be spawned.
impl From<Waiting> for Task {
  fn from(waiting: Waiting) -> Self {
    match waiting {
      Waiting::Task(task) => task,
      Waiting::Direct(read) => read.into_task(false),
    }
  }
}

/// A check run every [`SWEEP_EVERY`] until it returns `true`.
pub(crate) type Sweep = Box<dyn FnMut() -> bool + Send>;

/// How often [`every_while_idle`] runs its checks.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What the wakers of this thread's tasks share (they may be called from any thread).
struct Shared {
  /// Tasks woken and not yet polled: a drive goes on while there are any (tokio runs only
  /// so many tasks per `block_on` round, and says nothing of the ones left queued).
  woken: AtomicUsize,
  owner: ThreadId,
  /// The async handle that wakes the loop from another thread (None once closed).
  wakeup: Mutex<Option<WakeupHandle>>,
}

/// An async handle, which `uv_async_send` may wake from any thread.
struct WakeupHandle(uv::Handle);

// SAFETY: the only call made on it from other threads is uv_async_send, which libuv
// documents as thread-safe; it is closed on the loop's thread under the same lock.
unsafe impl Send for WakeupHandle {}

enum Driver {
  Libuv(Rc<Local>),
  Threads,
}

thread_local! {
  static DRIVER: Slot = const { Slot(RefCell::new(None)) };
  /// A parked read is being polled by `Local::try_parked` (not by a task).
  static DIRECT: Cell<bool> = const { Cell::new(false) };
  /// ... right after a turn of the reactor ([`tried_after_turn`]).
  static AFTER_TURN: Cell<bool> = const { Cell::new(false) };
  /// What the read just polled asked for when it found its socket empty ([`park`]).
  static PARKED: Cell<Parked> = const { Cell::new(Parked::No) };
}

/// What a read that found its socket empty asked for ([`park`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parked {
  No,
  /// To be tried again at the next event; it read nothing since it was last tried.
  Idle,
  /// The same, right after it read something (its peer is likely to answer soon).
  Active,
}

/// This thread's driver. The environment's cleanup hook takes the JS-thread runtime and
/// drops it (a worker's end, the main thread's normal exit). One still here when the
/// thread's locals are destroyed is left as it is: that happens after `process.exit()`,
/// which runs no cleanup hook, and dropping it would drop tasks that make Node-API calls
/// (releasing the Buffers and callbacks they hold) on an environment being torn down. The
/// process's end closes what they hold.
struct Slot(RefCell<Option<(Driver, String)>>);

impl Drop for Slot {
  fn drop(&mut self) {
    if let Some((Driver::Libuv(local), _)) = self.0.get_mut().take() {
      std::mem::forget(local);
    }
  }
}

/// Most rounds of one drive before JS gets a turn (a drive that still has work then goes
/// on at the next loop iteration).
const MAX_ROUNDS: usize = 64;

/// Chooses this JS thread's driver (`wanted`: `"auto"`, `"libuv"` or `"threads"`). Called
/// once per thread when the TypeScript layer loads; later calls only report.
#[napi]
#[cfg_attr(test, allow(dead_code))]
pub fn init_runtime(env: Env, wanted: String) -> RuntimeInfo {
  DRIVER.with(|slot| {
    let mut driver = slot.0.borrow_mut();
    if driver.is_none() {
      *driver = Some(match wanted.as_str() {
        "threads" => (
          Driver::Threads,
          "FD_QUEUE_DRIVER=threads (or a host without libuv)".into(),
        ),
        _ => match Local::start(&env) {
          Ok(local) => (
            Driver::Libuv(local),
            "the reactor fd of the thread's runtime is watched by its event loop".into(),
          ),
          Err(why) => (Driver::Threads, why),
        },
      });
    }
    info(driver.as_ref())
  })
}

/// How this thread runs its async work (`runtimeInfo()` in JS).
#[napi]
#[cfg_attr(test, allow(dead_code))]
pub fn runtime_info() -> RuntimeInfo {
  DRIVER.with(|slot| info(slot.0.borrow().as_ref()))
}

fn info(driver: Option<&(Driver, String)>) -> RuntimeInfo {
  match driver {
    Some((Driver::Libuv(_), reason)) => RuntimeInfo {
      driver: "libuv".into(),
      reason: reason.clone(),
    },
    Some((Driver::Threads, reason)) => RuntimeInfo {
      driver: "threads".into(),
      reason: reason.clone(),
    },
    None => RuntimeInfo {
      driver: "threads".into(),
      reason: "not initialised on this thread".into(),
    },
  }
}

fn local() -> Option<Rc<Local>> {
  DRIVER
    .try_with(|slot| match slot.0.try_borrow().ok()?.as_ref()? {
      (Driver::Libuv(local), _) => Some(Rc::clone(local)),
      _ => None,
    })
    .ok()
    .flatten()
}

/// Runs `future` to completion on this thread's runtime. On the JS-thread runtime it
/// starts at once (it runs until it waits).
pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(future: F) {
  spawn_then(future, |local| local.drive(false));
}

/// Runs `future` on this thread's runtime: on the JS-thread runtime it joins the tasks the
/// next drive spawns, and `then` decides when that drive is.
fn spawn_then<F: Future<Output = ()> + Send + 'static>(future: F, then: impl FnOnce(&Local)) {
  match local() {
    Some(local) => {
      let tracked = Tracked::new(Box::pin(future), Arc::clone(&local.shared));
      local.spawns.borrow_mut().push(tracked);
      then(&local);
    }
    None => drop(napi::bindgen_prelude::spawn(future)),
  }
}

/// For a `read` that can do nothing before an event of this thread's reactor: one that
/// just found its socket empty while that socket is registered. On the JS-thread runtime
/// it is parked, with no drive of its own (which would only turn the reactor for nothing,
/// an `epoll_wait` per read) and no task: the next loop callback tries it first (see
/// `Local::try_after_event`). Elsewhere it runs as a task.
pub(crate) fn park_direct(read: Box<dyn Direct>) {
  match local() {
    Some(local) => local.after_event.borrow_mut().push(Waiting::Direct(read)),
    None => drop(napi::bindgen_prelude::spawn(read.into_task(false))),
  }
}

/// [`spawn`] for a `future` that can do nothing before an earlier operation of its object
/// finishes (a read queued behind another). On the JS-thread runtime it starts in the next
/// drive, with the others queued meanwhile, instead of a drive of its own for each (a turn
/// of the reactor, an `epoll_wait`, per call): the drive the current loop callback makes
/// once JS has its results, or else one at the next loop iteration.
fn spawn_queued<F: Future<Output = ()> + Send + 'static>(future: F) {
  spawn_then(future, |local| {
    if !local.in_callback.get() {
      local.schedule();
    }
  });
}

/// [`spawn`] for a `future` that must wait for the event loop to turn: an operation JS
/// asked to settle later because its thread has completed many at once since the loop
/// last turned. On the JS-thread runtime it starts in the next loop callback (the next
/// iteration's, at the latest), not in a round of the current one, which would run it,
/// and the code its outcome runs, before the loop gets a turn.
fn spawn_next_turn<F: Future<Output = ()> + Send + 'static>(future: F) {
  match local() {
    Some(local) => {
      local.next_turn_tasks.borrow_mut().push(Box::pin(future));
      local.soon();
    }
    None => drop(napi::bindgen_prelude::spawn(future)),
  }
}

/// This thread's current loop callback on the JS-thread runtime (`None` on the threaded
/// one): its number, and the units of work tasks counted in it ([`count_in_turn`]). For a
/// task that bounds what it does in one, as libuv bounds the reads of one stream per
/// event: a push reader that went on reading for as long as data came held one callback
/// (and the process's timers, and the Buffers Node frees from its immediates) for seconds
/// when many connections received at once.
pub(crate) fn turn() -> Option<(u64, usize)> {
  local().map(|local| (local.turns.get(), local.counted_in_turn.get()))
}

/// Counts one more unit of work (a push reader's batch) in the current loop callback.
pub(crate) fn count_in_turn() {
  if let Some(local) = local() {
    local.counted_in_turn.set(local.counted_in_turn.get() + 1);
  }
}

/// Resolves at the next loop callback of this thread's JS-thread runtime, which it asks
/// for (at once on the threaded runtime).
pub(crate) async fn next_turn() {
  let Some((started, _)) = turn() else {
    return;
  };
  std::future::poll_fn(move |cx| match local() {
    Some(local) if local.turns.get() == started => {
      local.turn_waiters.borrow_mut().push(cx.waker().clone());
      local.soon();
      std::task::Poll::Pending
    }
    _ => std::task::Poll::Ready(()),
  })
  .await;
}

/// What an operation's task waits for before it starts, for [`spawn_operation`].
#[derive(Clone, Copy, Default)]
pub(crate) struct Waits {
  /// JS asked it to settle once the event loop has turned ([`spawn_next_turn`]).
  pub(crate) defer: bool,
  /// It is queued behind an earlier operation of its object ([`spawn_queued`]).
  pub(crate) queued: bool,
}

/// Runs an operation's task with the first of `waits` that holds, in the order of its
/// fields; at once ([`spawn`]) when none does.
pub(crate) fn spawn_operation<F: Future<Output = ()> + Send + 'static>(future: F, waits: Waits) {
  if waits.defer {
    spawn_next_turn(future);
  } else if waits.queued {
    spawn_queued(future);
  } else {
    spawn(future);
  }
}

/// Runs `check` every [`SWEEP_EVERY`] until it returns `true`, without keeping the process
/// alive or waking it more often: for what may be let go once it has been idle a while.
/// On the JS-thread runtime the checks run on the JS thread, from one unref'd timer; on
/// the threaded runtime, in a task of their own.
pub(crate) fn every_while_idle(mut check: Sweep) {
  match local() {
    Some(local) => {
      let mut sweeps = local.sweeps.borrow_mut();
      if sweeps.is_empty() {
        if let Some(timer) = local.sweep_timer.borrow().as_ref() {
          let every = SWEEP_EVERY.as_millis() as u64;
          timer.start_timer(on_sweep, every, every);
        }
      }
      sweeps.push(check);
    }
    None => drop(napi::bindgen_prelude::spawn(async move {
      loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if check() {
          break;
        }
      }
    })),
  }
}

/// Lets pending tasks that a JS-thread call just woke (a `close()`) run now, so that they
/// let go of what they hold before the call returns; tasks waiting for an event or for
/// the loop's next turn start too (those of other objects as well: they cannot be told
/// apart). A no-op on the threaded runtime, whose workers run them anyway.
pub(crate) fn run_woken() {
  if let Some(local) = local() {
    local.start_after_event();
    local.start_next_turn();
    local.drive(false);
  }
}

/// For a read that just found its socket empty, on the JS-thread runtime: parks it, to be
/// tried again by the loop at the next event (see `Local::try_parked`) instead of waiting
/// in tokio's reactor, when it is being tried that way already, or, with `active` (it
/// read something since it was last tried), when a task polls it: that task then ends,
/// and hands the read over. The caller then awaits [`until_tried_again`]. `false`: wait
/// for readiness in tokio as usual.
pub(crate) fn park(active: bool) -> bool {
  let parks = DIRECT.get() || (active && local().is_some());
  if parks {
    PARKED.set(if active { Parked::Active } else { Parked::Idle });
  }
  parks
}

/// Whether the calling read is being tried as a parked one (not polled by a task).
pub(crate) fn polled_directly() -> bool {
  DIRECT.get()
}

/// Whether the calling read is being tried as a parked one right after a turn of the
/// reactor, rather than at the start of a loop callback, before it.
///
/// Then its socket's readiness tells whether anything came since it was last found empty,
/// with no syscall: tokio's registration is edge-triggered, and the kernel queues the
/// socket for the reactor's next `epoll_wait` whenever data arrive; that call reports the
/// socket only if it is readable then, and tokio keeps that readiness until a read finds
/// the socket empty after it (`try_io`). So with no readiness recorded, anything in the
/// socket came after that turn, and the loop's next event brings it.
pub(crate) fn tried_after_turn() -> bool {
  DIRECT.get() && AFTER_TURN.get()
}

/// Whether the calling read is being tried as a parked one at the start of a loop
/// callback: a turn of the reactor (and a try right after it, or the read's start as a
/// task) follows, whatever the try does.
pub(crate) fn tried_before_turn() -> bool {
  DIRECT.get() && !AFTER_TURN.get()
}

/// Pending once, waking nothing: for a parked read, whose next try comes from the loop.
pub(crate) async fn until_tried_again() {
  let mut first = true;
  std::future::poll_fn(|_| {
    if std::mem::take(&mut first) {
      Poll::Pending
    } else {
      Poll::Ready(())
    }
  })
  .await;
}

/// This thread's environment, when the JS-thread runtime runs here (its tasks may then
/// use the thread's JS values); `None` on any other thread, or with the threaded runtime.
pub(crate) fn js_env() -> Option<sys::napi_env> {
  local().map(|local| local.env)
}

/// Whether woken tasks run elsewhere (the threaded runtime): then a caller may wait for
/// them; on the JS-thread runtime, `run_woken` runs them instead.
pub(crate) fn runs_elsewhere() -> bool {
  local().is_none()
}

/// `tokio::time::sleep`, with the JS-thread runtime driven when it ends (tokio's timers
/// fire only when its driver turns, and libuv does not know them).
pub(crate) async fn sleep(duration: Duration) {
  let sleeping = SleepTick::start(duration);
  tokio::time::sleep(duration).await;
  drop(sleeping);
}

/// Keeps the JS-thread runtime's timer set for the end of a pending sleep (`Some`: its
/// deadline, counted in this thread's `sleeping`).
struct SleepTick(Option<Instant>);

impl SleepTick {
  fn start(duration: Duration) -> Self {
    match local() {
      Some(local) => {
        let deadline = Instant::now() + duration;
        *local.sleeping.borrow_mut().entry(deadline).or_insert(0) += 1;
        local.arm();
        Self(Some(deadline))
      }
      None => Self(None),
    }
  }
}

impl Drop for SleepTick {
  fn drop(&mut self) {
    // A JS-thread task is dropped on its JS thread (or with its runtime, gone already).
    if let (Some(deadline), Some(local)) = (self.0, local()) {
      let mut sleeping = local.sleeping.borrow_mut();
      if let Some(count) = sleeping.get_mut(&deadline) {
        *count -= 1;
        if *count == 0 {
          sleeping.remove(&deadline);
        }
      }
    }
  }
}

/// Registers a non-blocking fd with this thread's reactor.
///
/// napi-rs and tokio panic when there is no runtime (a call made while the environment is
/// being torn down); that panic is caught here and becomes an error, since a panic that
/// reached Node would abort the process. The fd is closed in that case.
/// `fd` must keep its fd open, as the same open file description, for as long as the
/// AsyncFd lives: an `OwnedFd`, or a `Registered` (which shares ownership of one).
pub(crate) fn register<T: AsRawFd>(fd: T, interest: Interest) -> Result<AsyncFd<T>> {
  register_or_return(fd, interest).map_err(|(e, _)| e)
}

/// [`register`], giving `fd` back when the reactor refused it (`EEXIST`: another object
/// of this thread has that fd registered), so that an adopted fd can stay its owner's.
pub(crate) fn register_or_return<T: AsRawFd>(
  fd: T,
  interest: Interest,
) -> std::result::Result<AsyncFd<T>, (error::Error, Option<T>)> {
  let register = move || {
    // SAFETY: both kinds of `T` passed here own (or share the ownership of) an open fd
    // that stays the same open file description until the AsyncFd, which owns `T`, is
    // dropped and has deregistered it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }
  };
  let registered = if tokio::runtime::Handle::try_current().is_ok() {
    // Inside a task the runtime is entered already. napi-rs's helper must not be used on
    // its threads: after a teardown it may have no runtime, and panic (printing it).
    Ok(register())
  } else if let Some(local) = local() {
    let _entered = local.runtime.enter();
    Ok(register())
  } else {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
      within_runtime_if_available(register)
    }))
  };
  match registered {
    Ok(Ok(io)) => Ok(io),
    Ok(Err(e)) => {
      let (fd, e) = e.into_parts();
      Err((error::sys(errno_of(&e), "epoll_ctl"), Some(fd)))
    }
    Err(_) => Err((no_runtime(), None)),
  }
}

pub(crate) fn no_runtime() -> error::Error {
  error::coded(
    "ERR_FD_QUEUE_NO_RUNTIME",
    "The async runtime is not running (is the environment shutting down?)",
  )
}

impl Local {
  /// Builds the runtime, finds and checks its reactor fd, and hooks it into the loop.
  fn start(env: &Env) -> std::result::Result<Rc<Self>, String> {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
      return Err("not Linux: a kqueue nested in libuv's may never report".into());
    }
    let api = uv::api().ok_or("the host exports no libuv (uv_poll_init, ...)")?;
    let event_loop = env
      .get_uv_event_loop()
      .map_err(|e| format!("no event loop: {}", e.reason))?;
    let before = epoll_fds();
    let runtime = tokio::runtime::Builder::new_current_thread()
      .enable_io()
      .enable_time()
      .build()
      .map_err(|e| format!("building the runtime: {e}"))?;
    let reactor = epoll_fds()
      .into_iter()
      .filter(|fd| !before.contains(fd))
      .find(|&fd| is_reactor_of(&runtime, fd))
      .ok_or("the runtime's reactor fd was not found (or did not pass the check)")?;
    let shared = Arc::new(Shared {
      woken: AtomicUsize::new(0),
      owner: std::thread::current().id(),
      wakeup: Mutex::new(None),
    });
    let poll = uv::Handle::poll(api, event_loop, reactor, std::ptr::null_mut(), on_reactor)
      .ok_or("uv_poll_init on the reactor fd failed")?;
    let timer =
      uv::Handle::timer(api, event_loop, std::ptr::null_mut()).ok_or("uv_timer_init failed")?;
    let next_turn =
      uv::Handle::idle(api, event_loop, std::ptr::null_mut()).ok_or("uv_idle_init failed")?;
    let sweep_timer =
      uv::Handle::timer(api, event_loop, std::ptr::null_mut()).ok_or("uv_timer_init failed")?;
    let wakeup = uv::Handle::wakeup(api, event_loop, std::ptr::null_mut(), on_wakeup)
      .ok_or("uv_async_init failed")?;
    *lock(&shared.wakeup) = Some(WakeupHandle(wakeup));
    let context = async_context(env).map_err(|e| format!("napi_async_init: {e}"))?;
    let resource = resource_object(env).map_err(|e| format!("the callbacks' resource: {e}"))?;
    let local = Rc::new(Self {
      runtime: std::mem::ManuallyDrop::new(runtime),
      shared,
      env: env.raw(),
      context,
      resource,
      deliver: Cell::new(None),
      in_callback: Cell::new(false),
      delivering: Cell::new(false),
      poll: RefCell::new(Some(poll)),
      timer: RefCell::new(Some(timer)),
      next_turn: RefCell::new(Some(next_turn)),
      sweep_timer: RefCell::new(Some(sweep_timer)),
      sweeps: RefCell::new(Vec::new()),
      driving: Cell::new(false),
      broken: Cell::new(false),
      scheduled: Cell::new(false),
      sleeping: RefCell::new(BTreeMap::new()),
      spawns: RefCell::new(Vec::new()),
      wakes: RefCell::new(Vec::new()),
      after_event: RefCell::new(Vec::new()),
      next_turn_tasks: RefCell::new(Vec::new()),
      turns: Cell::new(0),
      counted_in_turn: Cell::new(0),
      turn_waiters: RefCell::new(Vec::new()),
    });
    stop_with_environment(env).map_err(|e| format!("no cleanup hook: {e}"))?;
    Ok(local)
  }

  /// Runs the runtime until no task is woken: every task waits for something that has
  /// not happened yet.
  ///
  /// `turn`: whether the reactor must be turned even with no task woken (it reported
  /// events, or a timer may be due); otherwise a drive with nothing woken does nothing.
  fn drive(&self, turn: bool) {
    self.drive_with(turn, false);
  }

  /// [`Local::drive`]; with `then_try`, the reactor is turned first, and the reads parked
  /// meanwhile are tried right after that turn instead of before it: the turn a loop
  /// callback owes once JS has had the results of the reads it tried first (see
  /// [`Local::try_after_event`]). Only for a drive with nothing else to run.
  fn drive_with(&self, turn: bool, then_try: bool) {
    if self.broken.get() || (!turn && !self.has_work()) {
      return;
    }
    if self.driving.replace(true) {
      return;
    }
    self.scheduled.set(false);
    // Rounds inside one `block_on` (entering the runtime costs about as much as a round):
    // new tasks and wakes go in, every ready task runs, then the reactor is turned without
    // waiting; again while that turn (or the tasks) left work. Every turn must find each
    // parked read started before it or tried right after it: the turn may collect the one
    // event that read waits for.
    // A panic (tokio's, when its reactor's fd was closed under it) stops here, and ends
    // this runtime: it must not reach Node, which would abort (a drive runs inside calls
    // such as `close()` too).
    let drove =
      std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drive_rounds(then_try)));
    self.driving.set(false);
    match drove {
      Ok(true) => {}
      Ok(false) => self.soon(),
      Err(_) => self.break_down(),
    }
  }

  /// Ends a runtime that panicked (its reactor's epoll fd was closed under it): it is not
  /// driven again, and its loop handle on that fd number goes at once (left started, it
  /// would take the events of whatever gets the number next, and the loop would spin on
  /// them). The runtime itself is never dropped: dropping it would close that number, and
  /// perhaps others of its own, again, which may be someone else's by then.
  fn break_down(&self) {
    self.broken.set(true);
    if let Some(poll) = self.poll.borrow_mut().take() {
      poll.close(uv::Kind::Poll, None);
    }
  }

  /// The rounds of one drive ([`Local::drive_with`]); whether they left the runtime quiet.
  fn drive_rounds(&self, then_try: bool) -> bool {
    self.runtime.block_on(async {
      if then_try {
        // Nothing is queued: this only turns the reactor.
        tokio::task::yield_now().await;
        self.try_parked(false);
        if !self.has_work() {
          return true;
        }
      }
      for _ in 0..MAX_ROUNDS {
        self.start_after_event();
        let spawns = std::mem::take(&mut *self.spawns.borrow_mut());
        let wakes = std::mem::take(&mut *self.wakes.borrow_mut());
        for task in spawns {
          drop(tokio::spawn(task));
        }
        for waker in wakes {
          waker.wake();
        }
        tokio::task::yield_now().await;
        // Reads a task parked in this round (a reader that read, then found its socket
        // empty again), after the turn that may have taken their event.
        self.try_parked(false);
        if !self.has_work() {
          return true;
        }
      }
      false
    })
  }

  /// At the start of a loop callback: tries the reads parked for an event (a read that
  /// found its socket empty while the socket is registered), before the reactor is
  /// turned, since the event may be the one they wait for. One that finds its socket
  /// still empty, having read nothing, becomes a task, which waits in tokio's reactor.
  /// Returns whether the turn
  /// may wait until JS has had their results: the reads got something and nothing else
  /// waits to run. The round trip's answer then goes out before the `epoll_wait` of
  /// tokio's that collects the event already served.
  fn try_after_event(&self) -> bool {
    if self.driving.get() || self.after_event.borrow().is_empty() {
      return false;
    }
    self.try_parked(true);
    self.deliver.get().is_some() && !self.has_work()
  }

  /// Polls each read parked in `after_event` once, here, outside tokio's scheduler (no
  /// task, no waker: whoever tries it next is this thread's loop). One that finished is
  /// dropped; one that found its socket empty stays parked (unless `to_task` and it read
  /// nothing first); one that waits for anything else becomes a task. `to_task`: the
  /// tries come at the start of a loop callback, before the reactor is turned; otherwise
  /// right after a turn.
  fn try_parked(&self, to_task: bool) {
    let mut parked = std::mem::take(&mut *self.after_event.borrow_mut());
    if parked.is_empty() {
      return;
    }
    // A wake meanwhile (the turnstile's next read) waits for the drive that follows.
    let driving = self.driving.replace(true);
    DIRECT.set(true);
    AFTER_TURN.set(!to_task);
    let mut cx = Context::from_waker(Waker::noop());
    for read in parked.drain(..) {
      let mut read = match read {
        Waiting::Task(read) => read,
        Waiting::Direct(read) => {
          // A panic ends the read as it would end a task (none is expected).
          let tried =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read.try_now(!to_task)));
          let task = match tried.unwrap_or(Tried::Done) {
            Tried::Done => continue,
            Tried::Empty(read) if !to_task => {
              self.after_event.borrow_mut().push(Waiting::Direct(read));
              continue;
            }
            Tried::Empty(read) => read.into_task(true),
            Tried::Task(task) => task,
          };
          let task = Tracked::new(task, Arc::clone(&self.shared));
          self.spawns.borrow_mut().push(task);
          continue;
        }
      };
      PARKED.set(Parked::No);
      // Polled in the runtime's context (entered again when a drive is under way, which
      // tokio allows): a direct read above needs none, and is spared the cost.
      let entered = self.runtime.enter();
      // A panic ends the read as it would end a task (none is expected).
      let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read.as_mut().poll(&mut cx).is_ready()
      }))
      .unwrap_or(true);
      drop(entered);
      if finished {
        continue;
      }
      let parked = PARKED.replace(Parked::No);
      if parked == Parked::Active || (parked == Parked::Idle && !to_task) {
        self.after_event.borrow_mut().push(Waiting::Task(read));
      } else {
        let task = Tracked::new(read, Arc::clone(&self.shared));
        self.spawns.borrow_mut().push(task);
      }
    }
    DIRECT.set(false);
    self.driving.set(driving);
    // The list keeps its memory: the read parked next is not an allocation.
    let mut after_event = self.after_event.borrow_mut();
    parked.append(&mut after_event);
    std::mem::swap(&mut *after_event, &mut parked);
  }

  /// Moves the tasks waiting for the loop's next turn to the ones the next drive spawns.
  fn start_next_turn(&self) {
    self.start_waiting(&self.next_turn_tasks);
  }

  /// Moves the reads waiting for an event to the tasks the next drive spawns.
  fn start_after_event(&self) {
    self.start_waiting(&self.after_event);
  }

  /// Moves what waits in `waiting` to the tasks the next drive spawns.
  fn start_waiting<T: Into<Task>>(&self, waiting: &RefCell<Vec<T>>) {
    let waiting = std::mem::take(&mut *waiting.borrow_mut());
    let mut spawns = self.spawns.borrow_mut();
    for task in waiting {
      spawns.push(Tracked::new(task.into(), Arc::clone(&self.shared)));
    }
  }

  /// Whether a task waits to run (woken, or spawned or woken from JS since the last drive).
  fn has_work(&self) -> bool {
    self.shared.woken.load(Ordering::Acquire) > 0
      || !self.spawns.borrow().is_empty()
      || !self.wakes.borrow().is_empty()
  }

  /// A loop callback: drives, then hands what is ready to JS, in a callback scope (so that
  /// the Promises' reactions run, as after any I/O callback).
  fn on_loop_callback(&self, ticking: bool) {
    self.in_callback.set(true);
    self.turns.set(self.turns.get().wrapping_add(1));
    self.counted_in_turn.set(0);
    let waiting = std::mem::take(&mut *self.turn_waiters.borrow_mut());
    self.wakes.borrow_mut().extend(waiting);
    // Tasks set for the loop's next turn: this is it.
    self.start_next_turn();
    let mut owed = self.try_after_event();
    if !owed {
      self.drive(true);
    }
    for _ in 0..MAX_ROUNDS {
      let Some(deliver) = self.deliver.take() else {
        break;
      };
      self.delivering.set(true);
      // This thread's environment, alive until it ends, which closes these handles first
      // (no loop callback runs after that); no JS is running (a libuv callback). Each JS
      // call the delivery makes runs as an I/O callback of its own (`call_as_io`).
      let env = Env::from_raw(self.env);
      let _ = with_handle_scope(&env, || {
        deliver(&env);
        Ok(())
      });
      self.delivering.set(false);
      // JS may have started more work; run it before giving the loop back (and turn the
      // reactor, if that was left for now).
      let turn = std::mem::take(&mut owed);
      self.drive_with(turn, turn && !self.has_work());
    }
    self.in_callback.set(false);
    if ticking && !self.sleeping.borrow().is_empty() {
      self.arm();
    }
    if self.deliver.get().is_some() {
      self.soon();
    }
  }

  /// Drives at the next loop iteration (a wake from the JS thread outside a drive).
  fn schedule(&self) {
    if !self.driving.get() && !self.scheduled.replace(true) {
      self.soon();
    }
  }

  /// A drive at the next loop iteration, after the process's timers of this one.
  fn soon(&self) {
    if let Some(idle) = self.next_turn.borrow().as_ref() {
      idle.start_idle(on_next_turn);
    }
  }

  /// Sets the timer for the end of the first pending sleep (at least 1 ms from now, the
  /// resolution of libuv's timers and of tokio's): a drive then fires tokio's timers. It
  /// used to tick every millisecond while any sleep was pending, a thousand wake-ups a
  /// second for a write that backs off 64 ms at a time.
  fn arm(&self) {
    let Some(first) = self.sleeping.borrow().keys().next().copied() else {
      return;
    };
    let wait = first.saturating_duration_since(Instant::now());
    let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000))
      .unwrap_or(u64::MAX)
      .max(1);
    if let Some(timer) = self.timer.borrow().as_ref() {
      timer.start_timer(on_timer, ms, 0);
    }
  }

  /// Tears down: closes the handles, and drops the runtime with every task (and so every
  /// fd a task held). `done` runs once libuv has let go of the last handle.
  fn stop(&self, done: uv::AfterClose) {
    if let Some(poll) = self.poll.borrow_mut().take() {
      poll.close(uv::Kind::Poll, None);
    }
    if let Some(timer) = self.timer.borrow_mut().take() {
      timer.stop_timer();
      timer.close(uv::Kind::Timer, None);
    }
    if let Some(idle) = self.next_turn.borrow_mut().take() {
      idle.stop_idle();
      idle.close(uv::Kind::Idle, None);
    }
    if let Some(timer) = self.sweep_timer.borrow_mut().take() {
      timer.stop_timer();
      timer.close(uv::Kind::Timer, None);
    }
    drop(self.sweeps.take());
    match lock(&self.shared.wakeup).take() {
      Some(WakeupHandle(wakeup)) => wakeup.close(uv::Kind::Async, Some(done)),
      None => done(),
    }
  }
}

impl Drop for Local {
  fn drop(&mut self) {
    if !self.broken.get() {
      // SAFETY: the runtime is dropped once, here, and the `Local` is not used after.
      unsafe { std::mem::ManuallyDrop::drop(&mut self.runtime) };
    }
  }
}

/// The epoll fds open in this process (Linux: `/proc/self/fd` links).
fn epoll_fds() -> Vec<RawFd> {
  let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
    return Vec::new();
  };
  entries
    .filter_map(|entry| {
      let entry = entry.ok()?;
      let link = std::fs::read_link(entry.path()).ok()?;
      (link.as_os_str() == "anon_inode:[eventpoll]")
        .then(|| entry.file_name().to_str()?.parse().ok())?
    })
    .collect()
}

/// Whether `fd` is the epoll fd of `runtime`'s reactor: a pipe registered with the runtime
/// makes it readable once the pipe has data, and it was not readable before.
fn is_reactor_of(runtime: &tokio::runtime::Runtime, fd: RawFd) -> bool {
  let readable = |fd: RawFd| {
    // SAFETY: the borrow lasts for this zero-timeout poll only; `fd` was just listed as
    // open (a poll on an fd closed meanwhile answers POLLNVAL, not readable).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut fds = [nix::poll::PollFd::new(
      borrowed,
      nix::poll::PollFlags::POLLIN,
    )];
    matches!(
      nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
      Ok(1)
    ) && fds[0]
      .revents()
      .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
  };
  let Ok((reader, writer)) = nix::unistd::pipe() else {
    return false;
  };
  let registered = {
    let _entered = runtime.enter();
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open until it is
    // dropped and has deregistered it.
    unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
  };
  let Ok(registered) = registered else {
    return false;
  };
  let quiet_before = !readable(fd);
  let wrote = nix::unistd::write(writer.as_fd(), b"!").is_ok();
  let ready_after = readable(fd);
  drop(registered);
  // Consume the event the check left in the reactor.
  runtime.block_on(tokio::task::yield_now());
  quiet_before && wrote && ready_after
}

/// Closes this thread's JS-thread runtime when its environment ends (a worker's end,
/// process exit): an async cleanup hook, so that Node waits for the handles to close.
fn stop_with_environment(env: &Env) -> std::result::Result<(), String> {
  let mut handle: sys::napi_async_cleanup_hook_handle = std::ptr::null_mut();
  // SAFETY: `env` is this thread's live environment; the hook and its (unused) data
  // pointer stay valid for the life of the process.
  let status = unsafe {
    sys::napi_add_async_cleanup_hook(
      env.raw(),
      Some(on_environment_end),
      std::ptr::null_mut(),
      &mut handle,
    )
  };
  if status == sys::Status::napi_ok {
    Ok(())
  } else {
    Err(format!("napi_add_async_cleanup_hook: status {status}"))
  }
}

unsafe extern "C" fn on_environment_end(
  handle: sys::napi_async_cleanup_hook_handle,
  _data: *mut std::ffi::c_void,
) {
  let _ = std::panic::catch_unwind(|| {
    let driver = DRIVER
      .try_with(|slot| slot.0.borrow_mut().take())
      .ok()
      .flatten();
    let done: uv::AfterClose = Box::new(move || {
      // SAFETY: the handle Node gave this hook, removed once, after the last close.
      unsafe { sys::napi_remove_async_cleanup_hook(handle) };
    });
    match driver {
      Some((Driver::Libuv(local), _)) => {
        local.stop(done);
        // The runtime goes with the last reference: every task is dropped, and what it
        // held (sockets, fds on their way) is closed.
        drop(local);
      }
      _ => done(),
    }
  });
}

fn with_local(run: impl FnOnce(&Local)) {
  let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    if let Some(local) = local() {
      run(&local);
    }
  }));
}

unsafe extern "C" fn on_reactor(
  _handle: *mut uv::RawHandle,
  _status: std::ffi::c_int,
  _events: std::ffi::c_int,
) {
  with_local(|local| local.on_loop_callback(false));
}

unsafe extern "C" fn on_next_turn(_handle: *mut uv::RawHandle) {
  with_local(|local| {
    if let Some(idle) = local.next_turn.borrow().as_ref() {
      idle.stop_idle();
    }
    local.on_loop_callback(false)
  });
}

unsafe extern "C" fn on_timer(_handle: *mut uv::RawHandle) {
  with_local(|local| local.on_loop_callback(true));
}

unsafe extern "C" fn on_sweep(_handle: *mut uv::RawHandle) {
  with_local(|local| {
    // Taken out while they run: a check may drop what asks for another.
    let mut sweeps = local.sweeps.take();
    sweeps.retain_mut(|check| !check());
    let mut kept = local.sweeps.borrow_mut();
    sweeps.append(&mut kept);
    *kept = sweeps;
    if kept.is_empty() {
      if let Some(timer) = local.sweep_timer.borrow().as_ref() {
        timer.stop_timer();
      }
    }
  });
}

unsafe extern "C" fn on_wakeup(_handle: *mut uv::RawHandle) {
  with_local(|local| local.on_loop_callback(false));
}

/// Results are ready for JS on this thread: `deliver` hands them over after the current
/// loop callback's drive, or at the next loop iteration. `false` when this thread has no
/// JS-thread runtime (or this is not its JS thread): the caller rings JS another way.
pub(crate) fn deliver_later(deliver: fn(&Env)) -> bool {
  let Some(local) = local() else {
    return false;
  };
  local.deliver.set(Some(deliver));
  if !local.in_callback.get() {
    local.soon();
  }
  true
}

/// An async context for the JS calls made after a drive.
fn async_context(env: &Env) -> std::result::Result<sys::napi_async_context, String> {
  let mut name = std::ptr::null_mut();
  let mut context = std::ptr::null_mut();
  // SAFETY: plain N-API calls on this thread's live environment, with out-pointers to
  // locals; the context lives as long as the environment.
  let status = unsafe {
    let named = sys::napi_create_string_utf8(env.raw(), c"fd-queue".as_ptr(), 8, &mut name);
    if named != sys::Status::napi_ok {
      named
    } else {
      sys::napi_async_init(env.raw(), std::ptr::null_mut(), name, &mut context)
    }
  };
  if status == sys::Status::napi_ok {
    Ok(context)
  } else {
    Err(format!("status {status}"))
  }
}

/// A strong reference to a new object, for the callback scopes of deliveries.
fn resource_object(env: &Env) -> std::result::Result<sys::napi_ref, String> {
  let mut object = std::ptr::null_mut();
  let mut reference = std::ptr::null_mut();
  // SAFETY: plain N-API calls on this thread's live environment, with out-pointers to
  // locals; the reference lives as long as the environment.
  let status = unsafe {
    let created = sys::napi_create_object(env.raw(), &mut object);
    if created != sys::Status::napi_ok {
      created
    } else {
      sys::napi_create_reference(env.raw(), object, 1, &mut reference)
    }
  };
  if status == sys::Status::napi_ok {
    Ok(reference)
  } else {
    Err(format!("status {status}"))
  }
}

/// Runs `call` (which calls into JS) as Node runs an I/O callback: in a handle scope and
/// a callback scope, whose close runs `process.nextTick` callbacks and microtasks (the
/// reactions of a Promise just settled, the code after an `await once(...)`) before the
/// next call, as between two reads of a `net.Socket`. Outside a delivery of the
/// JS-thread runtime (a threadsafe function's call, which has its scope), it just runs.
pub(crate) fn as_io_callback<R>(env: &Env, call: impl FnOnce() -> R) -> R {
  let Some(local) = local().filter(|local| local.delivering.get()) else {
    return call();
  };
  let env = env.raw();
  let mut handles = std::ptr::null_mut();
  let mut resource = std::ptr::null_mut();
  let mut scope = std::ptr::null_mut();
  // SAFETY: `env` is this thread's live environment, `local.context` an async context of
  // it and `local.resource` a reference of it; a delivery runs from a libuv callback, with
  // no JS on the stack. Every scope opened is closed, in reverse order.
  unsafe {
    if sys::napi_open_handle_scope(env, &mut handles) != sys::Status::napi_ok {
      return call();
    }
    let scoped = sys::napi_get_reference_value(env, local.resource, &mut resource)
      == sys::Status::napi_ok
      && !resource.is_null()
      && sys::napi_open_callback_scope(env, resource, local.context, &mut scope)
        == sys::Status::napi_ok;
    let result = call();
    if scoped {
      sys::napi_close_callback_scope(env, scope);
    }
    sys::napi_close_handle_scope(env, handles);
    result
  }
}

/// Runs `make` in a handle scope of its own (the values it makes are let go after it).
pub(crate) fn with_handle_scope<R>(
  env: &Env,
  make: impl FnOnce() -> napi::Result<R>,
) -> napi::Result<R> {
  let mut handles = std::ptr::null_mut();
  // SAFETY: `env` is the calling JS thread's live environment; the scope opened is closed.
  unsafe {
    crate::js::checked(
      sys::napi_open_handle_scope(env.raw(), &mut handles),
      "napi_open_handle_scope",
    )?;
    let result = make();
    sys::napi_close_handle_scope(env.raw(), handles);
    result
  }
}

/// Calls `function` with `argv` as Node runs an I/O callback (see [`as_io_callback`]): on a
/// delivery of the JS-thread runtime, one `napi_make_callback`, whose callback scope (made
/// on the stack) runs `process.nextTick` callbacks and microtasks when the call returns.
/// What the function throws is reported as uncaught. Outside a delivery, a plain call.
pub(crate) fn call_as_io(
  env: &Env,
  function: sys::napi_value,
  argv: &[sys::napi_value],
) -> napi::Result<()> {
  let Some(local) = local().filter(|local| local.delivering.get()) else {
    return crate::js::call_raw(env, function, argv);
  };
  let mut receiver = std::ptr::null_mut();
  let mut result = std::ptr::null_mut();
  // SAFETY: `env` is this thread's live environment, `local.context` an async context of
  // it and `local.resource` a reference of it; `function` and `argv` are its values, the
  // out-pointers locals. A delivery runs from a libuv callback, with no JS on the stack.
  unsafe {
    let found = sys::napi_get_reference_value(env.raw(), local.resource, &mut receiver);
    if found != sys::Status::napi_ok || receiver.is_null() {
      return as_io_callback(env, || crate::js::call_raw(env, function, argv));
    }
    let status = sys::napi_make_callback(
      env.raw(),
      local.context,
      receiver,
      function,
      argv.len(),
      argv.as_ptr(),
      &mut result,
    );
    let outcome = crate::js::called(env, status, "napi_make_callback");
    if status == sys::Status::napi_pending_exception {
      // A call that threw closes its scope without running the microtasks: they run now,
      // as after any callback, once the exception has been reported.
      as_io_callback(env, || ());
    }
    outcome
  }
}

impl Shared {
  /// A task was woken from another thread: wake the loop, which drives.
  fn wake_from_elsewhere(&self) {
    if let Some(WakeupHandle(wakeup)) = lock(&self.wakeup).as_ref() {
      wakeup.send();
    }
  }
}

/// Where a task of the JS-thread runtime stands, for `Shared::woken`.
const IDLE: u8 = 0;
const WOKEN: u8 = 1;
const DONE: u8 = 2;

/// A task's state, shared by the task and its wakers.
struct TaskState {
  state: AtomicU8,
  shared: Arc<Shared>,
}

impl TaskState {
  /// Counts the task as woken (once until its next poll; never once it is gone).
  fn woken(&self) {
    if self
      .state
      .compare_exchange(IDLE, WOKEN, Ordering::AcqRel, Ordering::Acquire)
      .is_ok()
    {
      self.shared.woken.fetch_add(1, Ordering::AcqRel);
    }
  }

  /// The task is being polled (`to`: `IDLE`), or is gone (`DONE`): no longer waiting to run.
  fn leave_woken(&self, to: u8) {
    if self.state.swap(to, Ordering::AcqRel) == WOKEN {
      self.shared.woken.fetch_sub(1, Ordering::AcqRel);
    }
  }
}

/// A waker that counts the wake and gets the task driven, around tokio's own.
struct Counting {
  inner: Waker,
  task: Arc<TaskState>,
  shared: Arc<Shared>,
}

impl Wake for Counting {
  fn wake(self: Arc<Self>) {
    self.wake_by_ref();
  }

  fn wake_by_ref(self: &Arc<Self>) {
    self.task.woken();
    if std::thread::current().id() == self.shared.owner {
      if let Some(local) = local() {
        if local.driving.get() && !DIRECT.get() {
          // Inside the runtime: straight to its run queue.
          self.inner.wake_by_ref();
        } else {
          // From JS (a close, a dequeue): passed on inside the next drive.
          local.wakes.borrow_mut().push(self.inner.clone());
          local.schedule();
        }
        return;
      }
    }
    self.inner.wake_by_ref();
    self.shared.wake_from_elsewhere();
  }
}

/// A task of the JS-thread runtime: whether it waits to run is counted (see
/// `Local::drive`).
struct Tracked {
  inner: Task,
  task: Arc<TaskState>,
  /// tokio's waker and ours around it, from the last poll.
  waker: Option<(Waker, Waker)>,
}

impl Tracked {
  /// A task that is about to be spawned: counted as woken until its first poll.
  fn new(future: Task, shared: Arc<Shared>) -> Self {
    let task = Arc::new(TaskState {
      state: AtomicU8::new(IDLE),
      shared,
    });
    task.woken();
    Self {
      inner: future,
      task,
      waker: None,
    }
  }
}

impl Drop for Tracked {
  fn drop(&mut self) {
    self.task.leave_woken(DONE);
  }
}

impl Future for Tracked {
  type Output = ();

  fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
    let this = &mut *self;
    this.task.leave_woken(IDLE);
    let ours = match &this.waker {
      Some((theirs, ours)) if theirs.will_wake(cx.waker()) => ours.clone(),
      _ => {
        let ours = Waker::from(Arc::new(Counting {
          inner: cx.waker().clone(),
          task: Arc::clone(&this.task),
          shared: Arc::clone(&this.task.shared),
        }));
        this.waker = Some((cx.waker().clone(), ours.clone()));
        ours
      }
    };
    PARKED.set(Parked::No);
    let poll = this.inner.as_mut().poll(&mut Context::from_waker(&ours));
    // A read that parked itself (see `park`) goes on with no task: the loop tries it.
    if poll.is_pending() && PARKED.replace(Parked::No) == Parked::Active {
      if let Some(local) = local() {
        let read = std::mem::replace(&mut this.inner, Box::pin(std::future::ready(())));
        local.after_event.borrow_mut().push(Waiting::Task(read));
        return Poll::Ready(());
      }
    }
    poll
  }
}
