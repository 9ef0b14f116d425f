//! Handles: values JS holds as Externals and passes back on the calls made per message
//! (see `fast`). napi-rs's `External` proves on every call that the pointer inside is one
//! of its own, through a process-wide registry behind a lock and a SipHash; these calls
//! check against a registry of this thread instead (an External belongs to the thread that
//! made it), which remembers the last handle it found: one comparison on a hot path.

use std::any::TypeId;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr;

use napi::bindgen_prelude::{ToNapiValue, TypeName};
use napi::{sys, Status, ValueType};

/// A `T` handed to JS as an External, which owns it from then on (dropped when the
/// External is collected, or when its thread's environment is torn down).
pub struct Handle<T: 'static>(pub T);

thread_local! {
  /// The live handles made on this thread: address → the type inside.
  static LIVE: RefCell<BTreeMap<usize, TypeId>> = const { RefCell::new(BTreeMap::new()) };
  /// The handle found last (address 0: none), checked first.
  static LAST: Cell<(usize, Option<TypeId>)> = const { Cell::new((0, None)) };
}

fn register(address: usize, kind: TypeId) {
  // `try_with`: a thread that is going away has no handles to check any more.
  let _ = LIVE.try_with(|live| live.borrow_mut().insert(address, kind));
}

fn unregister(address: usize) {
  let _ = LIVE.try_with(|live| live.borrow_mut().remove(&address));
  let _ = LAST.try_with(|last| {
    if last.get().0 == address {
      last.set((0, None));
    }
  });
}

/// Whether `address` is a live handle of this thread holding a `kind`.
fn is_live(address: usize, kind: TypeId) -> bool {
  if LAST.try_with(Cell::get) == Ok((address, Some(kind))) {
    return true;
  }
  let live = LIVE
    .try_with(|live| live.borrow().get(&address) == Some(&kind))
    .unwrap_or(false);
  if live {
    let _ = LAST.try_with(|last| last.set((address, Some(kind))));
  }
  live
}

/// Node-API finalizer of a handle's External: unregisters it, then drops the `T`.
unsafe extern "C" fn finalize<T: 'static>(_: sys::napi_env, data: *mut c_void, _: *mut c_void) {
  unregister(data as usize);
  // SAFETY: `data` is the `Box<T>` that `to_napi_value` leaked for this External, whose
  // finalizer Node runs once; it is no longer registered, so no call can reach it.
  drop(unsafe { Box::from_raw(data.cast::<T>()) });
}

impl<T: 'static> TypeName for Handle<T> {
  fn type_name() -> &'static str {
    "External"
  }

  fn value_type() -> ValueType {
    ValueType::External
  }
}

impl<T: 'static> ToNapiValue for Handle<T> {
  unsafe fn to_napi_value(env: sys::napi_env, handle: Self) -> napi::Result<sys::napi_value> {
    // Boxes of a zero-sized type share one address, which the registry could not tell apart.
    const {
      assert!(
        std::mem::size_of::<T>() > 0,
        "a handle holds a value with a size"
      )
    };
    let data = Box::into_raw(Box::new(handle.0));
    let mut value = ptr::null_mut();
    // SAFETY: (the caller's contract) `env` is the running callback's; `data` is a live
    // allocation that the finalizer frees.
    let status = unsafe {
      sys::napi_create_external(
        env,
        data.cast(),
        Some(finalize::<T>),
        ptr::null_mut(),
        &mut value,
      )
    };
    if status != sys::Status::napi_ok {
      // SAFETY: no External was made: `data` is still only ours.
      drop(unsafe { Box::from_raw(data) });
      return Err(napi::Error::new(
        Status::from(status),
        "napi_create_external failed",
      ));
    }
    register(data as usize, TypeId::of::<T>());
    Ok(value)
  }
}

/// The `T` inside `value`, an External made by [`Handle`] on this thread; an `InvalidArg`
/// error for any other value.
///
/// # Safety
/// `env` and `value` must be the running callback's; the reference must not outlive the
/// callback (`value`, an argument, keeps the External alive until then).
pub unsafe fn from_js<'a, T: 'static>(
  env: sys::napi_env,
  value: sys::napi_value,
) -> napi::Result<&'a T> {
  let mut data = ptr::null_mut();
  // SAFETY: (the caller's contract) `env` and `value` are the running callback's.
  let status = unsafe { sys::napi_get_value_external(env, value, &mut data) };
  if status != sys::Status::napi_ok || data.is_null() || !is_live(data as usize, TypeId::of::<T>())
  {
    return Err(napi::Error::new(
      Status::InvalidArg,
      format!("expected a handle to {}", std::any::type_name::<T>()),
    ));
  }
  // SAFETY: registered live with this type: a `Box<T>` leaked by `to_napi_value` on this
  // thread, freed only by the External's finalizer, which cannot run while `value` is an
  // argument of the running callback.
  Ok(unsafe { &*data.cast::<T>() })
}
