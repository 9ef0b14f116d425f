//! The SCM_RIGHTS syscalls: `sendmsg` with fds attached, `recvmsg` that collects them,
//! and the close-on-exec duplicate that `enqueue` takes. Most of the crate's `unsafe` is
//! here (control buffers); elsewhere only taking or borrowing an fd number (`socket::adopt`,
//! `fd_info`) and the reactor registration (`nonblocking::register`) need it.

use std::cell::RefCell;
use std::io::IoSlice;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Most fds one message may carry (Linux's SCM_MAX_FD; more makes `sendmsg` fail with
/// `EINVAL`).
pub const SCM_MAX_FD: usize = 253;

/// What one `recvmsg` brought.
#[derive(Debug, Default)]
pub struct Received {
  /// Bytes written into the caller's buffer; 0 means end of stream.
  pub bytes: usize,
  /// Fds that arrived with those bytes, in the order the sender attached them. Each one
  /// is close-on-exec and owned here, so dropping the vector closes them.
  pub fds: Vec<OwnedFd>,
  /// The kernel set `MSG_CTRUNC`: some fds of this message were lost (no room in the
  /// control buffer, or this process is at its open-file limit).
  pub truncated: bool,
}

/// Sends `data` with `fds` attached as one SCM_RIGHTS message (none when `fds` is
/// empty). Returns the bytes written; when that is fewer than `data.len()` the fds still
/// went with the bytes that were written, so the rest must be sent without them.
pub fn send_with_fds(
  sock: BorrowedFd<'_>,
  data: &[u8],
  fds: &[RawFd],
  nonblocking: bool,
) -> nix::Result<usize> {
  send_vectored_with_fds(sock, &[IoSlice::new(data)], fds, nonblocking)
}

/// Most slices one `sendmsg` takes (Linux's `UIO_MAXIOV`, the BSDs' and macOS's
/// `IOV_MAX`; more makes it fail with `EMSGSIZE`).
pub const MAX_IOV: usize = 1024;

/// [`send_with_fds`] of the bytes of `iov` in order (at most [`MAX_IOV`] slices): one
/// `sendmsg` gathers them, the fds on the first byte.
pub fn send_vectored_with_fds(
  sock: BorrowedFd<'_>,
  iov: &[IoSlice<'_>],
  fds: &[RawFd],
  nonblocking: bool,
) -> nix::Result<usize> {
  let rights = [ControlMessage::ScmRights(fds)];
  let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
  let mut flags = send_flags();
  if nonblocking {
    flags |= MsgFlags::MSG_DONTWAIT;
  }
  sendmsg::<()>(sock.as_raw_fd(), iov, cmsgs, flags, None)
}

/// [`send_vectored_with_fds`] of bytes `from..to` of `parts`, as far as one `sendmsg`
/// goes; `iov` is room for its slices, reused from call to call.
pub fn send_range<'a>(
  sock: BorrowedFd<'_>,
  parts: &mut Gather<'_, 'a>,
  (from, to): (usize, usize),
  fds: &[RawFd],
  iov: &mut Vec<IoSlice<'a>>,
) -> nix::Result<usize> {
  if let [only] = parts.parts {
    return send_vectored_with_fds(sock, &[IoSlice::new(&only[from..to])], fds, true);
  }
  parts.range(from, to, iov);
  send_vectored_with_fds(sock, iov, fds, true)
}

/// Buffers sent in order, one after the other, as if joined: ranges of their bytes are
/// gathered as slices of them. The ranges asked for must not go back (sends only go
/// forward), so each one starts from where the last one did instead of from the first
/// Buffer: a batch of many Buffers costs time in proportion to their number.
pub struct Gather<'p, 'a> {
  parts: &'p [&'a [u8]],
  /// The first Buffer the last range touched, and where its bytes start.
  index: usize,
  start: usize,
}

impl<'p, 'a> Gather<'p, 'a> {
  pub fn new(parts: &'p [&'a [u8]]) -> Self {
    Gather {
      parts,
      index: 0,
      start: 0,
    }
  }

  /// Bytes `from..to` as slices (at most [`MAX_IOV`]: a longer range is cut short, for a
  /// later send to go on), into `iov`. `from` is no less than the last range's.
  pub fn range(&mut self, from: usize, to: usize, iov: &mut Vec<IoSlice<'a>>) {
    iov.clear();
    self.append(from, to, iov);
  }

  /// [`Gather::range`] appended to what `iov` holds (at most [`MAX_IOV`] slices of this
  /// range).
  fn append(&mut self, from: usize, to: usize, iov: &mut Vec<IoSlice<'a>>) {
    debug_assert!(from >= self.start && from <= to, "ranges go forward");
    let mut slices = 0;
    while let Some(part) = self.parts.get(self.index) {
      if self.start + part.len() > from {
        break;
      }
      self.start += part.len();
      self.index += 1;
    }
    let mut start = self.start;
    for part in &self.parts[self.index.min(self.parts.len())..] {
      if start >= to {
        break;
      }
      let end = start + part.len();
      if !part.is_empty() {
        let lo = from.saturating_sub(start);
        let hi = part.len().min(to - start);
        iov.push(IoSlice::new(&part[lo..hi]));
        slices += 1;
        if slices == MAX_IOV {
          break;
        }
      }
      start = end;
    }
  }
}

/// The most messages one `sendmmsg` of [`send_many`] sends.
pub const SEND_MANY: usize = 64;

/// The longest message [`send_many`] takes. A Unix stream socket queues a message of up to
/// half its send buffer less 64 bytes as one buffer, which goes whole or not at all, and
/// no send buffer is smaller than 4,608 bytes (Linux's SOCK_MIN_SNDBUF), so a message of
/// this size can never be cut short.
pub const WHOLE_MAX: usize = 1024;

/// One message of a [`send_many`] run: bytes `from..to` of the parts, its fds on the first.
pub type Outgoing<'f> = (usize, usize, &'f [OwnedFd]);

/// Whether a message of `len` bytes with `fds` fds can be one of a [`send_many`] run.
pub fn fits_run(len: usize, fds: usize) -> bool {
  len > 0 && len <= WHOLE_MAX && fds <= SCM_MAX_FD
}

/// Set once `sendmmsg` / `recvmmsg` turned out to be refused in this process (`ENOSYS`
/// under an emulator, `EPERM` from a seccomp filter) or to cut a message short (a kernel
/// other than Linux's): from then on every message goes alone, as elsewhere.
static NO_SEND_MANY: AtomicBool = AtomicBool::new(false);
#[cfg(any(target_os = "linux", target_os = "android"))]
static NO_RECV_MANY: AtomicBool = AtomicBool::new(false);

/// Whether [`send_many`] sends runs here (Linux's `sendmmsg`, not refused so far).
pub fn sends_many() -> bool {
  cfg!(any(target_os = "linux", target_os = "android")) && !NO_SEND_MANY.load(Ordering::Relaxed)
}

/// Whether `e` says the call itself is not available, rather than something about the
/// socket.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn refused(e: Errno) -> bool {
  matches!(e, Errno::ENOSYS | Errno::EPERM)
}

/// Sends consecutive messages (at most [`SEND_MANY`], each one that [`fits_run`], ranges
/// going forward) in one `sendmmsg`. Returns how many went out, each whole (see
/// [`WHOLE_MAX`]): fewer than asked when the socket filled up or a send failed, which the
/// caller's next send then reports; 0 when `sendmmsg` is refused here (see
/// [`sends_many`]). An error means the first one did not go, or (`EIO`) that the kernel
/// cut one short and sent more after it, which no later send can mend. `ENOSYS` where
/// there is no `sendmmsg`.
pub fn send_many<'a>(
  sock: BorrowedFd<'_>,
  parts: &mut Gather<'_, 'a>,
  run: &[Outgoing<'_>],
  iov: &mut Vec<IoSlice<'a>>,
) -> nix::Result<usize> {
  #[cfg(any(target_os = "linux", target_os = "android"))]
  {
    send_many_linux(sock, parts, run, iov)
  }
  #[cfg(not(any(target_os = "linux", target_os = "android")))]
  {
    let _ = (sock, parts, run, iov);
    Err(Errno::ENOSYS)
  }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_many_linux<'a>(
  sock: BorrowedFd<'_>,
  parts: &mut Gather<'_, 'a>,
  run: &[Outgoing<'_>],
  iov: &mut Vec<IoSlice<'a>>,
) -> nix::Result<usize> {
  let run = &run[..run.len().min(SEND_MANY)];
  iov.clear();
  // Where each message's slices start in `iov`, and its control message in `control`.
  let mut slices = [0; SEND_MANY + 1];
  let mut controls = [0; SEND_MANY + 1];
  for (i, &(from, to, fds)) in run.iter().enumerate() {
    debug_assert!(fits_run(to - from, fds.len()));
    // At most WHOLE_MAX (= MAX_IOV) bytes: the slices cover the whole range.
    parts.append(from, to, iov);
    slices[i + 1] = iov.len();
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE((fds.len() * mem::size_of::<RawFd>()) as u32) };
    controls[i + 1] = controls[i] + if fds.is_empty() { 0 } else { space as usize };
  }
  let mut control = vec![0u64; controls[run.len()].div_ceil(mem::size_of::<u64>())];
  let base = control.as_mut_ptr().cast::<u8>();
  // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid value.
  let mut headers: [libc::mmsghdr; SEND_MANY] = unsafe { mem::zeroed() };
  for (i, (header, &(_, _, fds))) in headers.iter_mut().zip(run).enumerate() {
    let msg = &mut header.msg_hdr;
    // IoSlice has iovec's layout (std guarantees it on Unix); sendmsg only reads them.
    msg.msg_iov = iov[slices[i]..slices[i + 1]].as_ptr().cast_mut().cast();
    msg.msg_iovlen = (slices[i + 1] - slices[i]) as _;
    if fds.is_empty() {
      continue;
    }
    // SAFETY: `controls[i]..controls[i + 1]` lies inside `control`, which is u64-aligned,
    // and every CMSG_SPACE is a multiple of the header's alignment.
    msg.msg_control = unsafe { base.add(controls[i]) }.cast();
    msg.msg_controllen = (controls[i + 1] - controls[i]) as _;
    // SAFETY: the control buffer just set has room for one header and `fds.len()` fds,
    // and CMSG_FIRSTHDR returns its start.
    unsafe {
      let cmsg = libc::CMSG_FIRSTHDR(msg);
      (*cmsg).cmsg_level = libc::SOL_SOCKET;
      (*cmsg).cmsg_type = libc::SCM_RIGHTS;
      (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * mem::size_of::<RawFd>()) as u32) as _;
      let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
      for (j, fd) in fds.iter().enumerate() {
        ptr::write_unaligned(data.add(j), fd.as_raw_fd());
      }
    }
  }
  let flags = send_flags() | MsgFlags::MSG_DONTWAIT;
  // SAFETY: each header points at its slices of `iov` (borrowing `parts`) and its own
  // stretch of `control`, all alive for the call; the kernel only reads them.
  let sent = match Errno::result(unsafe {
    libc::sendmmsg(
      sock.as_raw_fd(),
      headers.as_mut_ptr(),
      run.len() as _,
      flags.bits() as _,
    )
  }) {
    Ok(n) => n as usize,
    Err(e) if refused(e) => {
      NO_SEND_MANY.store(true, Ordering::Relaxed);
      return Ok(0);
    }
    Err(e) => return Err(e),
  };
  // Linux queues each of these messages whole (see WHOLE_MAX); a kernel that cut one short
  // and went on has broken the stream.
  let whole = headers
    .iter()
    .zip(run)
    .take(sent)
    .take_while(|(header, &(from, to, _))| header.msg_len as usize == to - from)
    .count();
  if whole < sent {
    NO_SEND_MANY.store(true, Ordering::Relaxed);
    return Err(Errno::EIO);
  }
  Ok(sent)
}

/// A send error that passes by itself, with the socket still usable: the kernel's bound
/// on fds in flight (`ETOOMANYREFS`, until the peer takes some) or a memory shortage. The
/// fds of such a send must be kept for the retry, never closed.
pub fn is_transient(errno: Errno) -> bool {
  matches!(errno, Errno::ETOOMANYREFS | Errno::ENOBUFS | Errno::ENOMEM)
}

/// Sends with no control message. Node ignores SIGPIPE, and where the OS has
/// `MSG_NOSIGNAL` a dead peer is reported as `EPIPE` in any host process.
fn send_flags() -> MsgFlags {
  #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
  {
    MsgFlags::MSG_NOSIGNAL
  }
  #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
  {
    MsgFlags::empty()
  }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const RECV_CLOEXEC: libc::c_int = libc::MSG_CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const RECV_CLOEXEC: libc::c_int = 0;

/// Room for the worst layout a peer can send: every one of `SCM_MAX_FD` fds in its own
/// SCM_RIGHTS header, plus one credentials message. Kept in `u64`s for cmsg alignment.
fn control_words() -> usize {
  // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
  let per_fd = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) } as usize;
  // SAFETY: as above.
  let creds = unsafe { libc::CMSG_SPACE(64) } as usize;
  (SCM_MAX_FD * per_fd + creds).div_ceil(mem::size_of::<u64>())
}

thread_local! {
  // One control buffer per thread serves every socket read on that thread: the JS thread
  // for the blocking classes, each tokio worker for the async ones.
  static CONTROL: RefCell<Vec<u64>> = RefCell::new(vec![0; control_words()]);
}

/// Reads once into `buf` with a control buffer that has room for `SCM_MAX_FD` fds,
/// collecting every SCM_RIGHTS fd (other control messages are ignored, and closed if they
/// carry fds). The control buffer is walked up to the `msg_controllen` the kernel
/// reported even when `MSG_CTRUNC` is set, so fds installed before a truncation are kept
/// rather than leaked.
pub fn recv_with_fds(
  sock: BorrowedFd<'_>,
  buf: &mut [u8],
  nonblocking: bool,
) -> nix::Result<Received> {
  // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
  unsafe { recv_raw(sock, buf.as_mut_ptr(), buf.len(), nonblocking) }
}

/// Like [`recv_with_fds`], reading into the spare capacity of `buf` (at most `max` bytes)
/// and appending what arrived, so a fresh buffer need not be zeroed first.
pub fn recv_appending(
  sock: BorrowedFd<'_>,
  buf: &mut Vec<u8>,
  max: usize,
  nonblocking: bool,
) -> nix::Result<Received> {
  let spare = buf.spare_capacity_mut();
  let len = spare.len().min(max);
  // SAFETY: the spare capacity is valid for writes of `len` bytes; the kernel only writes
  // into it, and reads nothing from it.
  let received = unsafe { recv_raw(sock, spare.as_mut_ptr().cast(), len, nonblocking) }?;
  // SAFETY: recvmsg initialised exactly `received.bytes <= len` bytes past the old length.
  unsafe { buf.set_len(buf.len() + received.bytes) };
  Ok(received)
}

/// Reads a run of messages at most one `recvmmsg` takes: the most reads one call makes.
pub const RECV_MANY: usize = 16;

#[cfg(any(target_os = "linux", target_os = "android"))]
thread_local! {
  // The control buffers of one `recvmmsg` (room for SCM_MAX_FD fds each), allocated on
  // the first call a thread makes (the threads that run stream readers).
  static CONTROLS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Like [`recv_appending`] (at most `max` bytes appended to `buf`), as up to `reads`
/// reads ([`RECV_MANY`] at most) made by one `recvmmsg` (Linux), each with room for
/// `SCM_MAX_FD` fds: a stream of small messages that each carry fds (every `recvmsg`
/// stops after one) costs one syscall per run instead of one per message. What each read
/// brought is pushed onto `into`, in order; a read of 0 bytes is the end of the stream,
/// and nothing comes after it. Elsewhere, or for one read, it is one `recvmsg`.
///
/// Each read gets its own stretch of the room, and the bytes are then moved together, so
/// `buf` holds the stream's bytes in order whichever reads came short.
///
/// `recvmmsg` reports an error the socket holds (a reset by the peer) before it reads
/// anything, where `recvmsg` first reads what is still queued and reports it once nothing
/// is left. Then one `recvmsg` reads on, and the error comes back as `Ok(Some(_))`, for
/// the caller to report when the socket has nothing more (no error is ever lost or
/// reported early).
pub fn recv_many_appending(
  sock: BorrowedFd<'_>,
  buf: &mut Vec<u8>,
  max: usize,
  reads: usize,
  into: &mut Vec<Received>,
) -> nix::Result<Option<Errno>> {
  let len = buf.spare_capacity_mut().len().min(max);
  let reads = reads.min(RECV_MANY).min(len);
  #[cfg(any(target_os = "linux", target_os = "android"))]
  if reads > 1 && !NO_RECV_MANY.load(Ordering::Relaxed) {
    match recv_many_linux(sock, buf, len, reads, into) {
      Ok(()) => return Ok(None),
      // Refused here: this read and every later one go alone.
      Err(e) if refused(e) => NO_RECV_MANY.store(true, Ordering::Relaxed),
      Err(e) if e == Errno::EAGAIN || e == Errno::EINTR => return Err(e),
      Err(e) => {
        return match recv_appending(sock, buf, len, true) {
          Ok(received) if received.bytes > 0 => {
            into.push(received);
            Ok(Some(e))
          }
          _ => Err(e),
        }
      }
    }
  }
  #[cfg(not(any(target_os = "linux", target_os = "android")))]
  let _ = reads;
  into.push(recv_appending(sock, buf, len, true)?);
  Ok(None)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn recv_many_linux(
  sock: BorrowedFd<'_>,
  buf: &mut Vec<u8>,
  len: usize,
  reads: usize,
  into: &mut Vec<Received>,
) -> nix::Result<()> {
  let words = control_words();
  CONTROLS.with_borrow_mut(|controls| {
    if controls.len() < words * RECV_MANY {
      controls.resize(words * RECV_MANY, 0);
    }
    let control = controls.as_mut_ptr();
    let stretch = len / reads;
    let base = buf.len();
    let start = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value.
    let mut iovs: [libc::iovec; RECV_MANY] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; RECV_MANY] = unsafe { mem::zeroed() };
    for (i, (iov, header)) in iovs
      .iter_mut()
      .zip(headers.iter_mut())
      .enumerate()
      .take(reads)
    {
      // The last read takes what the division left over.
      let size = if i + 1 == reads {
        len - stretch * i
      } else {
        stretch
      };
      // SAFETY: `stretch * i + size <= len`, inside the spare capacity.
      iov.iov_base = unsafe { start.add(stretch * i) }.cast();
      iov.iov_len = size;
      header.msg_hdr.msg_iov = iov;
      header.msg_hdr.msg_iovlen = 1;
      // SAFETY: `words * (i + 1) <= controls.len()` (RECV_MANY reads at most).
      header.msg_hdr.msg_control = unsafe { control.add(words * i) }.cast();
      header.msg_hdr.msg_controllen = (words * mem::size_of::<u64>()) as _;
    }
    // SAFETY: each header points at its own iovec (a disjoint stretch of `buf`'s spare
    // capacity) and its own `words` of `controls`, all alive for the call.
    let got = Errno::result(unsafe {
      libc::recvmmsg(
        sock.as_raw_fd(),
        headers.as_mut_ptr(),
        reads as _,
        (RECV_CLOEXEC | libc::MSG_DONTWAIT) as _,
        ptr::null_mut(),
      )
    })? as usize;
    let mut end = base;
    let mut ended = false;
    for (i, header) in headers.iter().enumerate().take(got) {
      // SAFETY: the kernel filled this header just now; the walk stays within its
      // msg_controllen. Taken even after the end (none can come), so nothing can leak.
      let fds = unsafe { collect_rights(&header.msg_hdr) };
      if ended {
        continue;
      }
      let bytes = header.msg_len as usize;
      if stretch * i != end - base {
        // SAFETY: the kernel wrote `bytes` bytes at the start of stretch `i`, at or after
        // `end` (every earlier read took no more than its stretch), and moving them down
        // reaches no later stretch; `copy` allows the overlap.
        unsafe { ptr::copy(start.add(stretch * i), start.add(end - base), bytes) };
      }
      end += bytes;
      ended = bytes == 0;
      into.push(Received {
        bytes,
        fds,
        truncated: header.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0,
      });
    }
    // SAFETY: bytes `base..end` were written by the kernel or moved there from what it
    // wrote, in stream order.
    unsafe { buf.set_len(end) };
    Ok(())
  })
}

/// One `recvmsg` into `len` bytes at `data`, with the thread's control buffer.
///
/// # Safety
/// `data` must be valid for writes of `len` bytes for the duration of the call.
unsafe fn recv_raw(
  sock: BorrowedFd<'_>,
  data: *mut u8,
  len: usize,
  nonblocking: bool,
) -> nix::Result<Received> {
  CONTROL.with_borrow_mut(|control| {
    let mut iov = libc::iovec {
      iov_base: data.cast(),
      iov_len: len,
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * mem::size_of::<u64>()) as _;
    let mut flags = RECV_CLOEXEC;
    if nonblocking {
      flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `msg` points at `iov` (which spans the caller's `len` writable bytes) and at
    // `control`, both alive for the duration of the call, with their true lengths.
    let n = Errno::result(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) })?;
    // SAFETY: the kernel filled `msg` just now; the walk stays within msg_controllen.
    let fds = unsafe { collect_rights(&msg) };
    if RECV_CLOEXEC == 0 {
      for fd in &fds {
        crate::socket::set_cloexec(fd.as_raw_fd())?;
      }
    }
    Ok(Received {
      bytes: n as usize,
      fds,
      truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
  })
}

/// One message of a seqpacket or datagram socket, as `recvmsg` returned it.
#[derive(Debug)]
pub struct Datagram {
  /// Bytes of the message written into the caller's buffer.
  pub bytes: usize,
  /// Its fds, close-on-exec and owned here.
  pub fds: Vec<OwnedFd>,
  /// `MSG_CTRUNC`: some of its fds were lost (those that arrived are in `fds`).
  pub fds_cut: bool,
  /// `MSG_TRUNC`: the message was longer than the buffer, and the rest is lost.
  pub bytes_cut: bool,
  /// The sender's address (datagram sockets): a path or `\0name`, byte for byte (not
  /// necessarily UTF-8), or `None` when unnamed.
  pub from: Option<Vec<u8>>,
}

/// Receives one whole message into `buf` with its fds and the sender's address.
pub fn recv_message(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<Datagram> {
  CONTROL.with_borrow_mut(|control| {
    let mut iov = libc::iovec {
      iov_base: buf.as_mut_ptr().cast(),
      iov_len: buf.len(),
    };
    // SAFETY: both are plain C structs for which all-zero is a valid value.
    let mut name: libc::sockaddr_un = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * mem::size_of::<u64>()) as _;
    // SAFETY: `msg` points at `name`, `iov` (spanning `buf`) and `control`, all alive for
    // the duration of the call, with their true lengths.
    let n = Errno::result(unsafe {
      libc::recvmsg(
        sock.as_raw_fd(),
        &mut msg,
        RECV_CLOEXEC | libc::MSG_DONTWAIT,
      )
    })?;
    // SAFETY: the kernel filled `msg` just now; the walk stays within msg_controllen.
    let fds = unsafe { collect_rights(&msg) };
    if RECV_CLOEXEC == 0 {
      for fd in &fds {
        crate::socket::set_cloexec(fd.as_raw_fd())?;
      }
    }
    // SAFETY: `name` holds the `msg_namelen` bytes of address the kernel wrote.
    let from = unsafe {
      <nix::sys::socket::UnixAddr as nix::sys::socket::SockaddrLike>::from_raw(
        (&name as *const libc::sockaddr_un).cast(),
        Some(msg.msg_namelen),
      )
    }
    .and_then(|addr| crate::socket::address_bytes(&addr));
    Ok(Datagram {
      bytes: (n as usize).min(buf.len()),
      fds,
      fds_cut: msg.msg_flags & libc::MSG_CTRUNC != 0,
      bytes_cut: msg.msg_flags & libc::MSG_TRUNC != 0,
      from,
    })
  })
}

/// Sends `data` with `fds` as one message (to `to` on an unconnected datagram socket),
/// never waiting.
pub fn send_message(
  sock: BorrowedFd<'_>,
  data: &[u8],
  fds: &[RawFd],
  to: Option<&nix::sys::socket::UnixAddr>,
) -> nix::Result<usize> {
  let iov = [IoSlice::new(data)];
  let rights = [ControlMessage::ScmRights(fds)];
  let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
  sendmsg(
    sock.as_raw_fd(),
    &iov,
    cmsgs,
    send_flags() | MsgFlags::MSG_DONTWAIT,
    to,
  )
}

/// `SCM_PIDFD` (Linux 6.5+, include/linux/socket.h; not in the libc crate): a pidfd of the
/// sender, installed in this process for every message received on a socket that someone
/// set `SO_PASSPIDFD` on (whoever handed the socket over, say, or a listener's owner).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SCM_PIDFD: libc::c_int = 4;

/// Takes ownership of every fd in the SCM_RIGHTS messages of `msg`, and closes the ones
/// other control messages installed (`SCM_PIDFD`): nothing asked for them, and each would
/// otherwise stay open for good.
///
/// # Safety
/// `msg` must be the header a successful `recvmsg` just filled, its control pointer still
/// valid for `msg_controllen` bytes.
unsafe fn collect_rights(msg: &libc::msghdr) -> Vec<OwnedFd> {
  let mut fds = Vec::new();
  let control_start = msg.msg_control as usize;
  // msg_controllen is usize on Linux but u32 elsewhere.
  #[allow(clippy::unnecessary_cast)]
  let control_end = control_start + msg.msg_controllen as usize;
  // SAFETY: CMSG_FIRSTHDR only reads msg_control/msg_controllen of a valid msghdr.
  let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
  while !cmsg.is_null() {
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR only return headers that lie inside the buffer.
    let header = unsafe { ptr::read_unaligned(cmsg) };
    // SAFETY: CMSG_DATA is pointer arithmetic on a header inside the buffer.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    let data_start = data as usize;
    // The kernel clips cmsg_len to what it wrote; clip again so a bad value can never send
    // the walk past the buffer.
    let data_end = (cmsg as usize + header.cmsg_len as usize).min(control_end);
    let count = data_end.saturating_sub(data_start) / mem::size_of::<RawFd>();
    let installed = |i: usize| {
      // SAFETY: `i < count` keeps the read inside this message's data, and the kernel
      // installed each of these fds for us alone.
      let raw = unsafe { ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
      unsafe { OwnedFd::from_raw_fd(raw) }
    };
    if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
      fds.extend((0..count).map(installed));
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == SCM_PIDFD {
      // Closed at once (dropped).
      (0..count).for_each(|i| drop(installed(i)));
    }
    // SAFETY: `cmsg` is a header inside the buffer described by `msg`.
    cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
  }
  fds
}

/// A close-on-exec duplicate of `fd`, owned by the caller. `EBADF` when `fd` is not open.
pub fn dup_cloexec(fd: RawFd) -> nix::Result<OwnedFd> {
  if fd < 0 {
    return Err(Errno::EBADF);
  }
  // SAFETY: the borrow lasts for this one fcntl call only; if `fd` is not open the kernel
  // answers EBADF, and `fd` is not -1, the one value BorrowedFd cannot hold.
  let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
  let duplicate = fcntl(borrowed, FcntlArg::F_DUPFD_CLOEXEC(0))?;
  // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
  Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// Closes `fds`. The duplicates `enqueue` makes usually hold neighbouring numbers (the
/// kernel hands out the lowest free ones), and one `close_range` closes each run of
/// neighbours instead of one `close` per fd.
pub fn close_all(fds: Vec<OwnedFd>) {
  #[cfg(any(target_os = "linux", target_os = "android"))]
  let fds = close_runs(fds);
  drop(fds);
}

/// Closes the runs of neighbouring numbers in `fds`, one `close_range` each; returns the
/// fds left (the lone ones).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn close_runs(mut fds: Vec<OwnedFd>) -> Vec<OwnedFd> {
  fds.sort_unstable_by_key(AsRawFd::as_raw_fd);
  let mut start = 0;
  while start < fds.len() {
    // Each OwnedFd owns a distinct number, so sorted neighbours differ by one.
    let mut end = start + 1;
    while end < fds.len() && fds[end].as_raw_fd() - fds[end - 1].as_raw_fd() == 1 {
      end += 1;
    }
    if end - start > 1 && close_range(fds[start].as_raw_fd(), fds[end - 1].as_raw_fd()) {
      // Closed: given up without a second close.
      fds.drain(start..end).for_each(|fd| {
        let _ = std::os::fd::IntoRawFd::into_raw_fd(fd);
      });
    } else {
      start = end;
    }
  }
  fds
}

/// Closes `low..=high`, all of them owned by the caller, who must give them up without
/// closing them when this returns true. False: nothing was closed (`ENOSYS` on a kernel
/// older than 5.9, `EPERM` from a seccomp filter); then it is not tried again.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn close_range(low: RawFd, high: RawFd) -> bool {
  use std::sync::atomic::{AtomicBool, Ordering};
  static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
  if UNAVAILABLE.load(Ordering::Relaxed) {
    return false;
  }
  // SAFETY: close_range touches only `low..=high`, which the caller owns and gives up on
  // success. Called through syscall(2) so that the binary needs no glibc 2.34 symbol.
  let closed = unsafe {
    libc::syscall(
      libc::SYS_close_range,
      low as libc::c_uint,
      high as libc::c_uint,
      0,
    )
  };
  if closed != 0 && refused(Errno::last()) {
    UNAVAILABLE.store(true, Ordering::Relaxed);
  }
  closed == 0
}

#[cfg(test)]
mod tests {
  use super::*;
  use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
  use std::os::fd::AsFd;

  #[test]
  fn gather_takes_ranges_across_parts_going_forward_and_stops_at_max_iov() {
    let parts: [&[u8]; 3] = [b"abc", b"", b"defgh"];
    let mut iov = Vec::new();
    let joined = |iov: &[IoSlice<'_>]| {
      iov
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect::<Vec<u8>>()
    };
    let mut gather = Gather::new(&parts);
    gather.range(0, 8, &mut iov);
    assert_eq!(joined(&iov), b"abcdefgh");
    gather.range(2, 5, &mut iov);
    assert_eq!(joined(&iov), b"cde");
    assert_eq!(iov.len(), 2);
    gather.range(4, 6, &mut iov);
    assert_eq!(joined(&iov), b"ef");
    assert_eq!(gather.index, 2, "went forward to the Buffer of byte 4");
    gather.range(8, 8, &mut iov);
    assert!(iov.is_empty());
    let many = vec![&b"x"[..]; MAX_IOV + 10];
    let mut iov = Vec::new();
    let mut gather = Gather::new(&many);
    gather.range(3, MAX_IOV + 10, &mut iov);
    assert_eq!(iov.len(), MAX_IOV);
    gather.range(MAX_IOV + 3, MAX_IOV + 10, &mut iov);
    assert_eq!(iov.len(), 7);
  }

  #[test]
  fn a_vectored_send_of_several_parts_arrives_in_order_with_its_fds_on_the_first_byte() {
    let (a, b) = pair();
    let (p, q) = pair();
    let parts: [&[u8]; 3] = [b"he", b"ll", b"o!"];
    let mut iov = Vec::new();
    let mut gather = Gather::new(&parts);
    let n = send_range(a.as_fd(), &mut gather, (1, 6), &[p.as_raw_fd()], &mut iov).expect("send");
    assert_eq!(n, 5);
    let mut buf = [0u8; 16];
    let got = recv_with_fds(b.as_fd(), &mut buf, false).expect("recv");
    assert_eq!(&buf[..got.bytes], b"ello!");
    assert_eq!(got.fds.len(), 1);
    drop(q);
  }

  fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
      AddressFamily::Unix,
      SockType::Stream,
      None,
      SockFlag::empty(),
    )
    .expect("socketpair")
  }

  fn is_cloexec(fd: RawFd) -> bool {
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed, FcntlArg::F_GETFD).expect("F_GETFD");
    flags & libc::FD_CLOEXEC != 0
  }

  #[test]
  fn fds_ride_with_the_first_byte_and_arrive_close_on_exec() {
    let (a, b) = pair();
    let (p, q) = pair();
    let sent =
      send_with_fds(a.as_fd(), b"xy", &[p.as_raw_fd(), q.as_raw_fd()], false).expect("send");
    assert_eq!(sent, 2);
    let mut buf = [0u8; 8];
    let got = recv_with_fds(b.as_fd(), &mut buf, false).expect("recv");
    assert_eq!(&buf[..got.bytes], b"xy");
    assert_eq!(got.fds.len(), 2);
    assert!(!got.truncated);
    assert!(got.fds.iter().all(|fd| is_cloexec(fd.as_raw_fd())));
  }

  /// The inode of `fd`, to tell the fds of a test apart.
  #[cfg(any(target_os = "linux", target_os = "android"))]
  fn inode(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).expect("fstat").st_ino
  }

  #[cfg(any(target_os = "linux", target_os = "android"))]
  #[test]
  fn recv_many_takes_a_run_of_messages_in_order_with_their_fds_and_stops_at_the_end() {
    let (a, b) = pair();
    let (p, q) = pair();
    let send = |data: &[u8], fds: &[RawFd]| {
      assert_eq!(
        send_with_fds(a.as_fd(), data, fds, false).expect("send"),
        data.len()
      );
    };
    send(b"a", &[p.as_raw_fd()]);
    send(b"bc", &[]);
    send(b"d", &[q.as_raw_fd(), p.as_raw_fd()]);
    send(b"efg", &[q.as_raw_fd()]);
    nix::sys::socket::shutdown(a.as_raw_fd(), nix::sys::socket::Shutdown::Write).expect("shutdown");
    let mut buf = Vec::with_capacity(64);
    buf.push(b'>');
    let mut reads = Vec::new();
    recv_many_appending(b.as_fd(), &mut buf, 64, RECV_MANY, &mut reads).expect("recvmmsg");
    assert_eq!(
      buf, b">abcdefg",
      "every byte once, in order, after what the buffer held"
    );
    let fds: Vec<u64> = reads.iter().flat_map(|r| r.fds.iter().map(inode)).collect();
    assert_eq!(fds, [inode(&p), inode(&q), inode(&p), inode(&q)]);
    // Each read stops after the message whose fds it brought: a, then "bc" + d, then efg.
    let sizes: Vec<usize> = reads.iter().map(|r| r.bytes).collect();
    assert_eq!(sizes, [1, 3, 3, 0], "the end comes last, once");
    assert!(reads
      .iter()
      .flat_map(|r| &r.fds)
      .all(|fd| is_cloexec(fd.as_raw_fd())));
  }

  #[cfg(any(target_os = "linux", target_os = "android"))]
  #[test]
  fn recv_many_after_a_reset_reads_what_is_queued_and_hands_back_the_reset() {
    let (a, b) = pair();
    let (p, _q) = pair();
    for data in [b"x", b"y"] {
      assert_eq!(
        send_with_fds(a.as_fd(), data, &[p.as_raw_fd()], false).expect("send"),
        1
      );
    }
    // Closed with a byte of ours unread: b's socket holds ECONNRESET, and "x", "y" still.
    assert_eq!(send_with_fds(b.as_fd(), b"!", &[], false).expect("send"), 1);
    drop(a);
    let mut buf = Vec::with_capacity(64);
    let mut reads = Vec::new();
    let held = recv_many_appending(b.as_fd(), &mut buf, 64, RECV_MANY, &mut reads).expect("recv");
    assert_eq!(held, Some(Errno::ECONNRESET), "held back, not lost");
    assert_eq!(
      (&buf[..], reads.len(), reads[0].fds.len()),
      (&b"x"[..], 1, 1)
    );
    reads.clear();
    let later = recv_many_appending(b.as_fd(), &mut buf, 64, RECV_MANY, &mut reads).expect("recv");
    assert_eq!(later, None);
    let sizes: Vec<usize> = reads.iter().map(|r| r.bytes).collect();
    assert_eq!(
      (&buf[..], &sizes[..]),
      (&b"xy"[..], &[1, 0][..]),
      "then the end"
    );
  }

  #[cfg(any(target_os = "linux", target_os = "android"))]
  #[test]
  fn send_many_sends_whole_messages_until_the_socket_is_full_then_eagain() {
    use nix::sys::socket::{setsockopt, sockopt};
    let (a, b) = pair();
    setsockopt(&a, sockopt::SndBuf, &0).expect("SO_SNDBUF");
    let (p, _q) = pair();
    let data = vec![7u8; WHOLE_MAX * SEND_MANY];
    let parts = [&data[..]];
    let fds = [p.try_clone().expect("dup")];
    let run: Vec<Outgoing<'_>> = (0..SEND_MANY)
      .map(|i| (i * WHOLE_MAX, (i + 1) * WHOLE_MAX, &fds[..]))
      .collect();
    let mut iov = Vec::new();
    let went = send_many(a.as_fd(), &mut Gather::new(&parts), &run, &mut iov).expect("sendmmsg");
    assert!(
      went > 0 && went < SEND_MANY,
      "the smallest buffer takes some: {went}"
    );
    let again = send_many(a.as_fd(), &mut Gather::new(&parts), &run[went..], &mut iov);
    assert_eq!(again, Err(Errno::EAGAIN), "full: nothing more goes");
    drop(a);
    let (mut bytes, mut arrived) = (0, 0);
    let mut buf = vec![0u8; WHOLE_MAX * SEND_MANY];
    loop {
      let got = recv_with_fds(b.as_fd(), &mut buf, false).expect("recv");
      if got.bytes == 0 {
        break;
      }
      bytes += got.bytes;
      arrived += got.fds.len();
    }
    assert_eq!(
      bytes,
      went * WHOLE_MAX,
      "the messages that went, each whole"
    );
    assert_eq!(arrived, went, "one fd with each");
  }

  #[test]
  fn a_full_message_of_scm_max_fd_arrives_whole() {
    let (a, b) = pair();
    let (p, _q) = pair();
    let raw = vec![p.as_raw_fd(); SCM_MAX_FD];
    send_with_fds(a.as_fd(), b"!", &raw, false).expect("send");
    let mut buf = [0u8; 1];
    let got = recv_with_fds(b.as_fd(), &mut buf, false).expect("recv");
    assert_eq!(got.fds.len(), SCM_MAX_FD);
    assert!(!got.truncated);
  }

  #[test]
  fn one_fd_more_than_scm_max_fd_is_refused_by_the_kernel() {
    let (a, _b) = pair();
    let raw = vec![a.as_raw_fd(); SCM_MAX_FD + 1];
    assert_eq!(
      send_with_fds(a.as_fd(), b"!", &raw, false),
      Err(Errno::EINVAL)
    );
  }

  /// A pipe whose read end tells whether any write end is still open anywhere: an empty
  /// pipe reads EOF once every writer is closed and EAGAIN while one is open. Unlike
  /// probing fd numbers, this cannot be fooled by a test on another thread reusing them.
  fn writers_probe() -> (OwnedFd, OwnedFd) {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    fcntl(&read, FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
    (read, write)
  }

  fn any_writer_open(read: &OwnedFd) -> bool {
    match nix::unistd::read(read, &mut [0u8; 1]) {
      Ok(0) => false,
      Err(Errno::EAGAIN) => true,
      other => panic!("unexpected read of an empty pipe: {other:?}"),
    }
  }

  #[test]
  fn close_all_closes_neighbouring_and_scattered_fds_alike() {
    // Neighbours: 16 consecutive duplicates of one pipe's write end.
    let (neighbours_read, neighbours_write) = writers_probe();
    let neighbours: Vec<OwnedFd> = (0..16)
      .map(|_| dup_cloexec(neighbours_write.as_raw_fd()).unwrap())
      .collect();
    drop(neighbours_write);
    // Scattered: duplicates of one pipe's write end, each followed by one of another pipe
    // that stays open, so the ones closed have gaps between them.
    let (scattered_read, scattered_write) = writers_probe();
    let (kept_read, kept_write) = writers_probe();
    let mut scattered = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..3 {
      scattered.push(dup_cloexec(scattered_write.as_raw_fd()).unwrap());
      kept.push(dup_cloexec(kept_write.as_raw_fd()).unwrap());
    }
    // Runs: two runs of neighbours with a kept fd between them, handed over newest first.
    let (runs_read, runs_write) = writers_probe();
    let mut runs = Vec::new();
    for run in 0..2 {
      for _ in 0..4 {
        runs.push(dup_cloexec(runs_write.as_raw_fd()).unwrap());
      }
      if run == 0 {
        kept.push(dup_cloexec(runs_write.as_raw_fd()).unwrap());
      }
    }
    runs.reverse();
    drop(runs_write);
    drop((scattered_write, kept_write));
    for (fds, read) in [(neighbours, &neighbours_read), (scattered, &scattered_read)] {
      assert!(any_writer_open(read));
      close_all(fds);
      assert!(!any_writer_open(read), "a write end is still open");
    }
    assert!(any_writer_open(&kept_read), "a kept fd was closed");
    // The runs' pipe keeps exactly one writer: the kept fd between the two runs.
    close_all(runs);
    let between = kept.pop().unwrap();
    assert!(
      any_writer_open(&runs_read),
      "the fd between the runs was closed"
    );
    drop(between);
    assert!(!any_writer_open(&runs_read), "a write end is still open");
    drop(kept);
  }

  #[test]
  fn dup_of_an_fd_that_is_not_open_is_ebadf() {
    assert_eq!(dup_cloexec(-1).map(drop), Err(Errno::EBADF));
    // Not a number closed by this test: tests run in parallel threads and would reuse it.
    // No process here has an fd table this large.
    assert_eq!(dup_cloexec(i32::MAX).map(drop), Err(Errno::EBADF));
  }

  #[test]
  fn recv_appending_fills_spare_capacity_only() {
    let (a, b) = pair();
    send_with_fds(a.as_fd(), b"hello", &[], false).expect("send");
    let mut buf = Vec::with_capacity(16);
    buf.extend_from_slice(b">");
    let got = recv_appending(b.as_fd(), &mut buf, 3, false).expect("recv");
    assert_eq!(got.bytes, 3);
    assert_eq!(buf, b">hel");
    let got = recv_appending(b.as_fd(), &mut buf, 100, false).expect("recv");
    assert_eq!(got.bytes, 2);
    assert_eq!(buf, b">hello");
  }

  #[test]
  fn empty_nonblocking_read_is_eagain() {
    let (_a, b) = pair();
    let mut buf = [0u8; 4];
    assert_eq!(
      recv_with_fds(b.as_fd(), &mut buf, true).map(|r| r.bytes),
      Err(Errno::EAGAIN)
    );
  }
}
