/** The blocking classes: every call runs its syscall on the calling thread. */
import { binding, WRAP, type Native } from './binding.js'
import { illegalConstructor, native } from './errors.js'
import {
  toBytes,
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
    if (token !== WRAP) throw illegalConstructor('Use UnixStream.pair(), UnixStream.connect() or UnixListener.accept()')
    super(inner)
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

  /** Read timeout in ms, `null` for none. A timed-out `read` throws `ETIMEDOUT` and loses nothing. */
  setReadTimeout(ms: number | null): void {
    const checked = validateTimeout(ms)
    native(() => this.inner.setReadTimeout(checked))
  }

  /** Write timeout in ms, `null` for none. A timed-out `write` throws `ETIMEDOUT`; queued fds stay queued. */
  setWriteTimeout(ms: number | null): void {
    const checked = validateTimeout(ms)
    native(() => this.inner.setWriteTimeout(checked))
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

  /** Stops listening and removes the socket file it created. Idempotent. */
  close(): void {
    this.#native.close()
  }
}
