//! `AsyncUnixListener`: a listening Unix socket with a Promise-returning `accept`, and
//! the push acceptor behind `FdServer`.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{Function, JavaScriptClassExt};
use napi::{Env, JsValue};
use napi_derive::napi;
use nix::errno::Errno;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::cancel::{self, CancelHandle, Canceller};
use crate::error::{self, errno_of, internal, rejection, Result};
use crate::nonblocking::acceptor::{Acceptor, Verdict};
use crate::nonblocking::core::{accept_now, closing, connection_pending, release, ListenerShared};
use crate::nonblocking::message::MessageSocket;
use crate::nonblocking::stream::{fail, AsyncUnixStream};
use crate::runtime::register_or_return;
use crate::settle::{self, settle_later, Home, RawValue, Settled};
use crate::socket::{self as unix, Adopt, Kind, SocketFile};
use crate::sync::lock;

/// A listening Unix socket driven by tokio.
#[napi(js_name = "NativeAsyncUnixListener")]
pub struct AsyncUnixListener {
  io: Mutex<Option<Arc<ListenerShared>>>,
  /// The socket file this listener created, removed on close unless told otherwise.
  file: Option<SocketFile>,
  path: String,
  unlink_on_close: AtomicBool,
  acceptor: Mutex<Option<Acceptor>>,
  /// Stream (connections are `NativeAsyncUnixStream`s) or seqpacket (`NativeMessageSocket`s).
  kind: Kind,
}

impl AsyncUnixListener {
  /// Takes ownership of `fd`, a listening Unix socket of `kind` (`ERR_INVALID_FD_TYPE`
  /// otherwise, and the fd is left alone), and makes it close-on-exec and non-blocking.
  fn adopt(fd: i32, kind: Kind) -> Result<Self> {
    let sock = unix::adopt(fd, Adopt::Listening(kind))?;
    if let Err(e) = unix::set_nonblocking(sock.as_fd()) {
      let _ = sock.into_raw_fd(); // still the caller's
      return Err(error::sys(e, "fcntl"));
    }
    let path = unix::local_path(sock.as_fd());
    Self::registered(sock, None, path, kind, true)
  }

  fn listening(fd: OwnedFd, file: Option<SocketFile>, path: String, kind: Kind) -> Result<Self> {
    Self::registered(fd, file, path, kind, false)
  }

  /// Registers `fd` with the reactor; if that fails, an `adopted` fd is left open (it is
  /// still its owner's), and one of ours is closed with its socket file removed.
  fn registered(
    fd: OwnedFd,
    file: Option<SocketFile>,
    path: String,
    kind: Kind,
    adopted: bool,
  ) -> Result<Self> {
    let io = match register_or_return(fd, Interest::READABLE) {
      Ok(io) => io,
      Err((e, fd)) => {
        if let Some(file) = &file {
          file.remove();
        }
        if let (true, Some(fd)) = (adopted, fd) {
          let _ = fd.into_raw_fd();
        }
        return Err(e);
      }
    };
    Ok(Self {
      io: Mutex::new(Some(Arc::new(ListenerShared {
        io,
        closed: watch::Sender::new(false),
      }))),
      unlink_on_close: AtomicBool::new(file.is_some()),
      file,
      path,
      acceptor: Mutex::new(None),
      kind,
    })
  }
}

#[napi]
impl AsyncUnixListener {
  /// Creates the socket file at `path` (or the abstract name `\0name`) and listens on it.
  #[napi]
  pub fn bind(path: String) -> Result<AsyncUnixListener> {
    let bound = unix::bind(&path, true)?;
    Self::listening(bound.fd, bound.file, path, Kind::Stream)
  }

  /// A seqpacket listener at `path`: its `accept` settles with `NativeMessageSocket`s.
  #[napi]
  pub fn bind_seqpacket(path: String) -> Result<AsyncUnixListener> {
    let bound = unix::bind_kind(Kind::Seqpacket, &path, true)?;
    Self::listening(bound.fd, bound.file, path, Kind::Seqpacket)
  }

  /// Adopts a listening seqpacket socket, as `fromFd` does a stream one.
  #[napi]
  pub fn from_fd_seqpacket(fd: i32) -> Result<AsyncUnixListener> {
    Self::adopt(fd, Kind::Seqpacket)
  }

  /// Takes ownership of `fd`, a listening Unix stream socket (`ERR_INVALID_FD_TYPE`
  /// otherwise, and the fd is left alone), and makes it close-on-exec and non-blocking:
  /// `O_NONBLOCK` is set on the open file description, which other holders share (as
  /// Node's `listen({ fd })` does), because `accept` has no per-call non-blocking flag and
  /// must never block tokio's thread when another holder took the connection first. An
  /// adopted listener never removes a file.
  #[napi]
  pub fn from_fd(fd: i32) -> Result<AsyncUnixListener> {
    Self::adopt(fd, Kind::Stream)
  }

  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    lock(&self.io).as_ref().map_or(-1, |s| s.io.as_raw_fd())
  }

  /// The address it listens on: a path, `\0name` for an abstract one, or `''` for none.
  #[napi(getter)]
  pub fn path(&self) -> String {
    self.path.clone()
  }

  /// Whether `close()` removes the socket file this listener created (default `true`;
  /// `false` keeps it for a successor the listener was handed to).
  #[napi]
  pub fn set_unlink_on_close(&self, unlink: bool) {
    self
      .unlink_on_close
      .store(unlink && self.file.is_some(), Ordering::Release);
  }

  /// Accepts the next connection and settles operation `id` with it; `canceller` (from a
  /// JS `AbortSignal`) can cancel the wait, leaving the connection for the next accept.
  /// Running out of fds (`EMFILE`, ...) fails this accept only: the listener stays open.
  ///
  /// tokio waits until a connection is pending; the `accept` itself happens on the JS
  /// thread when the Promise settles, so a connection is never taken from the backlog
  /// unless it is delivered (a `close()` meanwhile leaves it there, for whoever holds the
  /// listener next).
  #[napi(ts_args_type = "id: number, canceller?: ExternalObject<'Canceller'> | undefined | null")]
  pub fn accept(&self, env: &Env, id: f64, canceller: Option<&CancelHandle>) -> napi::Result<()> {
    let Some(shared) = lock(&self.io).clone() else {
      return fail::<()>(env, id, error::closed()).map(drop);
    };
    let home = settle::home(env).map_err(rejection)?;
    accept_later(
      home,
      shared,
      id,
      canceller.map(|c| Arc::clone(c)),
      self.kind,
    );
    Ok(())
  }

  /// Starts ringing: `callback()` whenever connections are pending. JS then takes them with
  /// `acceptNext()` and ends its turn with `endAcceptTurn()`.
  #[napi(ts_args_type = "callback: () => void")]
  pub fn start_accepting(&self, env: &Env, callback: Function<'_, (), ()>) -> Result<()> {
    let shared = lock(&self.io).clone().ok_or_else(error::closed)?;
    let mut acceptor = lock(&self.acceptor);
    if acceptor.is_none() {
      *acceptor = Some(Acceptor::start(env, shared, callback).map_err(internal)?);
    }
    Ok(())
  }

  /// One connection from the backlog, now, on this thread: `null` when there is none.
  #[napi]
  pub fn accept_next(&self) -> Result<Option<AsyncUnixStream>> {
    let shared = lock(&self.io).clone().ok_or_else(error::closed)?;
    if self.kind != Kind::Stream {
      return Err(error::coded("ERR_INVALID_FD_TYPE", "not a stream listener"));
    }
    match accept_now(&shared) {
      // Registered here, on the JS thread, inside the runtime.
      Ok(fd) => AsyncUnixStream::wrap(fd).map(Some),
      Err(Errno::EAGAIN) => Ok(None),
      Err(e) => Err(error::sys(e, "accept")),
    }
  }

  /// Ends JS's turn of accepting: `0` the backlog is empty (or the server stopped), `1` JS
  /// stopped early (ring again), `2` out of fds or memory (back off), `3` accepting failed
  /// for good.
  #[napi]
  pub fn end_accept_turn(&self, verdict: u32) {
    if let Some(acceptor) = lock(&self.acceptor).as_ref() {
      acceptor.end_turn(Verdict::from_js(verdict));
    }
  }

  /// Whether waiting for connections keeps the process alive (`ref()` / `unref()`).
  #[napi]
  pub fn set_referenced(&self, env: &Env, referenced: bool) -> Result<()> {
    match lock(&self.acceptor).as_ref() {
      Some(acceptor) => acceptor.set_referenced(env, referenced).map_err(internal),
      None => Ok(()),
    }
  }

  /// Stops listening (this descriptor: another holder keeps listening), removes the socket
  /// file unless `setUnlinkOnClose(false)`, and rejects pending accepts with
  /// `ERR_SOCKET_CLOSED`. A second call does nothing.
  #[napi]
  pub fn close(&self) {
    let shared = lock(&self.io).take();
    if let Some(shared) = shared {
      lock(&self.acceptor).take();
      if self.unlink_on_close.load(Ordering::Acquire) {
        if let Some(file) = &self.file {
          file.remove();
        }
      }
      shared.closed.send_replace(true);
      release(shared);
    }
  }
}

impl Drop for AsyncUnixListener {
  fn drop(&mut self) {
    self.close();
  }
}

/// Waits (on tokio) for a connection for operation `id`, then accepts it on the JS thread;
/// starts over if another holder took it first.
fn accept_later(
  home: Arc<Home>,
  shared: Arc<ListenerShared>,
  id: f64,
  canceller: Option<Arc<Canceller>>,
  kind: Kind,
) {
  let closed = shared.closed.subscribe();
  let listener = Arc::downgrade(&shared);
  let waiting = canceller.clone();
  let depot = Arc::clone(&home);
  let op = async move {
    let pending = async {
      connection_pending(&shared)
        .await
        .map_err(|e| error::sys(errno_of(&e), "accept"))
    };
    let outcome = tokio::select! {
      biased;
      _ = closing(&shared.closed) => Err(error::closed()),
      result = cancel::unless_cancelled(waiting, pending) => result,
    };
    drop(shared);
    outcome
  };
  settle_later(home, id, op, move |env, ()| {
    // Closed or aborted before JS got here: nothing was taken from the backlog.
    if *closed.borrow() {
      return Err(error::closed());
    }
    if canceller.as_ref().is_some_and(|c| c.is_cancelled()) {
      return Err(cancel::aborted());
    }
    let Some(shared) = listener.upgrade() else {
      return Err(error::closed());
    };
    match accept_now(&shared) {
      // Registered here, on the JS thread, inside the runtime.
      Ok(fd) if kind == Kind::Seqpacket => {
        let socket = MessageSocket::wrap(fd, Kind::Seqpacket, None)?;
        let instance = socket.into_instance(env).map_err(internal)?;
        Ok(Settled::Value(Some(RawValue(instance.raw()))))
      }
      Ok(fd) => {
        let stream = AsyncUnixStream::wrap(fd)?;
        let instance = stream.into_instance(env).map_err(internal)?;
        Ok(Settled::Value(Some(RawValue(instance.raw()))))
      }
      Err(Errno::EAGAIN) => {
        accept_later(depot, shared, id, canceller, kind);
        Ok(Settled::Later)
      }
      Err(e) => Err(error::sys(e, "accept")),
    }
  });
}
