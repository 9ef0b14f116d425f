//! The fds an `FdSocket` has duplicated for chunks still in its write buffer, and the
//! write that takes them: the TypeScript layer knows which chunk each fd rides on, so it
//! hands over a batch of chunks as one buffer plus the offsets where fds ride.

use std::collections::VecDeque;
use std::sync::Mutex;

use napi::bindgen_prelude::{AsyncBlock, Either, External};
use napi::Env;
use napi_derive::napi;

use crate::error::{self, Result};
use crate::fast::StreamHandle;
use crate::nonblocking::{lock, rejection, Message, StreamCore};
use crate::scm_rights::{self, SCM_MAX_FD};

/// Staged duplicates, oldest first. One per socket (not per fd), held by the socket as
/// an External: when it is collected, whatever no chunk took is closed.
#[derive(Default)]
pub struct StagedFds {
  fds: Mutex<VecDeque<std::os::fd::OwnedFd>>,
}

/// A new, empty set of staged fds.
#[napi(ts_return_type = "ExternalObject<'StagedFds'>")]
pub fn staged_fds() -> External<StagedFds> {
  External::new(StagedFds::default())
}

/// Duplicates `fd` (close-on-exec) behind the fds already staged.
#[napi(ts_args_type = "staged: ExternalObject<'StagedFds'>, fd: number")]
pub fn stage_fd(staged: &External<StagedFds>, fd: i32) -> Result<()> {
  let duplicate = scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
  lock(&staged.fds).push_back(duplicate);
  Ok(())
}

/// Closes every staged fd.
#[napi(ts_args_type = "staged: ExternalObject<'StagedFds'>")]
pub fn clear_staged(staged: &External<StagedFds>) {
  lock(&staged.fds).clear();
}

/// Writes `data` on `stream` after every earlier write. `cuts` holds pairs
/// `(offset, count)`, offsets ascending: the next `count` staged fds ride on the byte at
/// `offset`, which starts a `sendmsg` of its own. Fds still in the stream's outbound queue
/// ride on the first byte. Returns (or resolves with) the byte count.
#[napi(
  ts_args_type = "staged: ExternalObject<'StagedFds'>, stream: ExternalObject<'StreamCore'>, data: Uint8Array, cuts: Uint32Array",
  ts_return_type = "number | Promise<number>"
)]
pub fn send_staged(
  env: &Env,
  staged: &External<StagedFds>,
  stream: &StreamHandle,
  data: &[u8],
  cuts: &[u32],
) -> napi::Result<Either<u32, AsyncBlock<u32>>> {
  let shared = stream.shared().map_err(rejection)?;
  let messages = staged
    .messages(stream, data.len(), cuts)
    .map_err(rejection)?;
  StreamCore::send_messages(env, shared, data, messages)
}

impl StagedFds {
  /// Splits a write of `len` bytes at `cuts`, taking the staged fds each part carries.
  /// Checks the cuts before taking anything, so a bad call loses no fd.
  fn messages(&self, stream: &StreamCore, len: usize, cuts: &[u32]) -> Result<Vec<Message>> {
    let mut staged = lock(&self.fds);
    let mut needed = 0usize;
    let mut previous = None;
    for pair in cuts.chunks(2) {
      let &[offset, count] = pair else {
        return Err(bad_cuts("an odd number of entries"));
      };
      let offset = offset as usize;
      if offset >= len || previous.is_some_and(|p| offset <= p) {
        return Err(bad_cuts("offsets out of order or past the data"));
      }
      if count == 0 || count as usize > SCM_MAX_FD {
        return Err(bad_cuts("a count outside 1..=253"));
      }
      previous = Some(offset);
      needed += count as usize;
    }
    if needed > staged.len() {
      return Err(bad_cuts("more fds than are staged"));
    }
    let mut messages = Vec::with_capacity(cuts.len() / 2 + 1);
    if cuts.first().is_none_or(|&offset| offset > 0) {
      messages.push(Message {
        start: 0,
        fds: Vec::new(),
      });
    }
    for pair in cuts.chunks_exact(2) {
      let fds = staged.drain(..pair[1] as usize).collect();
      messages.push(Message {
        start: pair[0] as usize,
        fds,
      });
    }
    // Nothing is sent for an empty write, so the outbound fds wait for the next one.
    let outbound = if len > 0 {
      stream.take_outbound()
    } else {
      Vec::new()
    };
    if !outbound.is_empty() {
      if let Some(first) = messages.first_mut() {
        if first.fds.len() + outbound.len() > SCM_MAX_FD {
          return Err(error::outbound_full());
        }
        let mut fds = outbound;
        fds.append(&mut first.fds);
        first.fds = fds;
      }
    }
    Ok(messages)
  }
}

fn bad_cuts(what: &str) -> error::Error {
  error::coded("ERR_INTERNAL", format!("staged fds: {what}"))
}
