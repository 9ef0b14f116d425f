//! The two fd queues every stream has: outbound fds waiting to ride on the next write,
//! and inbound fds that arrived with reads and wait for `dequeue`. Both own their fds,
//! so dropping a queue closes whatever is still in it.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::scm_rights::SCM_MAX_FD;

/// Default bound of the inbound queue (`maxQueuedFds`).
pub const DEFAULT_MAX_QUEUED_FDS: usize = 1024;

/// The outbound queue already holds `SCM_MAX_FD` fds.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// Fds waiting for the next write. They all go in one SCM_RIGHTS message, so the queue
/// never holds more than the kernel accepts in one.
#[derive(Debug, Default)]
pub struct OutboundQueue {
  fds: Vec<OwnedFd>,
}

impl OutboundQueue {
  pub fn is_full(&self) -> bool {
    self.fds.len() >= SCM_MAX_FD
  }

  pub fn is_empty(&self) -> bool {
    self.fds.is_empty()
  }

  pub fn len(&self) -> usize {
    self.fds.len()
  }

  /// Adds an fd the queue now owns. When full, the fd is handed back untouched.
  pub fn enqueue(&mut self, fd: OwnedFd) -> Result<(), (QueueFull, OwnedFd)> {
    if self.is_full() {
      return Err((QueueFull, fd));
    }
    self.fds.push(fd);
    Ok(())
  }

  /// The raw fds to attach to a `sendmsg`; the queue keeps owning them.
  pub fn raw_fds(&self) -> Vec<RawFd> {
    self.fds.iter().map(AsRawFd::as_raw_fd).collect()
  }

  /// Empties the queue, handing its fds to the caller (who closes them by dropping them
  /// once a `sendmsg` carried them, or once it failed for good).
  pub fn take(&mut self) -> Vec<OwnedFd> {
    std::mem::take(&mut self.fds)
  }

  /// Closes every queued fd.
  pub fn clear(&mut self) {
    crate::scm_rights::close_all(std::mem::take(&mut self.fds));
  }
}

/// What `dequeue` meets at the head of the inbound queue.
#[derive(Debug)]
enum Slot {
  Fd(OwnedFd),
  /// The kernel dropped fds of one message (`MSG_CTRUNC`): the dequeue that reaches this
  /// marker reports it once.
  Lost,
}

/// `dequeue` reached the fds a truncated message lost.
#[derive(Debug, PartialEq, Eq)]
pub struct Truncated;

/// Fds received with reads, oldest first, waiting for `dequeue`.
#[derive(Debug)]
pub struct InboundQueue {
  slots: VecDeque<Slot>,
  limit: usize,
}

impl Default for InboundQueue {
  fn default() -> Self {
    Self {
      slots: VecDeque::new(),
      limit: DEFAULT_MAX_QUEUED_FDS,
    }
  }
}

impl InboundQueue {
  pub fn len(&self) -> usize {
    self.slots.len()
  }

  pub fn limit(&self) -> usize {
    self.limit
  }

  pub fn set_limit(&mut self, limit: usize) {
    self.limit = limit;
  }

  /// At or over `maxQueuedFds`: readers must wait for the user to dequeue. One read can
  /// carry up to `SCM_MAX_FD` fds, so the queue may overshoot the limit by that much but
  /// never grows while full.
  pub fn is_full(&self) -> bool {
    self.slots.len() >= self.limit
  }

  /// Appends what one read brought; `truncated` adds a marker after the fds that did
  /// arrive, where the lost ones would have been.
  pub fn receive(&mut self, fds: Vec<OwnedFd>, truncated: bool) {
    self.slots.extend(fds.into_iter().map(Slot::Fd));
    if truncated {
      self.slots.push_back(Slot::Lost);
    }
  }

  /// The oldest received fd, now owned by the caller; `None` when empty.
  pub fn dequeue(&mut self) -> Result<Option<OwnedFd>, Truncated> {
    match self.slots.pop_front() {
      None => Ok(None),
      Some(Slot::Fd(fd)) => Ok(Some(fd)),
      Some(Slot::Lost) => Err(Truncated),
    }
  }

  /// Closes every fd not yet dequeued.
  pub fn clear(&mut self) {
    self.slots.clear();
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::fs::File;

  fn fd() -> OwnedFd {
    File::open("/dev/null").expect("open /dev/null").into()
  }

  /// A pipe's write end to queue, and its read end, which sees end-of-file once every
  /// copy of the write end is closed: a check that cannot be fooled by fd-number reuse.
  fn watched() -> (OwnedFd, File) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    (writer, File::from(reader))
  }

  fn closed(reader: &mut File) -> bool {
    use std::io::Read;
    let mut byte = [0u8; 1];
    reader.read(&mut byte).expect("read") == 0
  }

  #[test]
  fn outbound_holds_at_most_scm_max_fd_and_hands_back_the_extra() {
    let mut q = OutboundQueue::default();
    for _ in 0..SCM_MAX_FD {
      q.enqueue(fd()).expect("room");
    }
    assert!(q.is_full());
    let extra = fd();
    let raw = extra.as_raw_fd();
    let (err, back) = q.enqueue(extra).expect_err("full");
    assert_eq!(err, QueueFull);
    assert_eq!(back.as_raw_fd(), raw);
    assert_eq!(q.len(), SCM_MAX_FD);
  }

  #[test]
  fn outbound_take_empties_and_clear_closes() {
    let mut q = OutboundQueue::default();
    let (a, mut reader) = watched();
    let raw = a.as_raw_fd();
    q.enqueue(a).expect("room");
    assert_eq!(q.raw_fds(), vec![raw]);
    let taken = q.take();
    assert!(q.is_empty());
    assert_eq!(taken.len(), 1);
    q.enqueue(taken.into_iter().next().expect("one"))
      .expect("room");
    q.clear();
    assert!(closed(&mut reader));
  }

  #[test]
  fn inbound_is_fifo_and_truncation_reports_once() {
    let mut q = InboundQueue::default();
    let (a, b, c) = (fd(), fd(), fd());
    let (ra, rb, rc) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
    q.receive(vec![a, b], true);
    q.receive(vec![c], false);
    assert_eq!(q.dequeue().expect("a").map(|f| f.as_raw_fd()), Some(ra));
    assert_eq!(q.dequeue().expect("b").map(|f| f.as_raw_fd()), Some(rb));
    assert_eq!(q.dequeue().expect_err("lost"), Truncated);
    assert_eq!(q.dequeue().expect("c").map(|f| f.as_raw_fd()), Some(rc));
    assert!(q.dequeue().expect("empty").is_none());
  }

  #[test]
  fn inbound_limit_and_clear_closes_everything() {
    let mut q = InboundQueue::default();
    q.set_limit(2);
    let (a, mut reader) = watched();
    q.receive(vec![a], false);
    assert!(!q.is_full());
    q.receive(vec![fd()], false);
    assert!(q.is_full());
    q.clear();
    assert_eq!(q.len(), 0);
    assert!(closed(&mut reader));
  }
}
