//! The few libuv calls that let a JS thread's event loop drive a tokio runtime: a poll
//! handle on the runtime's reactor fd, a timer, an idle handle and an async handle. They are found at run
//! time in the host process (`dlsym`), not linked: Node exports libuv, and a host that
//! does not (or one that only pretends to) gets the threaded runtime instead.
//!
//! Handle memory is owned here: allocated with the size libuv reports for the handle type
//! (its layout is libuv's business), and freed in the close callback.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// `uv_loop_t`, as napi hands it out.
pub type Loop = napi::sys::uv_loop_s;
/// Any `uv_handle_t` (opaque here).
pub type RawHandle = c_void;

pub type PollCallback = unsafe extern "C" fn(*mut RawHandle, c_int, c_int);
pub type TimerCallback = unsafe extern "C" fn(*mut RawHandle);
pub type AsyncCallback = unsafe extern "C" fn(*mut RawHandle);
pub type IdleCallback = unsafe extern "C" fn(*mut RawHandle);
pub type CloseCallback = unsafe extern "C" fn(*mut RawHandle);

/// libuv's `uv_handle_type` values (stable since libuv 1.0).
const UV_ASYNC: c_int = 1;
const UV_IDLE: c_int = 6;
const UV_POLL: c_int = 8;
const UV_TIMER: c_int = 13;
/// `UV_READABLE` of `uv_poll_event`.
pub const UV_READABLE: c_int = 1;

type HandleSize = unsafe extern "C" fn(c_int) -> usize;
type HandleTypeName = unsafe extern "C" fn(c_int) -> *const c_char;
type SetData = unsafe extern "C" fn(*mut RawHandle, *mut c_void);
type GetData = unsafe extern "C" fn(*const RawHandle) -> *mut c_void;
type Close = unsafe extern "C" fn(*mut RawHandle, CloseCallback);
type OnHandle = unsafe extern "C" fn(*mut RawHandle);
type OnHandleStatus = unsafe extern "C" fn(*mut RawHandle) -> c_int;
type PollInit = unsafe extern "C" fn(*mut Loop, *mut RawHandle, c_int) -> c_int;
type PollStart = unsafe extern "C" fn(*mut RawHandle, c_int, PollCallback) -> c_int;
type TimerInit = unsafe extern "C" fn(*mut Loop, *mut RawHandle) -> c_int;
type TimerStart = unsafe extern "C" fn(*mut RawHandle, TimerCallback, u64, u64) -> c_int;
type AsyncInit = unsafe extern "C" fn(*mut Loop, *mut RawHandle, AsyncCallback) -> c_int;
type IdleInit = unsafe extern "C" fn(*mut Loop, *mut RawHandle) -> c_int;
type IdleStart = unsafe extern "C" fn(*mut RawHandle, IdleCallback) -> c_int;

/// The libuv functions, resolved once per process.
pub struct Api {
  handle_size: HandleSize,
  handle_type_name: HandleTypeName,
  set_data: SetData,
  get_data: GetData,
  close: Close,
  unref: OnHandle,
  poll_init: PollInit,
  poll_start: PollStart,
  timer_init: TimerInit,
  timer_start: TimerStart,
  timer_stop: OnHandleStatus,
  async_init: AsyncInit,
  async_send: OnHandleStatus,
  idle_init: IdleInit,
  idle_start: IdleStart,
  idle_stop: OnHandleStatus,
}

/// Finds `name` among the symbols the process exports.
fn symbol(name: &CStr) -> Option<*mut c_void> {
  // SAFETY: dlsym with RTLD_DEFAULT only looks the name up; the name is NUL-terminated.
  let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
  (!found.is_null()).then_some(found)
}

macro_rules! resolve {
  ($name:literal as $signature:ty) => {{
    let found = symbol($name)?;
    // SAFETY: the symbol is libuv's function of that name, whose C signature is the one
    // named here (libuv's public API, unchanged since 1.x).
    unsafe { std::mem::transmute::<*mut c_void, $signature>(found) }
  }};
}

impl Api {
  fn resolve() -> Option<Self> {
    let api = Self {
      handle_size: resolve!(c"uv_handle_size" as HandleSize),
      handle_type_name: resolve!(c"uv_handle_type_name" as HandleTypeName),
      set_data: resolve!(c"uv_handle_set_data" as SetData),
      get_data: resolve!(c"uv_handle_get_data" as GetData),
      close: resolve!(c"uv_close" as Close),
      unref: resolve!(c"uv_unref" as OnHandle),
      poll_init: resolve!(c"uv_poll_init" as PollInit),
      poll_start: resolve!(c"uv_poll_start" as PollStart),
      timer_init: resolve!(c"uv_timer_init" as TimerInit),
      timer_start: resolve!(c"uv_timer_start" as TimerStart),
      timer_stop: resolve!(c"uv_timer_stop" as OnHandleStatus),
      async_init: resolve!(c"uv_async_init" as AsyncInit),
      async_send: resolve!(c"uv_async_send" as OnHandleStatus),
      idle_init: resolve!(c"uv_idle_init" as IdleInit),
      idle_start: resolve!(c"uv_idle_start" as IdleStart),
      idle_stop: resolve!(c"uv_idle_stop" as OnHandleStatus),
    };
    // A libuv that names its handle types as libuv does is the real thing (a stub that
    // aborts would not get this far without aborting).
    for (kind, name) in [
      (UV_POLL, c"poll"),
      (UV_TIMER, c"timer"),
      (UV_ASYNC, c"async"),
      (UV_IDLE, c"idle"),
    ] {
      // SAFETY: uv_handle_type_name returns a static string (or NULL) for any type value.
      let reported = unsafe { (api.handle_type_name)(kind) };
      // SAFETY: a non-null result is a NUL-terminated static string.
      if reported.is_null() || unsafe { CStr::from_ptr(reported) } != name {
        return None;
      }
    }
    Some(api)
  }
}

/// libuv, if the host has it.
pub fn api() -> Option<&'static Api> {
  static API: OnceLock<Option<Api>> = OnceLock::new();
  API.get_or_init(Api::resolve).as_ref()
}

/// An initialised libuv handle of the given type, with `data` attached.
pub struct Handle {
  raw: *mut RawHandle,
}

impl Handle {
  fn allocate(api: &Api, kind: c_int) -> *mut RawHandle {
    // SAFETY: uv_handle_size only computes the size of a handle type.
    let size = unsafe { (api.handle_size)(kind) };
    // Words, for alignment; zeroed, as a handle is before its init call.
    let words = size.div_ceil(std::mem::size_of::<u64>()).max(1);
    Box::into_raw(vec![0u64; words].into_boxed_slice()).cast()
  }

  /// A poll handle watching `fd` for readability, calling `callback`; unref'd.
  pub fn poll(
    api: &Api,
    event_loop: *mut Loop,
    fd: c_int,
    data: *mut c_void,
    callback: PollCallback,
  ) -> Option<Self> {
    let raw = Self::allocate(api, UV_POLL);
    // SAFETY: `raw` is zeroed memory of uv_handle_size(UV_POLL) bytes and `event_loop` the
    // thread's live loop; on failure the handle was never initialised and is just freed.
    unsafe {
      if (api.poll_init)(event_loop, raw, fd) != 0 {
        Self::free(raw, UV_POLL);
        return None;
      }
      let handle = Self::initialised(api, raw, data);
      ((api.poll_start)(raw, UV_READABLE, callback) == 0).then_some(handle)
    }
  }

  /// A stopped timer, unref'd.
  pub fn timer(api: &Api, event_loop: *mut Loop, data: *mut c_void) -> Option<Self> {
    let raw = Self::allocate(api, UV_TIMER);
    // SAFETY: as in `poll`.
    unsafe {
      if (api.timer_init)(event_loop, raw) != 0 {
        Self::free(raw, UV_TIMER);
        return None;
      }
      Some(Self::initialised(api, raw, data))
    }
  }

  /// A stopped idle handle, unref'd: started, it runs its callback once per loop iteration
  /// (and the loop does not block in its poll phase meanwhile).
  pub fn idle(api: &Api, event_loop: *mut Loop, data: *mut c_void) -> Option<Self> {
    let raw = Self::allocate(api, UV_IDLE);
    // SAFETY: as in `poll`.
    unsafe {
      if (api.idle_init)(event_loop, raw) != 0 {
        Self::free(raw, UV_IDLE);
        return None;
      }
      Some(Self::initialised(api, raw, data))
    }
  }

  /// An async handle (the one thread-safe libuv call: `uv_async_send`), unref'd.
  pub fn wakeup(
    api: &Api,
    event_loop: *mut Loop,
    data: *mut c_void,
    callback: AsyncCallback,
  ) -> Option<Self> {
    let raw = Self::allocate(api, UV_ASYNC);
    // SAFETY: as in `poll`.
    unsafe {
      if (api.async_init)(event_loop, raw, callback) != 0 {
        Self::free(raw, UV_ASYNC);
        return None;
      }
      Some(Self::initialised(api, raw, data))
    }
  }

  /// # Safety
  /// `raw` is a handle that its init call just initialised.
  unsafe fn initialised(api: &Api, raw: *mut RawHandle, data: *mut c_void) -> Self {
    // SAFETY: an initialised handle; unref: these handles never keep the loop alive.
    unsafe {
      (api.set_data)(raw, data);
      (api.unref)(raw);
    }
    Self { raw }
  }

  /// # Safety
  /// `raw` came from `allocate` with `kind` and is not (or no longer) known to libuv.
  unsafe fn free(raw: *mut RawHandle, kind: c_int) {
    let Some(api) = api() else { return };
    // SAFETY: as promised by the caller; the length is the one `allocate` used.
    unsafe {
      let size = (api.handle_size)(kind);
      let words = size.div_ceil(std::mem::size_of::<u64>()).max(1);
      drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
        raw.cast::<u64>(),
        words,
      )));
    }
  }

  /// The `data` of a handle, in a callback.
  ///
  /// # Safety
  /// `raw` is a live handle made here.
  pub unsafe fn data_of(raw: *const RawHandle) -> *mut c_void {
    match api() {
      // SAFETY: as promised by the caller.
      Some(api) => unsafe { (api.get_data)(raw) },
      None => std::ptr::null_mut(),
    }
  }

  /// (Re)starts a timer: `callback` after `timeout` ms, then every `repeat` ms (0: once).
  pub fn start_timer(&self, callback: TimerCallback, timeout: u64, repeat: u64) {
    if let Some(api) = api() {
      // SAFETY: `self` is a live timer handle on this (the loop's) thread.
      unsafe { (api.timer_start)(self.raw, callback, timeout, repeat) };
    }
  }

  pub fn stop_timer(&self) {
    if let Some(api) = api() {
      // SAFETY: as in `start_timer`.
      unsafe { (api.timer_stop)(self.raw) };
    }
  }

  /// Starts an idle handle (a no-op if it runs already).
  pub fn start_idle(&self, callback: IdleCallback) {
    if let Some(api) = api() {
      // SAFETY: `self` is a live idle handle on this (the loop's) thread.
      unsafe { (api.idle_start)(self.raw, callback) };
    }
  }

  pub fn stop_idle(&self) {
    if let Some(api) = api() {
      // SAFETY: as in `start_idle`.
      unsafe { (api.idle_stop)(self.raw) };
    }
  }

  /// Wakes the loop from any thread (async handles only).
  pub fn send(&self) {
    if let Some(api) = api() {
      // SAFETY: uv_async_send is thread-safe on a live async handle.
      unsafe { (api.async_send)(self.raw) };
    }
  }

  /// Closes the handle. Its memory is freed once libuv has let go of it, and `after` (if
  /// any) runs then, on the loop's thread: callbacks stop at once, the data they used can
  /// go once every handle that used it has closed.
  pub fn close(self, kind: Kind, after: Option<AfterClose>) {
    let Some(api) = api() else { return };
    let callback: CloseCallback = match kind {
      Kind::Poll => closed::<UV_POLL>,
      Kind::Timer => closed::<UV_TIMER>,
      Kind::Async => closed::<UV_ASYNC>,
      Kind::Idle => closed::<UV_IDLE>,
    };
    let after = after.map_or(std::ptr::null_mut(), |after| Box::into_raw(Box::new(after)));
    // SAFETY: a live handle, closed once (`self` is consumed). From here its data is the
    // `after` box (or null) for the close callback, which also frees the memory.
    unsafe {
      (api.set_data)(self.raw, after.cast());
      (api.close)(self.raw, callback);
    }
  }
}

/// Which type a handle is, for its close callback.
#[derive(Clone, Copy)]
pub enum Kind {
  Poll,
  Timer,
  Async,
  Idle,
}

/// What runs once a handle has closed.
pub type AfterClose = Box<dyn FnOnce()>;

unsafe extern "C" fn closed<const KIND: c_int>(raw: *mut RawHandle) {
  let _ = std::panic::catch_unwind(|| {
    // SAFETY: libuv is done with the handle: its data is the AfterClose box `close` left
    // (or null), and its memory came from `allocate` for this type.
    unsafe {
      let after = Handle::data_of(raw).cast::<AfterClose>();
      Handle::free(raw, KIND);
      if !after.is_null() {
        (Box::from_raw(after))();
      }
    }
  });
}
