/** The blocking classes: every call runs its syscall on the calling thread. */
import { binding, WRAP, type Native } from './binding.js'
import { closedError, illegalConstructor, invalidArgType, native } from './errors.js'
import {
  holdsFd,
  toBytes,
  validateFdNumber,
  validateHow,
  validatePath,
  validateReadBuffer,
  validateTimeout,
  validateTimeoutOption,
} from './args.js'
import type { ShutdownHow } from './interfaces.js'
import { QueuedStream } from './queued.js'

/**
 * A connected Unix stream socket whose calls block the calling thread (for scripts, CLIs
 * and worker threads). Fds enqueued ride on the next `write`; fds that arrive with a
 * `read` are dequeue-able as soon as it returns. It never reads ahead.
 */
export class UnixStream extends QueuedStream<Native.NativeUnixStream> {
  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeUnixStream) {
    if (token !== WRAP) {
      throw illegalConstructor(
        'Use UnixStream.pair(), UnixStream.connect(), UnixStream.fromFd() or UnixListener#accept()',
      )
    }
    super(inner)
  }

  /**
   * Adopts `fd`, a connected Unix stream socket this process holds (inherited from a
   * parent, received with `dequeue()`, ...): the stream owns it from now on (no
   * duplicate; `close()` closes it) and makes it close-on-exec. Nothing else changes: a
   * blocking class never sets `O_NONBLOCK` on a socket others may share, and if the socket
   * is non-blocking already, its calls wait with `poll` instead. Any other kind of fd
   * throws `ERR_INVALID_FD_TYPE` and stays yours.
   */
  static fromFd(fd: number): UnixStream {
    const raw = validateFdNumber(fd, 'fd')
    return new UnixStream(
      WRAP,
      native(() => binding.NativeUnixStream.fromFd(raw)),
    )
  }

  /** @internal */
  protected enqueueRaw(fd: number): void {
    this.inner.enqueue(fd)
  }

  /** @internal */
  protected dequeueRaw(): number | null {
    return this.inner.dequeue()
  }

  /** Two connected streams. */
  static pair(): [UnixStream, UnixStream] {
    const [a, b] = native(() => binding.NativeUnixStream.pair())
    return [new UnixStream(WRAP, a), new UnixStream(WRAP, b)]
  }

  /**
   * Connects to the listener at `path`. Throws `ENOENT`, `ECONNREFUSED`, ... While the
   * listener's backlog is full, a connect waits (Linux); with `timeout` (ms) it waits at
   * most that long and throws `ETIMEDOUT`, so a worker thread can never hang on it.
   */
  static connect(path: string, options?: { timeout?: number }): UnixStream {
    validatePath(path)
    const timeout = validateTimeoutOption(options)
    return new UnixStream(
      WRAP,
      native(() => binding.NativeUnixStream.connect(path, timeout)),
    )
  }

  /**
   * Reads once into `buf` (one `recvmsg`). Returns the bytes read, `0` at end of stream.
   * Fds that came with these bytes are dequeue-able when it returns.
   */
  read(buf: Uint8Array): number {
    const target = validateReadBuffer(buf)
    return native(() => this.inner.read(target))
  }

  /**
   * Writes once (one `sendmsg`) with every queued fd attached. Returns the bytes written,
   * at least 1 unless `data` is empty; writing nothing while fds are queued throws
   * `ERR_FD_EMPTY_WRITE`.
   */
  write(data: Uint8Array | string): number {
    const bytes = toBytes(data)
    return native(() => this.inner.write(bytes))
  }

  /** Nothing is buffered in user space; throws only when the stream is closed. */
  flush(): void {
    native(() => this.inner.flush())
  }

  /** Shuts down one or both directions (default `'both'`). */
  shutdown(how?: ShutdownHow): void {
    const checked = validateHow(how)
    native(() => this.inner.shutdown(checked))
  }

  /**
   * Read timeout in ms, `null` for none. A timed-out `read` throws `ETIMEDOUT` and loses
   * nothing. It belongs to this object (a `poll` deadline), not to the socket, which other
   * processes may share.
   */
  setReadTimeout(ms: number | null): void {
    const checked = validateTimeout(ms)
    native(() => this.inner.setReadTimeout(checked))
  }

  /** Write timeout in ms, `null` for none. A timed-out `write` throws `ETIMEDOUT`; queued fds stay queued. */
  setWriteTimeout(ms: number | null): void {
    const checked = validateTimeout(ms)
    native(() => this.inner.setWriteTimeout(checked))
  }

  /**
   * Yields the bytes of each `read()` (up to 64 KiB, each chunk a Buffer of its own)
   * until the end of the stream; the chunk's fds are dequeue-able in the loop's body.
   * Every step is a blocking read, as any call of this class is. `break` stops reading and
   * leaves the stream open; a read timeout throws out of the loop.
   */
  *[Symbol.iterator](): Generator<Buffer, void, undefined> {
    const scratch = Buffer.allocUnsafe(READ_CHUNK)
    for (let n = this.read(scratch); n > 0; n = this.read(scratch)) yield Buffer.from(scratch.subarray(0, n))
  }

  /**
   * `for await` as over every socket of this package: the same chunks as the synchronous
   * iterator, each read still blocking the thread.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    yield* this[Symbol.iterator]()
  }

  /** `using stream = ...`: closes the stream. */
  [Symbol.dispose](): void {
    this.close()
  }
}

/** Most bytes one step of a `UnixStream`'s iteration reads (as `AsyncUnixStream#read()`). */
const READ_CHUNK = 65536

/** A listening Unix socket bound to a path; `accept` blocks the calling thread. */
export class UnixListener {
  #native: Native.NativeUnixListener

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeUnixListener) {
    if (token !== WRAP) throw illegalConstructor('Use UnixListener.bind() or UnixListener.fromFd()')
    this.#native = inner
  }

  /**
   * Adopts `fd`, a listening Unix stream socket this process holds (from systemd socket
   * activation, a predecessor, ...): the listener owns it from now on and makes it
   * close-on-exec; `O_NONBLOCK` is left as it is. It never removes a socket file. Any other
   * kind of fd throws `ERR_INVALID_FD_TYPE` and stays yours.
   */
  static fromFd(fd: number): UnixListener {
    const raw = validateFdNumber(fd, 'fd')
    return new UnixListener(
      WRAP,
      native(() => binding.NativeUnixListener.fromFd(raw)),
    )
  }

  /**
   * Creates a socket file at `path` and listens on it; throws `EADDRINUSE` if it exists.
   * `'\0name'` listens on an abstract address instead (Linux), with no file.
   */
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

  /** The address it listens on: a path, `'\0name'` for an abstract one, `''` if unnamed. */
  get path(): string {
    return this.#native.path
  }

  /**
   * Whether `close()` removes the socket file this listener created (default `true`).
   * Pass `false` before handing the listener to a successor, so that its path stays
   * reachable after this process closes its copy.
   */
  setUnlinkOnClose(unlink: boolean): this {
    if (typeof unlink !== 'boolean') throw invalidArgType('unlink', 'of type boolean', unlink)
    if (this.#native.fd === -1) throw closedError()
    this.#native.setUnlinkOnClose(unlink)
    return this
  }

  /**
   * Waits for the next connection. With `timeout` (ms) it waits at most that long and
   * throws `ETIMEDOUT`: loop on it to keep a worker thread responsive (a thread blocked in
   * an endless `accept` cannot be stopped, not even by `worker.terminate()`).
   */
  accept(options?: { timeout?: number }): UnixStream {
    const timeout = validateTimeoutOption(options)
    return new UnixStream(
      WRAP,
      native(() => this.#native.accept(timeout)),
    )
  }

  /**
   * Stops listening (this descriptor: a process it was handed to keeps listening) and
   * removes the socket file it created, unless `setUnlinkOnClose(false)`. Idempotent.
   */
  close(): void {
    this.#native.close()
  }

  /** `using listener = ...`: closes the listener. */
  [Symbol.dispose](): void {
    this.close()
  }
}

holdsFd(UnixStream)
holdsFd(UnixListener)
