//! Who is on the other end of a Unix socket, as the kernel recorded it at connect time:
//! `SO_PEERCRED` on Linux, `getpeereid` (and `LOCAL_PEERPID` on macOS) on the BSDs.

use std::os::fd::BorrowedFd;

use napi_derive::napi;

use crate::error::{self, Result};

/// The peer process's credentials when it connected (or created the pair).
#[napi(object)]
pub struct PeerCredentials {
  /// The peer's process id; `null` where the OS does not report it (FreeBSD).
  pub pid: Option<i32>,
  pub uid: u32,
  pub gid: u32,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_credentials(sock: BorrowedFd<'_>) -> Result<PeerCredentials> {
  use nix::sys::socket::{getsockopt, sockopt};
  let creds =
    getsockopt(&sock, sockopt::PeerCredentials).map_err(|e| error::sys(e, "getsockopt"))?;
  // A socket the kernel recorded no peer for (an unconnected datagram socket, or one
  // connected with connect(), which records none) reports pid 0 and uid/gid -1.
  if creds.pid() == 0 {
    return Err(error::sys(nix::errno::Errno::ENOTCONN, "getsockopt"));
  }
  Ok(PeerCredentials {
    pid: Some(creds.pid()),
    uid: creds.uid(),
    gid: creds.gid(),
  })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn peer_credentials(sock: BorrowedFd<'_>) -> Result<PeerCredentials> {
  let (uid, gid) = nix::unistd::getpeereid(sock).map_err(|e| error::sys(e, "getpeereid"))?;
  #[cfg(any(target_os = "macos", target_os = "ios"))]
  let pid = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::LocalPeerPid).ok();
  #[cfg(not(any(target_os = "macos", target_os = "ios")))]
  let pid = None;
  Ok(PeerCredentials {
    pid,
    uid: uid.as_raw(),
    gid: gid.as_raw(),
  })
}
