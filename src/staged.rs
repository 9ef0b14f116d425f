//! The fds an `FdSocket` has duplicated for chunks still in its write buffer, and the
//! write that takes them: the TypeScript layer knows which chunk each fd rides on, so it
//! hands over a batch of chunks as one buffer plus the offsets where fds ride.

use std::collections::VecDeque;
use std::sync::Mutex;

use napi::bindgen_prelude::{External, Uint8ArraySlice};
use napi::Env;
use napi_derive::napi;

use crate::error::rejection;
use crate::error::{self, Result};
use crate::nonblocking::core::Message;
use crate::nonblocking::stream::StreamCore;
use crate::queue::OutboundQueue;
use crate::scm_rights::{self, SCM_MAX_FD};
use crate::sync::lock;

/// Staged duplicates, oldest first. One per socket (not per fd), held by the socket as
/// an External: when it is collected, whatever no chunk took is closed.
#[derive(Default)]
pub struct StagedFds {
  fds: Mutex<VecDeque<std::os::fd::OwnedFd>>,
}

/// A new, empty set of staged fds.
#[cfg_attr(test, allow(dead_code))]
#[napi(ts_return_type = "ExternalObject<'StagedFds'>")]
pub fn staged_fds() -> External<StagedFds> {
  External::new(StagedFds::default())
}

/// Duplicates every fd of `fds` (close-on-exec) and stages them, in order, behind the fds
/// already staged: all of them, or (if one cannot be duplicated) none.
#[cfg_attr(test, allow(dead_code))]
#[napi(ts_args_type = "staged: ExternalObject<'StagedFds'>, fds: number[]")]
pub fn stage_fds(staged: &External<StagedFds>, fds: Vec<i32>) -> Result<()> {
  let duplicates = fds
    .into_iter()
    .map(|fd| scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl")))
    .collect::<Result<Vec<_>>>()?;
  lock(&staged.fds).extend(duplicates);
  Ok(())
}

/// Duplicates `fd` (close-on-exec) behind the fds already staged.
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn stage_fd(staged: &External<StagedFds>, fd: i32) -> Result<()> {
  let duplicate = scm_rights::dup_cloexec(fd).map_err(|e| error::sys(e, "fcntl"))?;
  lock(&staged.fds).push_back(duplicate);
  Ok(())
}

/// Closes every staged fd.
#[cfg_attr(test, allow(dead_code))]
#[napi(ts_args_type = "staged: ExternalObject<'StagedFds'>")]
pub fn clear_staged(staged: &External<StagedFds>) {
  lock(&staged.fds).clear();
}

/// Writes `data`, a batch of Buffers (not joined: see [`StreamCore::send_messages`]), on
/// `stream` after every earlier write. `cuts` holds pairs `(offset, count)`, offsets into
/// the batch's bytes ascending: the next `count` staged fds ride on the byte at `offset`,
/// which starts a `sendmsg` of its own. Fds still in the stream's outbound queue ride on
/// the first byte. Returns (or resolves with) the byte count.
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn send_staged(
  env: &Env,
  staged: &External<StagedFds>,
  stream: &StreamCore,
  data: &[Uint8ArraySlice<'_>],
  cuts: &[f64],
  id: f64,
) -> napi::Result<Option<f64>> {
  let shared = stream.shared().map_err(rejection)?;
  let len = data.iter().map(|part| part.len()).sum();
  let messages = cut_pairs(cuts)
    .and_then(|cuts| staged.messages(stream.outbound(), len, &cuts))
    .map_err(|refused| rejection(refused.into()))?;
  StreamCore::send_messages(env, shared, data, messages, id, false)
}

/// `cuts` as `(offset, count)` pairs. They come as doubles: a write may be longer than
/// 4 GiB (Node 22 allows such Buffers), so a 32-bit offset could wrap.
fn cut_pairs(cuts: &[f64]) -> std::result::Result<Vec<(usize, usize)>, Refused> {
  let index = |value: f64| {
    (value >= 0.0 && value.fract() == 0.0 && value < usize::MAX as f64).then_some(value as usize)
  };
  cuts
    .chunks(2)
    .map(|pair| match pair {
      &[offset, count] => index(offset)
        .zip(index(count))
        .ok_or(Refused::BadCuts("an entry that is not an index")),
      _ => Err(Refused::BadCuts("an odd number of entries")),
    })
    .collect()
}

impl StagedFds {
  /// Splits a write of `len` bytes at `cuts`, taking the staged fds each part carries.
  /// Checks the cuts before taking anything, so a bad call loses no fd.
  fn messages(
    &self,
    outbound: &Mutex<OutboundQueue>,
    len: usize,
    cuts: &[(usize, usize)],
  ) -> std::result::Result<Vec<Message>, Refused> {
    let mut staged = lock(&self.fds);
    let mut needed = 0usize;
    let mut previous = None;
    for &(offset, count) in cuts {
      if offset >= len || previous.is_some_and(|p| offset <= p) {
        return Err(Refused::BadCuts("offsets out of order or past the data"));
      }
      if count == 0 || count > SCM_MAX_FD {
        return Err(Refused::BadCuts("a count outside 1..=253"));
      }
      previous = Some(offset);
      needed += count;
    }
    if needed > staged.len() {
      return Err(Refused::BadCuts("more fds than are staged"));
    }
    // Fds left in the stream's own outbound queue ride on the first byte too.
    let waiting = if len > 0 { lock(outbound).len() } else { 0 };
    let on_first_byte = match cuts.first() {
      Some(&(0, count)) => count,
      _ => 0,
    };
    if waiting > 0 && on_first_byte + waiting > SCM_MAX_FD {
      return Err(Refused::TooManyFds);
    }
    let mut messages = Vec::with_capacity(cuts.len() + 1);
    if cuts.first().is_none_or(|&(offset, _)| offset > 0) {
      messages.push(Message {
        start: 0,
        fds: Vec::new(),
      });
    }
    for &(start, count) in cuts {
      let fds = staged.drain(..count).collect();
      messages.push(Message { start, fds });
    }
    // Nothing is sent for an empty write, so the outbound fds wait for the next one.
    if waiting > 0 {
      if let Some(first) = messages.first_mut() {
        let mut fds = lock(outbound).take();
        fds.append(&mut first.fds);
        first.fds = fds;
      }
    }
    Ok(messages)
  }
}

/// Why a write was not split: nothing was taken when this is returned.
#[derive(Debug)]
enum Refused {
  /// The TypeScript layer's bookkeeping and the staged fds disagree (a bug).
  BadCuts(&'static str),
  /// More than 253 fds would ride on the first byte.
  TooManyFds,
}

impl From<Refused> for error::Error {
  fn from(refused: Refused) -> Self {
    match refused {
      Refused::BadCuts(what) => error::coded("ERR_INTERNAL", format!("staged fds: {what}")),
      Refused::TooManyFds => error::outbound_full(),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::os::fd::{AsRawFd, OwnedFd};

  /// An fd to duplicate, an outbound queue, and `count` staged duplicates.
  fn setup(count: usize) -> (OwnedFd, Mutex<OutboundQueue>, StagedFds) {
    let (fd, _) = std::io::pipe()
      .map(|(r, w)| (OwnedFd::from(r), w))
      .expect("pipe");
    let staged = StagedFds::default();
    for _ in 0..count {
      lock(&staged.fds).push_back(scm_rights::dup_cloexec(fd.as_raw_fd()).expect("dup"));
    }
    (fd, Mutex::default(), staged)
  }

  fn queue(outbound: &Mutex<OutboundQueue>, fd: &OwnedFd, count: usize) {
    for _ in 0..count {
      let duplicate = scm_rights::dup_cloexec(fd.as_raw_fd()).expect("dup");
      assert!(lock(outbound).enqueue(duplicate).is_ok());
    }
  }

  /// `send_staged`'s split, without a stream.
  fn split(
    staged: &StagedFds,
    outbound: &Mutex<OutboundQueue>,
    len: usize,
    cuts: &[f64],
  ) -> std::result::Result<Vec<Message>, Refused> {
    cut_pairs(cuts).and_then(|cuts| staged.messages(outbound, len, &cuts))
  }

  fn shape(messages: &[Message]) -> Vec<(usize, usize)> {
    messages.iter().map(|m| (m.start, m.fds.len())).collect()
  }

  #[test]
  fn cuts_split_a_write_and_take_the_staged_fds_in_order() {
    let (_fd, outbound, staged) = setup(5);
    let first = lock(&staged.fds)[0].as_raw_fd();
    let messages = split(&staged, &outbound, 10, &[4.0, 2.0, 7.0, 3.0]).expect("messages");
    assert_eq!(shape(&messages), vec![(0, 0), (4, 2), (7, 3)]);
    assert_eq!(
      messages[1].fds[0].as_raw_fd(),
      first,
      "oldest staged fd first"
    );
    assert_eq!(lock(&staged.fds).len(), 0);
  }

  #[test]
  fn bad_cuts_are_refused_before_any_fd_is_taken() {
    let (_fd, outbound, staged) = setup(5);
    let bad: [&[f64]; 9] = [
      &[1.0],
      &[3.0, 1.0, 2.0, 1.0],
      &[3.0, 1.0, 3.0, 1.0],
      &[10.0, 1.0],
      &[0.0, 0.0],
      &[0.0, 6.0],
      &[1.5, 1.0],
      &[-1.0, 1.0],
      &[f64::NAN, 1.0],
    ];
    for cuts in bad {
      assert!(
        split(&staged, &outbound, 10, cuts).is_err(),
        "cuts {cuts:?}"
      );
      assert_eq!(lock(&staged.fds).len(), 5, "cuts {cuts:?} took fds");
    }
  }

  #[test]
  fn fds_left_in_the_outbound_queue_ride_on_the_first_byte() {
    let (fd, outbound, staged) = setup(1);
    queue(&outbound, &fd, 2);
    let messages = split(&staged, &outbound, 3, &[0.0, 1.0]).expect("messages");
    assert_eq!(shape(&messages), vec![(0, 3)]);
    assert_eq!(lock(&outbound).len(), 0);
  }

  #[test]
  fn more_than_253_on_the_first_byte_is_refused_and_nothing_is_taken() {
    let (fd, outbound, staged) = setup(200);
    queue(&outbound, &fd, 60);
    assert!(split(&staged, &outbound, 3, &[0.0, 200.0]).is_err());
    assert_eq!(lock(&staged.fds).len(), 200);
    assert_eq!(lock(&outbound).len(), 60);
    // An empty write takes nothing either: the outbound fds wait for the next one.
    let messages = split(&staged, &outbound, 0, &[]).expect("messages");
    assert_eq!(shape(&messages), vec![(0, 0)]);
    assert_eq!(lock(&outbound).len(), 60);
  }
}
