//! The unsent rest of a write that has to wait for room in the socket: the caller's own
//! Buffer on the JS-thread runtime, a copy on the threaded one.
//!
//! On the JS-thread runtime the write's future runs on the thread that owns the Buffer,
//! so it can hold the Buffer (a reference keeps it alive) and send from its memory, as
//! `net.Socket` does, instead of copying up to a whole write. JS may still detach the
//! Buffer's ArrayBuffer (a transfer) or shrink a resizable one while the write waits, and
//! its memory could then be gone: every send first looks the Buffer up again and checks
//! that it still has the same memory and length, in the same synchronous stretch as the
//! `sendmsg` (no JS runs between the two). If it changed, the write fails with
//! `ERR_INVALID_STATE` instead of sending what is there now. On the threaded runtime the
//! future runs on a worker, which may not touch JS values: the rest is copied, as before.

use std::io;

use napi::bindgen_prelude::{FromNapiValue, JsValue, ToNapiValue, Uint8Array, Uint8ArraySlice};
use napi::{sys, Env};

use crate::error;

/// Bytes a pending write still has to send.
pub(crate) enum Rest {
  Copied(Vec<u8>),
  Lent(Lent),
}

/// The caller's Buffer, from `start` on, and the memory it had when lent.
pub(crate) struct Lent {
  buffer: Uint8Array,
  /// The Buffer's memory and length when it was lent (an address, compared only).
  address: usize,
  length: usize,
  start: usize,
}

impl Rest {
  /// The rest of `data` from `start`: lent on the JS-thread runtime, copied otherwise (or
  /// when the reference cannot be made).
  pub(crate) fn of(env: &Env, data: Uint8ArraySlice<'_>, start: usize) -> Self {
    if !crate::runtime::runs_elsewhere() {
      // SAFETY: `data` is a value of this call's environment `env`, on its thread.
      let buffer = unsafe { Uint8Array::from_napi_value(env.raw(), data.value().value) };
      if let Ok(buffer) = buffer {
        return Rest::Lent(Lent {
          buffer,
          address: data.as_ptr() as usize,
          length: data.len(),
          start,
        });
      }
    }
    Rest::Copied(data[start..].to_vec())
  }

  /// Runs `send` on bytes `from..to` of the rest, if they are still there.
  pub(crate) fn with<R>(
    &mut self,
    from: usize,
    to: usize,
    send: impl FnOnce(&[u8]) -> io::Result<R>,
  ) -> io::Result<R> {
    match self {
      Rest::Copied(bytes) => send(&bytes[from..to]),
      Rest::Lent(lent) => lent.with(from, to, send),
    }
  }
}

/// The error a write fails with when its Buffer changed while it waited.
#[derive(Debug)]
pub(crate) struct Changed;

impl std::fmt::Display for Changed {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("the Buffer being written was detached or resized before all of it was sent")
  }
}

impl std::error::Error for Changed {}

impl Changed {
  /// The JS error for an I/O error that is a [`Changed`], if it is one.
  pub(crate) fn of(e: &io::Error) -> Option<error::Error> {
    e.get_ref()
      .filter(|inner| inner.is::<Changed>())
      .map(|inner| error::coded("ERR_INVALID_STATE", inner.to_string()))
  }
}

impl Lent {
  fn with<R>(
    &mut self,
    from: usize,
    to: usize,
    send: impl FnOnce(&[u8]) -> io::Result<R>,
  ) -> io::Result<R> {
    let changed = || io::Error::other(Changed);
    // Only on the JS thread whose runtime runs this write (where the Buffer lives).
    let Some(env) = crate::runtime::js_env() else {
      return Err(changed());
    };
    let mut scope = std::ptr::null_mut();
    // SAFETY: `env` is this thread's live environment (`js_env`); the scope is closed
    // below, after the last value made in it is used.
    if unsafe { sys::napi_open_handle_scope(env, &mut scope) } != sys::Status::napi_ok {
      return Err(changed());
    }
    // SAFETY: `env` as above; the reference is this environment's (made on this thread),
    // and holds the Buffer, so the value it gives is that Buffer.
    let now = unsafe { <&mut Uint8Array as ToNapiValue>::to_napi_value(env, &mut self.buffer) }
      // SAFETY: as above; the slice is used only before the scope closes, while no JS runs.
      .and_then(|value| unsafe { Uint8ArraySlice::from_napi_value(env, value) });
    let result = match now {
      Ok(now) if now.as_ptr() as usize == self.address && now.len() == self.length => {
        send(&now[self.start + from..self.start + to])
      }
      _ => Err(changed()),
    };
    // SAFETY: the scope opened above, on the same thread; nothing made in it is used after.
    unsafe { sys::napi_close_handle_scope(env, scope) };
    result
  }
}
