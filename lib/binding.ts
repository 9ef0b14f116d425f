/** Loads the native addon, or explains why this platform cannot have one. */
import type * as Native from '../binding.js'

/** Platforms whose kernels pass fds with SCM_RIGHTS and for which binaries are built. */
const SUPPORTED_PLATFORMS = ['linux', 'darwin', 'freebsd']

function loadBinding(): typeof Native {
  if (!SUPPORTED_PLATFORMS.includes(process.platform)) {
    const error = new Error(
      `fd-queue: passing file descriptors needs a Unix system with SCM_RIGHTS; ` +
        `${process.platform}/${process.arch} is not supported. Supported: ` +
        `linux (x64, arm64; glibc and musl), darwin (x64, arm64), freebsd (x64).`,
    ) as NodeJS.ErrnoException
    error.code = 'ERR_FD_QUEUE_UNSUPPORTED_PLATFORM'
    throw error
  }
  return require('../binding.js') as typeof Native
}

export const binding = loadBinding()

/**
 * How this JS thread runs the async work: on the thread itself, driven by its event loop
 * (`'libuv'`), or on a tokio worker thread (`'threads'`, the fallback: where the host has no
 * libuv, as in Bun, on systems other than Linux, or when `FD_QUEUE_DRIVER=threads`).
 */
export const runtime = binding.initRuntime(
  process.env.FD_QUEUE_DRIVER === 'threads' || 'bun' in process.versions ? 'threads' : 'auto',
)
export type { Native }

/** Who is on the other end of a Unix socket, as the kernel recorded it at connect time. */
export interface PeerCredentials {
  /** The peer's process id; `null` where the OS does not report it (FreeBSD). */
  pid: number | null
  uid: number
  gid: number
}

/** The credentials of the peer of a native stream, in their public shape. */
export function peerCredentialsOf(inner: { peerCredentials(): Native.PeerCredentials }): PeerCredentials {
  const { pid, uid, gid } = inner.peerCredentials()
  return { pid: pid ?? null, uid, gid }
}

/** Only this package may wrap a native object in a public class. */
export const WRAP: unique symbol = Symbol('fd-queue.wrap')
