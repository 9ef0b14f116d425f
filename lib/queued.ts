/** What the blocking and the async stream classes share: the fd, both queues, the peer. */
import { peerCredentialsOf, type Native, type PeerCredentials } from './binding.js'
import { native, shapeError } from './errors.js'
import { setMaxQueuedFds, toFd } from './args.js'
import type { DequeueFd, EnqueueFd, FdLike } from './interfaces.js'

/** The native members both stream classes have. */
interface NativeQueuedStream {
  readonly fd: number
  maxQueuedFds: number
  peerCredentials(): Native.PeerCredentials
  close(): void
}

/** A connected Unix stream socket with an outbound and an inbound fd queue. */
export abstract class QueuedStream<N extends NativeQueuedStream> implements EnqueueFd, DequeueFd {
  /** @internal */
  protected readonly inner: N

  /** @internal */
  protected constructor(inner: N) {
    this.inner = inner
  }

  /** The socket's fd; -1 once closed. */
  get fd(): number {
    return this.inner.fd
  }

  /**
   * Bound of the inbound queue (default 1024). While that many fds wait for `dequeue`, a
   * blocking `read` throws {@link QueueFullError} without reading, and an async `read`
   * waits until you dequeue.
   */
  get maxQueuedFds(): number {
    return this.inner.maxQueuedFds
  }

  set maxQueuedFds(value: number) {
    setMaxQueuedFds(this.inner, value)
  }

  enqueue(fd: FdLike): void {
    const raw = toFd(fd)
    try {
      this.enqueueRaw(raw)
    } catch (error) {
      throw shapeError(error)
    }
  }

  dequeue(): number | null {
    try {
      return this.dequeueRaw()
    } catch (error) {
      throw shapeError(error)
    }
  }

  /** @internal The native enqueue of an fd number already checked. */
  protected abstract enqueueRaw(fd: number): void

  /** @internal The native dequeue. */
  protected abstract dequeueRaw(): number | null

  /**
   * The peer process's `pid`, `uid` and `gid` as the kernel recorded them when it
   * connected (`SO_PEERCRED`; `getpeereid` on the BSDs, where `pid` may be `null`).
   */
  peerCredentials(): PeerCredentials {
    return native(() => peerCredentialsOf(this.inner))
  }

  /**
   * Closes the socket, every fd still in the outbound queue and every fd not dequeued; an
   * async stream also settles its pending operations with `ERR_SOCKET_CLOSED` (under the
   * `'threads'` driver, a write that its worker had already finished resolves). Idempotent.
   */
  close(): void {
    this.inner.close()
  }
}
