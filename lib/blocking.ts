/** The blocking classes: every call runs its syscall on the calling thread. */
import { binding, peerCredentialsOf, WRAP, type Native, type PeerCredentials } from './binding.js'
import { illegalConstructor, invalidArgType, native } from './errors.js'
import { toBytes, toFd, validateHow, validateMaxQueuedFds, validatePath, validateTimeout } from './args.js'
import type { DequeueFd, EnqueueFd, FdLike, ShutdownHow } from './interfaces.js'

/**
 * A connected Unix stream socket whose calls block the calling thread (for scripts, CLIs
 * and worker threads). Fds enqueued ride on the next `write`; fds that arrive with a
 * `read` are dequeue-able as soon as it returns. It never reads ahead.
 */
export class UnixStream implements EnqueueFd, DequeueFd {
  #native: Native.NativeUnixStream

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeUnixStream) {
    if (token !== WRAP) throw illegalConstructor('Use UnixStream.pair(), UnixStream.connect() or UnixListener.accept()')
    this.#native = inner
  }

  /** Two connected streams. */
  static pair(): [UnixStream, UnixStream] {
    const [a, b] = native(() => binding.NativeUnixStream.pair())
    return [new UnixStream(WRAP, a), new UnixStream(WRAP, b)]
  }

  /** Connects to the listener at `path`. Throws `ENOENT`, `ECONNREFUSED`, ... */
  static connect(path: string): UnixStream {
    validatePath(path)
    return new UnixStream(
      WRAP,
      native(() => binding.NativeUnixStream.connect(path)),
    )
  }

  /** The socket's fd; -1 once closed. */
  get fd(): number {
    return this.#native.fd
  }

  /**
   * Bound of the inbound queue (default 1024). While that many fds wait for `dequeue`,
   * `read` throws {@link QueueFullError} without reading.
   */
  get maxQueuedFds(): number {
    return this.#native.maxQueuedFds
  }

  set maxQueuedFds(value: number) {
    this.#native.maxQueuedFds = validateMaxQueuedFds(value)
  }

  enqueue(fd: FdLike): void {
    const raw = toFd(fd)
    native(() => this.#native.enqueue(raw))
  }

  /**
   * The peer process's `pid`, `uid` and `gid` as the kernel recorded them when it
   * connected (`SO_PEERCRED`; `getpeereid` on the BSDs, where `pid` may be `null`).
   */
  peerCredentials(): PeerCredentials {
    return native(() => peerCredentialsOf(this.#native))
  }

  dequeue(): number | null {
    return native(() => this.#native.dequeue())
  }

  /**
   * Reads once into `buf` (one `recvmsg`). Returns the bytes read, `0` at end of stream.
   * Fds that came with these bytes are dequeue-able when it returns.
   */
  read(buf: Uint8Array): number {
    if (!(buf instanceof Uint8Array)) throw invalidArgType('buf', 'an instance of Buffer or Uint8Array', buf)
    return native(() => this.#native.read(buf))
  }

  /**
   * Writes once (one `sendmsg`) with every queued fd attached. Returns the bytes written,
   * at least 1 unless `data` is empty; writing nothing while fds are queued throws
   * `ERR_FD_EMPTY_WRITE`.
   */
  write(data: Uint8Array | string): number {
    const bytes = toBytes(data)
    return native(() => this.#native.write(bytes))
  }

  /** Nothing is buffered in user space; throws only when the stream is closed. */
  flush(): void {
    native(() => this.#native.flush())
  }

  /** Shuts down one or both directions (default `'both'`). */
  shutdown(how?: ShutdownHow): void {
    const checked = validateHow(how)
    native(() => this.#native.shutdown(checked))
  }

  /** Read timeout in ms, `null` for none. A timed-out `read` throws `ETIMEDOUT` and loses nothing. */
  setReadTimeout(ms: number | null): void {
    const checked = validateTimeout(ms)
    native(() => this.#native.setReadTimeout(checked))
  }

  /** Write timeout in ms, `null` for none. A timed-out `write` throws `ETIMEDOUT`; queued fds stay queued. */
  setWriteTimeout(ms: number | null): void {
    const checked = validateTimeout(ms)
    native(() => this.#native.setWriteTimeout(checked))
  }

  /** Closes the socket, every queued outbound fd and every fd not dequeued. Idempotent. */
  close(): void {
    this.#native.close()
  }
}

/** A listening Unix socket bound to a path; `accept` blocks the calling thread. */
export class UnixListener {
  #native: Native.NativeUnixListener

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeUnixListener) {
    if (token !== WRAP) throw illegalConstructor('Use UnixListener.bind()')
    this.#native = inner
  }

  /** Creates a socket file at `path` and listens on it. Throws `EADDRINUSE` if it exists. */
  static bind(path: string): UnixListener {
    validatePath(path)
    return new UnixListener(
      WRAP,
      native(() => binding.NativeUnixListener.bind(path)),
    )
  }

  /** The listening socket's fd; -1 once closed. */
  get fd(): number {
    return this.#native.fd
  }

  /** The path it was bound to. */
  get path(): string {
    return this.#native.path ?? ''
  }

  /** Waits for the next connection. */
  accept(): UnixStream {
    return new UnixStream(
      WRAP,
      native(() => this.#native.accept()),
    )
  }

  /** Stops listening and removes the socket file it created. Idempotent. */
  close(): void {
    this.#native.close()
  }
}
