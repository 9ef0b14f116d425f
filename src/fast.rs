//! The calls made once per message or per fd, as plain functions on External handles.
//! napi-rs unwraps a class instance on every method call (a V8 private-property lookup,
//! about 200 ns per call here), while an External argument costs one field read. The
//! TypeScript layer fetches a stream's handle once (`handle` on the native class) and
//! makes these calls with it; everything else stays a method.

use std::sync::Arc;

use napi::bindgen_prelude::{BufferSlice, External, Uint8ArraySlice};
use napi::Env;
use napi_derive::napi;

use crate::cancel::CancelHandle;
use crate::error::Result;
use crate::nonblocking::stream::StreamCore;

/// A stream's core as JS holds it. Closing stays with the stream object: the handle only
/// keeps the memory alive, never the socket.
pub type StreamHandle = External<Arc<StreamCore>>;

/// `AsyncUnixStream#enqueue`.
#[napi(ts_args_type = "stream: ExternalObject<'StreamCore'>, fd: number")]
pub fn stream_enqueue(stream: &StreamHandle, fd: i32) -> Result<()> {
  stream.enqueue(fd)
}

/// `AsyncUnixStream#dequeue`.
#[napi(ts_args_type = "stream: ExternalObject<'StreamCore'>")]
pub fn stream_dequeue(stream: &StreamHandle) -> Result<Option<i32>> {
  stream.dequeue()
}

/// `AsyncUnixStream#read`: the bytes now, or `null` and operation `id` settles later.
#[napi(
  ts_args_type = "stream: ExternalObject<'StreamCore'>, size: number, id: number, canceller?: ExternalObject<'Canceller'> | undefined | null",
  ts_return_type = "Buffer | null"
)]
pub fn stream_read<'env>(
  env: &'env Env,
  stream: &StreamHandle,
  size: u32,
  id: f64,
  canceller: Option<&CancelHandle>,
) -> napi::Result<Option<BufferSlice<'env>>> {
  stream.read(env, size, id, canceller.map(|c| Arc::clone(c)))
}

/// `AsyncUnixStream#write`: the byte count now, or `null` and operation `id` settles later.
#[napi(
  ts_args_type = "stream: ExternalObject<'StreamCore'>, data: Uint8Array, id: number",
  ts_return_type = "number | null"
)]
pub fn stream_write(
  env: &Env,
  stream: &StreamHandle,
  data: Uint8ArraySlice<'_>,
  id: f64,
) -> napi::Result<Option<f64>> {
  stream.write(env, data, id)
}
