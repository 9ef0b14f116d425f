//! The calls made once per message or per fd, as plain functions on External handles,
//! registered with Node by hand.
//!
//! - napi-rs unwraps a class instance on every method call (a V8 private-property lookup,
//!   about 200 ns per call here), while an External argument costs a read and a check. The
//!   TypeScript layer fetches a stream's handle once (`handle` on the native class) and
//!   makes these calls with it; everything else stays a method. The stream handle is
//!   checked against its thread's registry ([`crate::handle`]); the staged fds and the
//!   canceller are still napi-rs Externals (the process-wide registry).
//! - The glue `#[napi]` generates for a function with arguments opens a borrow-tracking
//!   scope per call (an allocation and several thread-local pushes): about 90 ns per call
//!   against 24 ns for a plain Node-API callback, measured here. These few calls are plain
//!   callbacks instead ([`register`]); they convert their arguments and results with
//!   napi-rs's own traits, so values and errors look exactly as from generated glue. Their
//!   TypeScript types are in `lib/binding.ts` (`FastCalls`), next to the generated ones.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use napi::bindgen_prelude::{
  Env, External, Float64ArraySlice, FromNapiRef, FromNapiValue, Null, Object, ToNapiValue,
  Uint8ArraySlice, Unknown,
};
use napi::bindgen_prelude::{JsObjectValue, JsValue};
use napi::{sys, Status, ValueType};
use napi_derive::napi;

use crate::cancel::Canceller;
use crate::error::from_napi;
use crate::handle;
use crate::held::{self, Released};
use crate::nonblocking::core::ReadNow;
use crate::nonblocking::message::{self, MessageCore};
use crate::nonblocking::stream::StreamCore;
use crate::staged::{self, StagedFds};

/// One call's `env` and its first `N` arguments (`undefined` where fewer were passed).
struct Call<const N: usize> {
  env: sys::napi_env,
  args: [sys::napi_value; N],
}

impl<const N: usize> Call<N> {
  /// Argument `i` as a `T`; a value of another type is a `TypeError`-like error.
  fn value<T: FromNapiValue>(&self, i: usize) -> napi::Result<T> {
    // SAFETY: `env` and `args` come from this callback's `napi_get_cb_info` and stay
    // valid until it returns, which `&self` cannot outlive.
    unsafe { T::from_napi_value(self.env, self.args[i]) }
  }

  /// Argument `i` as an External made by this addon with a `T` inside.
  fn external<T: 'static>(&self, i: usize) -> napi::Result<&External<T>> {
    // SAFETY: as in `value`; the argument keeps the External (and so the `T`) alive for
    // the whole call, and the reference returned lives no longer than `&self`. napi-rs
    // checks that the External holds a `T`.
    unsafe { External::<T>::from_napi_ref(self.env, self.args[i]) }
  }

  /// Argument `i` as a [`Handle`] made on this thread with a `T` inside.
  fn handle<T: 'static>(&self, i: usize) -> napi::Result<&T> {
    // SAFETY: as in `value`; the argument keeps the handle alive for the whole call, and
    // the reference returned lives no longer than `&self`.
    unsafe { handle::from_js::<T>(self.env, self.args[i]) }
  }

  /// Argument `i` as an External with a `T` inside, `None` for `undefined` or `null`.
  fn optional_external<T: 'static>(&self, i: usize) -> napi::Result<Option<&External<T>>> {
    let mut kind = 0;
    // SAFETY: as in `value`; `kind` is a valid out-pointer.
    let status = unsafe { sys::napi_typeof(self.env, self.args[i], &mut kind) };
    if status != sys::Status::napi_ok {
      return Err(napi::Error::new(Status::from(status), "napi_typeof failed"));
    }
    match ValueType::from(kind) {
      ValueType::Undefined | ValueType::Null => Ok(None),
      _ => self.external(i).map(Some),
    }
  }

  /// Argument `i` as an operation's canceller (`undefined` or `null`: none).
  fn canceller(&self, i: usize) -> napi::Result<Option<Arc<Canceller>>> {
    Ok(
      self
        .optional_external::<Arc<Canceller>>(i)?
        .map(|c| Arc::clone(c)),
    )
  }

  /// The JS value of the call's result.
  fn result<T: ToNapiValue>(&self, value: T) -> napi::Result<sys::napi_value> {
    // SAFETY: `env` is this callback's, valid until it returns.
    unsafe { T::to_napi_value(self.env, value) }
  }
}

/// The body of a Node-API callback taking `N` arguments: runs `body`, and throws its
/// error (or a panic, as an error) into JS instead of returning a value.
///
/// # Safety
/// `env` and `info` must be the arguments Node passed to the running callback.
unsafe fn respond<const N: usize, S: AsRef<str>>(
  env: sys::napi_env,
  info: sys::napi_callback_info,
  body: impl FnOnce(&Call<N>) -> napi::Result<sys::napi_value, S>,
) -> sys::napi_value {
  let mut call = Call {
    env,
    args: [ptr::null_mut(); N],
  };
  let mut argc = N;
  // SAFETY: (the caller's contract) `env` and `info` are this callback's; `argc` and
  // `args` describe a buffer of `N` values, which Node fills (with `undefined` past the
  // arguments passed).
  let status = unsafe {
    sys::napi_get_cb_info(
      env,
      info,
      &mut argc,
      call.args.as_mut_ptr(),
      ptr::null_mut(),
      ptr::null_mut::<*mut c_void>(),
    )
  };
  if status != sys::Status::napi_ok {
    let error = napi::Error::new(Status::from(status), "napi_get_cb_info failed");
    // SAFETY: (the caller's contract) `env` is this callback's.
    return unsafe { throw(env, error) };
  }
  match catch_unwind(AssertUnwindSafe(|| body(&call))) {
    Ok(Ok(value)) => value,
    // SAFETY: as above.
    Ok(Err(error)) => unsafe { throw(env, error) },
    Err(_) => {
      let error = napi::Error::from_reason("fd-queue: internal error (panic)");
      // SAFETY: as above.
      unsafe { throw(env, error) }
    }
  }
}

/// Throws `error` into JS; the value to return from the callback.
///
/// # Safety
/// `env` must be the running callback's: the exception stays pending until it returns.
unsafe fn throw<S: AsRef<str>>(env: sys::napi_env, error: napi::Error<S>) -> sys::napi_value {
  // SAFETY: (the caller's contract) `env` is the running callback's.
  unsafe { napi::JsError::from(error).throw_into(env) };
  ptr::null_mut()
}

/// Defines a Node-API callback taking `N` arguments, whose body gets them as `call` (see
/// [`respond`]).
macro_rules! callback {
  ($(#[$doc:meta])* $name:ident, $n:literal, |$call:ident| $body:block) => {
    $(#[$doc])*
    unsafe extern "C" fn $name(
      env: sys::napi_env,
      info: sys::napi_callback_info,
    ) -> sys::napi_value {
      // Outside the unsafe block: the body is safe code unless it says otherwise.
      let body = |$call: &Call<$n>| $body;
      // SAFETY: Node calls this as a callback, with its own `env` and `info`.
      unsafe { respond::<$n, _>(env, info, body) }
    }
  };
}

callback! {
  /// `AsyncUnixStream#enqueue(fd)`: `(stream, fd) => void`.
  stream_enqueue, 2, |call| {
    let stream = call.handle::<Arc<StreamCore>>(0).map_err(from_napi)?;
    stream.enqueue(call.value(1).map_err(from_napi)?)?;
    call.result(()).map_err(from_napi)
  }
}

callback! {
  /// `AsyncUnixStream#dequeue()`: `(stream) => number | null`.
  stream_dequeue, 1, |call| {
    let fd = call
      .handle::<Arc<StreamCore>>(0)
      .map_err(from_napi)?
      .dequeue()?;
    call.result(fd).map_err(from_napi)
  }
}

callback! {
  /// `FdSocket`, emitting a chunk that brought fds: `(stream, first, count) => boolean`,
  /// see [`StreamCore::release_handed`].
  stream_release_handed, 3, |call| {
    let stream = call.handle::<Arc<StreamCore>>(0).map_err(from_napi)?;
    let first = call.value(1).map_err(from_napi)?;
    let released = stream.release_handed(first, call.value(2).map_err(from_napi)?);
    call.result(released).map_err(from_napi)
  }
}

callback! {
  /// `AsyncUnixStream#read`: `(stream, size, id, canceller, scratch, defer) => number |
  /// Buffer | null`: the bytes now (their count, when they are in `scratch`), or `null` and
  /// operation `id` settles later (always, with `defer`).
  stream_read, 6, |call| {
    let stream = call.handle::<Arc<StreamCore>>(0)?;
    let canceller = call.canceller(3)?;
    // A Uint8Array is checked for what it is on every Node version (`napi_get_buffer_info`
    // of another value aborts on early Node 20 releases).
    let mut scratch: Uint8ArraySlice<'_> = call.value(4)?;
    // SAFETY: the bytes are written during this call only, while no JS runs; the
    // TypeScript layer passes a Buffer of its own, never one over a SharedArrayBuffer.
    let scratch = unsafe { scratch.as_mut() };
    let env = Env::from(call.env);
    let defer = call.value::<Option<bool>>(5)?.unwrap_or(false);
    match stream.read(&env, call.value(1)?, call.value(2)?, canceller, scratch, defer)? {
      None => call.result(Null),
      // At most MAX_READ_SIZE (2^30) bytes: a u32.
      Some(ReadNow::InScratch(count)) => call.result(u32::try_from(count).unwrap_or(u32::MAX)),
      Some(ReadNow::Copied(bytes)) => call.result(&bytes),
    }
  }
}

callback! {
  /// `AsyncUnixStream#write`: `(stream, data, id, defer) => number | null`, the byte count
  /// now, or `null` and operation `id` settles later (always, with `defer`).
  stream_write, 4, |call| {
    let stream = call.handle::<Arc<StreamCore>>(0)?;
    let data: Uint8ArraySlice<'_> = call.value(1)?;
    let defer = call.value::<Option<bool>>(3)?.unwrap_or(false);
    let written = stream.write(&Env::from(call.env), data, call.value(2)?, defer)?;
    call.result(written)
  }
}

callback! {
  /// `MessageSocket#receive`: `(socket, id, canceller, scratch, defer) => message | false |
  /// null`, see [`message::receive`].
  message_receive, 5, |call| {
    let core = call.handle::<Arc<MessageCore>>(0)?;
    let canceller = call.canceller(2)?;
    let mut scratch: Uint8ArraySlice<'_> = call.value(3)?;
    // SAFETY: as in `stream_read`.
    let scratch = unsafe { scratch.as_mut() };
    let defer = call.value::<Option<bool>>(4)?.unwrap_or(false);
    let env = Env::from(call.env);
    match message::receive(&env, core, call.value(1)?, canceller, scratch, defer)? {
      Some(value) => Ok(value.0),
      None => call.result(Null),
    }
  }
}

callback! {
  /// `MessageSocket#send` and `sendTo`: `(socket, data, fds, to, id, defer) => number |
  /// null`, the byte count now, or `null` and operation `id` settles later; see
  /// [`message::send`].
  message_send, 6, |call| {
    let core = call.handle::<Arc<MessageCore>>(0)?;
    let data: Uint8ArraySlice<'_> = call.value(1)?;
    let fds: Vec<i32> = call.value(2)?;
    let defer = call.value::<Option<bool>>(5)?.unwrap_or(false);
    let env = Env::from(call.env);
    let sent = message::send(&env, core, &data, &fds, call.value(3)?, call.value(4)?, defer)?;
    call.result(sent)
  }
}

callback! {
  /// A received message's fds: `(id, keep, scratch) => number | number[] | null`, see
  /// [`held::release_held_fds`] (a number: the count of fd numbers in `scratch`).
  release_held_fds, 3, |call| {
    let env = Env::from(call.env);
    let mut scratch: Uint8ArraySlice<'_> = call.value(2)?;
    // SAFETY: as in `stream_read`.
    let scratch = unsafe { scratch.as_mut() };
    match held::release_held_fds(&env, call.value(0)?, call.value(1)?, scratch)? {
      Released::Nothing => call.result(Null),
      Released::InScratch(count) => call.result(count),
      Released::Numbers(value) => Ok(value.0),
    }
  }
}

callback! {
  /// `FdSocket#enqueue(fd)`: `(staged, fd) => void`, see [`staged::stage_fd`].
  stage_fd, 2, |call| {
    let staged = call.external::<StagedFds>(0).map_err(from_napi)?;
    staged::stage_fd(staged, call.value(1).map_err(from_napi)?)?;
    call.result(()).map_err(from_napi)
  }
}

callback! {
  /// `FdSocket`'s writes: `(staged, stream, data, cuts, id) => number | null`, `data` a
  /// Buffer or an array of them; see [`staged::send_staged`].
  send_staged, 5, |call| {
    let cuts: Float64ArraySlice<'_> = call.value(3)?;
    let one: [Uint8ArraySlice<'_>; 1];
    let many: Vec<Uint8ArraySlice<'_>>;
    let data: &[Uint8ArraySlice<'_>] = if call.value::<Unknown<'_>>(2)?.is_array()? {
      many = call.value(2)?;
      &many
    } else {
      one = [call.value(2)?];
      &one
    };
    let written = staged::send_staged(
      &Env::from(call.env),
      call.external::<StagedFds>(0)?,
      call.handle::<Arc<StreamCore>>(1)?,
      data,
      &cuts,
      call.value(4)?,
    )?;
    call.result(written)
  }
}

/// The hand-registered calls, by their JS names.
const CALLS: [(&str, napi::Callback); 10] = [
  ("streamEnqueue", stream_enqueue),
  ("streamDequeue", stream_dequeue),
  ("streamReleaseHanded", stream_release_handed),
  ("streamRead", stream_read),
  ("streamWrite", stream_write),
  ("stageFd", stage_fd),
  ("sendStaged", send_staged),
  ("messageReceive", message_receive),
  ("messageSend", message_send),
  ("releaseHeldFds", release_held_fds),
];

/// Adds [`CALLS`] to the addon's exports, and silences panics (see [`silence_panics`]).
#[napi(module_exports)]
pub fn register(mut exports: Object, env: Env) -> napi::Result<()> {
  silence_panics();
  for (name, callback) in CALLS {
    let function = env.create_function::<Unknown, Unknown>(name, callback)?;
    exports.set_named_property(name, function)?;
  }
  Ok(())
}

/// Makes a panic of this addon's code print nothing (the hook is this library's own: its
/// copy of std is linked in). None is expected; every place one could reach Node catches
/// it and turns it into an error, or (tokio's, when the reactor's fd was closed under it
/// by code that closed a number it did not own) ends the runtime it came from; a thread of
/// the `'threads'` driver that panics ends. Printing would put Rust's message and
/// backtrace note in the host program's stderr.
fn silence_panics() {
  static ONCE: std::sync::Once = std::sync::Once::new();
  ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}
