//! The unsent rest of a write that has to wait for room in the socket: the caller's own
//! Buffers on the JS-thread runtime, a copy on the threaded one.
//!
//! On the JS-thread runtime the write's future runs on the thread that owns the Buffers
//! (one, or the chunks of an `FdSocket` batch), so it can hold them (a reference each keeps
//! them alive) and send from their memory, as `net.Socket` does, instead of copying up to a
//! whole write. JS may still detach a Buffer's ArrayBuffer (a transfer) or shrink a
//! resizable one while the write waits, and its memory could then be gone: every send
//! first looks each Buffer it sends from up again and checks that it still has the same
//! memory and length, in the same synchronous stretch as the `sendmsg` (no JS runs between
//! the two). The Buffers before one that changed still go out; then the write fails with
//! `ERR_INVALID_STATE` instead of sending what that one holds now. On the threaded runtime
//! the future runs on a worker, which may not touch JS values: the rest is copied.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use napi::bindgen_prelude::{FromNapiValue, JsValue, ToNapiValue, Uint8Array, Uint8ArraySlice};
use napi::{sys, Env};

use crate::error;
use crate::scm_rights;

/// Bytes a pending write still has to send, counted from its first unsent byte.
pub(crate) enum Rest {
  Copied(Vec<u8>),
  /// The caller's Buffers, in order (a batch of writes is not joined into one).
  Lent(LentParts),
}

/// The caller's Buffers not sent whole yet, and how many bytes of the rest went with the
/// ones sent whole and let go (sends only go forward: they are never needed again).
pub(crate) struct LentParts {
  parts: VecDeque<Lent>,
  gone: usize,
}

/// One of the caller's Buffers, from `start` on, and the memory it had when lent.
pub(crate) struct Lent {
  buffer: Uint8Array,
  /// The Buffer's memory and length when it was lent (an address, compared only).
  address: usize,
  length: usize,
  start: usize,
}

impl Rest {
  /// The concatenation of `parts` from byte `start` on: lent on the JS-thread runtime,
  /// copied otherwise (or when a reference cannot be made).
  pub(crate) fn of(env: &Env, parts: &[Uint8ArraySlice<'_>], start: usize) -> Self {
    // Each part from where its unsent bytes begin (none of a part sent whole).
    let mut offset = 0;
    let unsent: Vec<(&Uint8ArraySlice<'_>, usize)> = parts
      .iter()
      .filter_map(|part| {
        let from = start.saturating_sub(offset).min(part.len());
        offset += part.len();
        (from < part.len()).then_some((part, from))
      })
      .collect();
    if !crate::runtime::runs_elsewhere() {
      let lent: Option<VecDeque<Lent>> = unsent
        .iter()
        .map(|&(part, start)| {
          // SAFETY: `part` is a value of this call's environment `env`, on its thread.
          let buffer = unsafe { Uint8Array::from_napi_value(env.raw(), part.value().value) };
          buffer.ok().map(|buffer| Lent {
            buffer,
            address: part.as_ptr() as usize,
            length: part.len(),
            start,
          })
        })
        .collect();
      if let Some(parts) = lent {
        return Rest::Lent(LentParts { parts, gone: 0 });
      }
    }
    let mut copied = Vec::with_capacity(unsent.iter().map(|&(part, from)| part.len() - from).sum());
    for &(part, from) in &unsent {
      copied.extend_from_slice(&part[from..]);
    }
    Rest::Copied(copied)
  }

  /// Runs `send` on bytes `from..to` of the rest, as slices (at most
  /// [`scm_rights::MAX_IOV`]), as far as they are still there: up to a Buffer that was
  /// detached or resized, and a [`Changed`] error if that is the first. `from` never goes
  /// back. `send` must not call into JS: the slices of lent Buffers are valid only while
  /// no JS runs (JS could detach them).
  pub(crate) fn with<R>(
    &mut self,
    from: usize,
    to: usize,
    send: impl FnOnce(&[IoSlice<'_>]) -> io::Result<R>,
  ) -> io::Result<R> {
    match self {
      Rest::Copied(bytes) => send(&[IoSlice::new(&bytes[from..to])]),
      Rest::Lent(lent) => with_lent(lent, from, to, send),
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

/// [`Rest::with`] on lent Buffers: each one that holds bytes of `from..to` is looked up
/// again and must have the memory and length it had when lent.
fn with_lent<R>(
  lent: &mut LentParts,
  from: usize,
  to: usize,
  send: impl FnOnce(&[IoSlice<'_>]) -> io::Result<R>,
) -> io::Result<R> {
  // The Buffers sent whole are let go: each send looks at no more than it may send.
  while let Some(first) = lent.parts.front() {
    let unsent = first.length - first.start;
    if lent.gone + unsent > from {
      break;
    }
    lent.gone += unsent;
    lent.parts.pop_front();
  }
  let changed = || io::Error::other(Changed);
  // Only on the JS thread whose runtime runs this write (where the Buffers live).
  let Some(env) = crate::runtime::js_env() else {
    return Err(changed());
  };
  let mut scope = std::ptr::null_mut();
  // SAFETY: `env` is this thread's live environment (`js_env`); the scope is closed
  // below, after the last value made in it is used.
  if unsafe { sys::napi_open_handle_scope(env, &mut scope) } != sys::Status::napi_ok {
    return Err(changed());
  }
  let result = checked(env, lent, from, to).and_then(|checked| {
    let parts: Vec<&[u8]> = checked.iter().map(|(now, start)| &now[*start..]).collect();
    let mut iov = Vec::with_capacity(parts.len());
    scm_rights::Gather::new(&parts).range(0, to - from, &mut iov);
    send(&iov)
  });
  // SAFETY: the scope opened above, on the same thread; nothing made in it is used after.
  unsafe { sys::napi_close_handle_scope(env, scope) };
  result
}

/// The lent Buffers that hold bytes `from..to`, each looked up again and checked, with
/// where its bytes from `from` on begin, up to the first that changed (an error if that
/// is the first); valid until the handle scope open on `env` closes.
fn checked<'s>(
  env: sys::napi_env,
  lent: &mut LentParts,
  from: usize,
  to: usize,
) -> io::Result<Vec<(Uint8ArraySlice<'s>, usize)>> {
  let mut checked = Vec::new();
  let mut offset = lent.gone;
  for part in lent.parts.iter_mut() {
    // No more than one `sendmsg` takes.
    if offset >= to || checked.len() == scm_rights::MAX_IOV {
      break;
    }
    // Every part here holds bytes from `from` on: `with_lent` let go of those before it.
    let unsent = part.length - part.start;
    // SAFETY: `env` is this thread's live environment; the reference is this
    // environment's (made on this thread) and holds the Buffer, so the value it gives is
    // that Buffer.
    let now = unsafe { <&mut Uint8Array as ToNapiValue>::to_napi_value(env, &mut part.buffer) }
      // SAFETY: as above; the caller uses the slice only before its scope closes, while
      // no JS runs (the Buffer cannot change or go meanwhile).
      .and_then(|value| unsafe { Uint8ArraySlice::from_napi_value(env, value) });
    match now {
      Ok(now) if now.as_ptr() as usize == part.address && now.len() == part.length => {
        checked.push((now, part.start + from.saturating_sub(offset)));
      }
      // What comes before it still goes out; the send after that fails.
      _ if !checked.is_empty() => break,
      _ => return Err(io::Error::other(Changed)),
    }
    offset += unsent;
  }
  Ok(checked)
}
