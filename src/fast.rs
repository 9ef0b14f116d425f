//! The calls made once per message or per fd, as plain functions on External handles.
//! napi-rs unwraps a class instance on every method call (a V8 private-property lookup,
//! about 200 ns per call here), while an External argument costs one field read. The
//! TypeScript layer fetches a stream's handle once (`handle` on the native class) and
//! makes these calls with it; everything else stays a method.

use std::sync::Arc;

use napi::bindgen_prelude::{AsyncBlock, Buffer, BufferSlice, Either, External, Uint8ArraySlice};
use napi::Env;
use napi_derive::napi;

use crate::error::Result;
use crate::nonblocking::StreamCore;

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

/// `AsyncUnixStream#read`.
#[napi(
  ts_args_type = "stream: ExternalObject<'StreamCore'>, size: number",
  ts_return_type = "Buffer | Promise<Buffer>"
)]
pub fn stream_read<'env>(
  env: &'env Env,
  stream: &StreamHandle,
  size: u32,
) -> napi::Result<Either<BufferSlice<'env>, AsyncBlock<Buffer>>> {
  stream.read(env, size)
}

/// `AsyncUnixStream#write`.
#[napi(
  ts_args_type = "stream: ExternalObject<'StreamCore'>, data: Uint8Array",
  ts_return_type = "number | Promise<number>"
)]
pub fn stream_write(
  env: &Env,
  stream: &StreamHandle,
  data: Uint8ArraySlice<'_>,
) -> napi::Result<Either<f64, AsyncBlock<f64>>> {
  stream.write(env, data)
}
