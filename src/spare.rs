//! Read buffers of one size, kept for the next reads once JS lets go of the Buffer that
//! lent them out.
//!
//! A bulk transfer hands JS one 64 KiB external Buffer per chunk. Freed one by one as the
//! garbage collector released them, those allocations kept glibc trimming the top of its
//! heap and faulting the pages back in for the next chunk: a `FdSocket` receiver took 3×
//! the page faults of a `net.Socket` one, and 15–20% more CPU. A few buffers kept here are
//! reused instead. The store is shared by every thread (a Buffer is freed on its JS thread,
//! and read into on whichever thread runs the reads), and it is bounded.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use crate::scm_rights::{self, Received};
use crate::sync::lock;

/// The size of a kept buffer: the most one delivery or a default-sized read takes.
pub(crate) const SIZE: usize = 64 * 1024;

/// The largest Buffer made for JS by copying into V8's memory (by `settle::buffer_value`);
/// a larger one is handed over.
pub(crate) const COPIED_MAX: usize = 32 * 1024;

/// Buffers kept at most (2 MiB in all). Measured on the bytes benchmark (256 MiB in 64 KiB
/// writes, 5 runs): 16 kept left 0.80–0.92× `net.Socket`, 32 gave 0.99–1.01×.
const KEPT: usize = 32;

static KEPT_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Gives `buffer` room for `size` more bytes: a kept buffer when it is empty and `size` is
/// [`SIZE`], a fresh allocation otherwise.
pub(crate) fn reserve(buffer: &mut Vec<u8>, size: usize) {
  if buffer.capacity() == 0 && size == SIZE {
    if let Some(kept) = lock(&KEPT_BUFFERS).pop() {
      *buffer = kept;
      return;
    }
    buffer.reserve_exact(SIZE);
    return;
  }
  buffer.reserve(size);
}

/// Takes `buffer` back for later reads if it has the size kept and the store has room
/// (otherwise it is freed).
pub(crate) fn give_back(mut buffer: Vec<u8>) {
  if buffer.capacity() != SIZE {
    return;
  }
  buffer.clear();
  let mut kept = lock(&KEPT_BUFFERS);
  if kept.len() < KEPT {
    kept.push(buffer);
  }
}

/// Gives `buffer` back if nothing was read into it: a read that found no data after all
/// (readiness that was stale, an error, the end of the stream) must not keep a whole read
/// buffer while it waits for the next event.
pub(crate) fn release_if_empty(buffer: &mut Vec<u8>) {
  if buffer.is_empty() && buffer.capacity() > 0 {
    give_back(std::mem::take(buffer));
  }
}

/// The first `recvmsg` of a batch or a read, of at most `size` bytes, into `buffer` (a kept
/// buffer when `size` is [`SIZE`]). The buffer goes back at once when the call got nothing.
pub(crate) fn recv_first(
  sock: BorrowedFd<'_>,
  buffer: &mut Vec<u8>,
  size: usize,
) -> nix::Result<Received> {
  reserve(buffer, size);
  let received = scm_rights::recv_appending(sock, buffer, size, true);
  if received.is_err() {
    release_if_empty(buffer);
  }
  received
}

/// `bytes` in a buffer of their own: a kept one when they are more than what is copied
/// into V8's memory anyway, and fit in it.
pub(crate) fn copied(bytes: &[u8]) -> Vec<u8> {
  if bytes.len() <= COPIED_MAX || bytes.len() > SIZE {
    return bytes.to_vec();
  }
  let mut buffer = Vec::new();
  reserve(&mut buffer, SIZE);
  buffer.extend_from_slice(bytes);
  buffer
}

/// `data`'s bytes in an allocation of their own size, `data` itself given back: for a
/// small read that must not hold a whole read buffer while it waits for JS.
pub(crate) fn fitted(data: Vec<u8>) -> Vec<u8> {
  let fitted = data.clone();
  give_back(data);
  fitted
}

#[cfg(test)]
mod tests {
  use super::*;

  // One test: the store is shared, and tests run in parallel.
  #[test]
  fn buffers_given_back_serve_the_next_reads_of_their_size() {
    let mut first = Vec::new();
    reserve(&mut first, SIZE);
    assert_eq!(first.capacity(), SIZE);
    first.extend_from_slice(b"chunk");
    let address = first.as_ptr();
    give_back(first);
    let mut next = Vec::new();
    reserve(&mut next, SIZE);
    assert_eq!(
      next.as_ptr(),
      address,
      "the buffer given back was not reused"
    );
    assert!(next.is_empty(), "a kept buffer comes back empty");

    // A small read is copied out, and its buffer kept.
    next.extend_from_slice(b"abc");
    let small = fitted(next);
    assert_eq!(small, b"abc");
    assert!(small.capacity() < SIZE);
    let mut again = Vec::new();
    reserve(&mut again, SIZE);
    assert_eq!(
      again.as_ptr(),
      address,
      "the small read's buffer was not kept"
    );

    // A bulk read copied out of a scratch buffer lands in a kept buffer; a small one not.
    give_back(again);
    let bulk = copied(&[7; 40 * 1024]);
    assert_eq!(
      bulk.as_ptr(),
      address,
      "a bulk copy did not use the kept buffer"
    );
    assert!(copied(b"abc").capacity() < SIZE);
    let again = bulk;

    // Other sizes are neither served nor kept.
    let mut other = Vec::new();
    reserve(&mut other, 100);
    assert!(other.capacity() >= 100 && other.capacity() < SIZE);
    give_back(other);
    give_back(again);
    let mut last = Vec::new();
    reserve(&mut last, SIZE);
    assert_eq!(last.as_ptr(), address);

    // A read that got nothing gives its buffer back; one that got bytes keeps it.
    let mut empty = Vec::new();
    reserve(&mut empty, SIZE);
    let empty_address = empty.as_ptr();
    release_if_empty(&mut empty);
    assert_eq!(empty.capacity(), 0);
    let mut full = Vec::new();
    reserve(&mut full, SIZE);
    assert_eq!(full.as_ptr(), empty_address);
    full.push(1);
    release_if_empty(&mut full);
    assert_eq!(full.capacity(), SIZE);
    give_back(full);

    // The store is bounded.
    let many: Vec<Vec<u8>> = (0..KEPT + 4).map(|_| Vec::with_capacity(SIZE)).collect();
    for buffer in many {
      give_back(buffer);
    }
    assert_eq!(lock(&KEPT_BUFFERS).len(), KEPT);
  }
}
