/** The async classes: Promise-returning, driven by tokio, never blocking the event loop. */
import { binding, WRAP, type Native } from './binding.js'
import { illegalConstructor, invalidArgType, native, shapeError } from './errors.js'
import {
  holdsFd,
  toBytes,
  validateFdNumber,
  validateHow,
  validatePath,
  validateReadSize,
  validateSignalOption,
} from './args.js'
import type { ShutdownHow } from './interfaces.js'
import {
  answered,
  closing,
  connectedNow,
  copyOut,
  Liveness,
  mustDefer,
  readMustDefer,
  newId,
  operation,
  readScratch,
  setReferencedOpen,
} from './pending.js'
import { PromiseListener } from './listener.js'
import { QueuedStream } from './queued.js'

const natives = new WeakMap<AsyncUnixStream, WrappedStream>()

/** What `FdSocket.from` takes over from a stream: its native stream and its operations. */
interface WrappedStream {
  inner: Native.NativeAsyncUnixStream
  liveness: Liveness
}
/** @internal The native stream behind an {@link AsyncUnixStream} and its operations, for `FdSocket.from`. */
export function wrappedStreamOf(stream: AsyncUnixStream): WrappedStream | undefined {
  return natives.get(stream)
}

/**
 * A connected Unix stream socket with Promise-returning I/O. Concurrent `read`s are
 * served in call order, so are `write`s, and the bytes of two writes never interleave.
 * An fd enqueued between two `write` calls rides on the later one. It never reads ahead:
 * the fds a `read` brings are dequeue-able right after it resolves, and not before, and a
 * read queued behind it takes nothing from the socket until the code after it has run.
 *
 * A pending operation keeps the stream alive (garbage collection never closes it) and,
 * unless `unref()` was called, keeps the process alive.
 */
export class AsyncUnixStream extends QueuedStream<Native.NativeAsyncUnixStream> {
  /** The native stream's handle for the calls made per message or per fd. */
  #handle: Native.ExternalObject<'StreamCore'>
  #liveness = new Liveness()

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeAsyncUnixStream) {
    if (token !== WRAP) {
      throw illegalConstructor('Use AsyncUnixStream.pair(), connect(), fromFd() or AsyncUnixListener#accept()')
    }
    super(inner)
    this.#handle = inner.handle
    natives.set(this, { inner, liveness: this.#liveness })
  }

  /** Two connected streams (synchronous). */
  static pair(): [AsyncUnixStream, AsyncUnixStream] {
    const [a, b] = native(() => binding.NativeAsyncUnixStream.pair())
    return [new AsyncUnixStream(WRAP, a), new AsyncUnixStream(WRAP, b)]
  }

  /**
   * Connects to the listener at `path` (`'\0name'`: an abstract address, Linux). Rejects
   * with `ENOENT`, `ECONNREFUSED`, `EAGAIN` (the listener's backlog is full), ... A Unix
   * socket connects at once or not at all, so `signal` only matters when it is aborted
   * already: then the Promise rejects with an `AbortError` and nothing is connected.
   */
  static connect(path: string, options?: { signal?: AbortSignal }): Promise<AsyncUnixStream> {
    validatePath(path)
    const signal = validateSignalOption(options)
    return connectedNow(
      signal,
      () =>
        new AsyncUnixStream(
          WRAP,
          native(() => binding.NativeAsyncUnixStream.connect(path)),
        ),
    )
  }

  /**
   * Adopts `fd`, a connected Unix stream socket this process holds (inherited from a
   * parent, received with `dequeue()`, ...): the stream owns it from now on (no
   * duplicate; `close()` closes it) and makes it close-on-exec. Its `O_NONBLOCK` flag is
   * left as it is. Any other kind of fd throws `ERR_INVALID_FD_TYPE` and stays yours.
   */
  static fromFd(fd: number): AsyncUnixStream {
    const raw = validateFdNumber(fd, 'fd')
    return new AsyncUnixStream(
      WRAP,
      native(() => binding.NativeAsyncUnixStream.fromFd(raw)),
    )
  }

  /** @internal */
  protected enqueueRaw(fd: number): void {
    binding.streamEnqueue(this.#handle, fd)
  }

  /** @internal */
  protected dequeueRaw(): number | null {
    return binding.streamDequeue(this.#handle)
  }

  /**
   * One `recvmsg` of at most `size` bytes (default 65536, at most 2^30). Resolves with the
   * bytes, or an empty Buffer at end of stream. Aborting `signal` rejects with an
   * `AbortError` and loses nothing: a read that had not read yet consumes no bytes and no
   * fds (the next read gets them); one that had read resolves with what it read.
   */
  read(size?: number, options?: { signal?: AbortSignal }): Promise<Buffer> {
    const checked = validateReadSize(size)
    const signal = validateSignalOption(options)
    // Outside the try below: called on anything but a stream, this throws as it is.
    const liveness = this.#liveness
    if (signal) {
      return operation(
        this,
        liveness,
        (id, canceller, defer) => this.#read(checked, id, canceller, defer || readMustDefer(this)),
        signal,
      )
    }
    // The hot path: a call per read and no closure (see `answered`).
    const id = newId()
    let now: Buffer | Promise<Buffer> | null
    try {
      now = this.#read(checked, id, undefined, readMustDefer(this))
    } catch (error) {
      throw shapeError(error)
    }
    return Promise.resolve(answered(this, liveness, id, now))
  }

  /** The native read, started as operation `id`: the bytes now, or `null` (later). */
  #read(
    size: number,
    id: number,
    canceller: Native.ExternalObject<'Canceller'> | undefined,
    defer: boolean,
  ): Buffer | Promise<Buffer> | null {
    // Bytes there at once come in the scratch Buffer (their count) when they fit, and it
    // holds nothing a call is yet to copy out.
    const now = binding.streamRead(this.#handle, size, id, canceller, readScratch(), defer)
    if (typeof now !== 'number') return now
    try {
      return copyOut(now)
    } catch (error) {
      // Out of memory: the read rejects, as one that failed natively does.
      return Promise.reject(error)
    }
  }

  /**
   * Writes every byte of `data` with the fds queued at the time of this call attached to
   * its first `sendmsg`. Resolves with the byte count. What cannot be sent at once is sent
   * later from `data` itself: do not change it before the Promise settles. If its memory is
   * detached (transferred) or its length changes meanwhile, the write rejects with
   * `ERR_INVALID_STATE` and the rest is not sent (changed bytes go out as they are).
   */
  write(data: Uint8Array | string): Promise<number> {
    const bytes = toBytes(data)
    // The hot path, as read's.
    const liveness = this.#liveness
    const id = newId()
    let now: number | null
    try {
      now = binding.streamWrite(this.#handle, bytes, id, mustDefer())
    } catch (error) {
      throw shapeError(error)
    }
    return Promise.resolve(answered(this, liveness, id, now))
  }

  /**
   * Closes the socket and both queues, and settles every pending operation with
   * `ERR_SOCKET_CLOSED` (under the `'threads'` driver, a write that its worker had already
   * finished resolves): a signal aborted after this changes none of them. Idempotent.
   */
  override close(): void {
    closing(this.#liveness)
    super.close()
  }

  /** Shuts down one or both directions (default `'both'`) after every earlier write went out. */
  shutdown(how?: ShutdownHow): Promise<void> {
    const checked = validateHow(how)
    return operation<void>(this, this.#liveness, (id) => {
      this.inner.shutdown(checked, id)
      return null
    })
  }

  /** Lets the process exit while operations of this stream are pending (like `net.Socket#unref`). */
  unref(): this {
    setReferencedOpen(this.#liveness, false, this.fd)
    return this
  }

  /** Undoes `unref()`. */
  ref(): this {
    setReferencedOpen(this.#liveness, true, this.fd)
    return this
  }

  /**
   * Yields the bytes of each `read()` until the end of the stream, as a Duplex does: the
   * fds a chunk brought are dequeue-able in the loop's body, and the next read waits for
   * it. Breaking out of the loop stops reading (the stream stays open).
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    for (let chunk = await this.read(); chunk.length > 0; chunk = await this.read()) yield chunk
  }

  /** `await using stream = ...`: closes the stream. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close()
    return Promise.resolve()
  }
}

/**
 * A listening Unix socket with a Promise-returning `accept`, and async-iterable:
 * `for await (const connection of listener)` yields connections until it is closed.
 */
export class AsyncUnixListener extends PromiseListener<AsyncUnixStream> {
  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeAsyncUnixListener) {
    if (token !== WRAP) throw illegalConstructor('Use AsyncUnixListener.bind() or AsyncUnixListener.fromFd()')
    super(inner)
  }

  /**
   * Creates a socket file at `path` and listens on it (synchronous); `'\0name'` listens
   * on an abstract address instead (Linux), with no file.
   */
  static bind(path: string): AsyncUnixListener {
    validatePath(path)
    return new AsyncUnixListener(
      WRAP,
      native(() => binding.NativeAsyncUnixListener.bind(path)),
    )
  }

  /**
   * Adopts `fd`, a listening Unix stream socket this process holds (from systemd socket
   * activation, a predecessor, ...): the listener owns it from now on and makes it
   * close-on-exec and non-blocking (`O_NONBLOCK` is shared with other holders of the
   * socket, as with Node's `listen({ fd })`). It never removes a socket file. Any other
   * kind of fd throws `ERR_INVALID_FD_TYPE` and stays yours.
   */
  static fromFd(fd: number): AsyncUnixListener {
    const raw = validateFdNumber(fd, 'fd')
    return new AsyncUnixListener(
      WRAP,
      native(() => binding.NativeAsyncUnixListener.fromFd(raw)),
    )
  }

  /** @internal */
  protected wrapConnection(inner: unknown): AsyncUnixStream {
    return new AsyncUnixStream(WRAP, inner as Native.NativeAsyncUnixStream)
  }
}

holdsFd(AsyncUnixStream)
holdsFd(AsyncUnixListener)
