//! Plain values as they cross between JS and Rust.

use napi::{sys, Env};
use nix::sys::socket::Shutdown;

use crate::error::{self, Result};

/// A byte count as JS receives it: a number, exact up to 2^53 (a `u32` would wrap at
/// 4 GiB and report a 4 GiB write as 0 bytes).
pub fn byte_count(n: usize) -> f64 {
  n as f64
}

/// Parses `shutdown`'s `how` argument.
pub fn shutdown_how(how: &str) -> Result<Shutdown> {
  match how {
    "read" => Ok(Shutdown::Read),
    "write" => Ok(Shutdown::Write),
    "both" => Ok(Shutdown::Both),
    other => Err(error::coded(
      "ERR_INVALID_ARG_VALUE",
      format!("how must be 'read', 'write' or 'both'; received '{other}'"),
    )),
  }
}

/// Calls `function` with `argv` as Node calls an event handler from an I/O callback (see
/// `settle::call_js`), with `undefined` as `this`.
pub(crate) fn call_raw(
  env: &Env,
  function: sys::napi_value,
  argv: &[sys::napi_value],
) -> napi::Result<()> {
  let mut this = std::ptr::null_mut();
  let mut result = std::ptr::null_mut();
  // SAFETY: plain N-API calls on the calling JS thread's live environment: `function` and
  // `argv` are values of this environment, the out-pointers are locals.
  unsafe {
    checked(
      sys::napi_get_undefined(env.raw(), &mut this),
      "napi_get_undefined",
    )?;
    let status = sys::napi_call_function(
      env.raw(),
      this,
      function,
      argv.len(),
      argv.as_ptr(),
      &mut result,
    );
    called(env, status, "napi_call_function")
  }
}

/// What a call into JS that returned `status` comes to: what the function threw is
/// reported as uncaught (`Ok`); only a failure to make the call is an error.
///
/// # Safety
/// `env` must be the calling JS thread's live environment.
pub(crate) unsafe fn called(env: &Env, status: sys::napi_status, what: &str) -> napi::Result<()> {
  if status == sys::Status::napi_pending_exception {
    // Node reports "cannot run JS", a worker being torn down, as a pending exception with
    // none recorded: `undefined`.
    let mut thrown = std::ptr::null_mut();
    // SAFETY: as promised by the caller; the out-pointer is a local.
    unsafe {
      if sys::napi_get_and_clear_last_exception(env.raw(), &mut thrown) == sys::Status::napi_ok {
        sys::napi_fatal_exception(env.raw(), thrown);
      }
    }
    return Ok(());
  }
  checked(status, what)
}

/// A Node-API `status` as a result: `what` failed unless it is `napi_ok`.
pub(crate) fn checked(status: sys::napi_status, what: &str) -> napi::Result<()> {
  if status == sys::Status::napi_ok {
    Ok(())
  } else {
    Err(napi::Error::new(napi::Status::from(status), what))
  }
}
