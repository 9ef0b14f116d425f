/** The async classes: Promise-returning, driven by tokio, never blocking the event loop. */
import { binding, WRAP, type Native } from './binding.js'
import { illegalConstructor, native, nativeAsync } from './errors.js'
import { toBytes, validateHow, validatePath, validateReadSize } from './args.js'
import type { ShutdownHow } from './interfaces.js'
import { QueuedStream } from './queued.js'

const natives = new WeakMap<AsyncUnixStream, Native.NativeAsyncUnixStream>()

/** @internal The native stream behind an {@link AsyncUnixStream}, for `FdSocket.from`. */
export function nativeStreamOf(stream: AsyncUnixStream): Native.NativeAsyncUnixStream | undefined {
  return natives.get(stream)
}

/**
 * A connected Unix stream socket with Promise-returning I/O. Concurrent `read`s are
 * served in call order, so are `write`s, and the bytes of two writes never interleave.
 * An fd enqueued between two `write` calls rides on the later one. It never reads ahead:
 * the fds a `read` brings are dequeue-able right after it resolves, and not before.
 */
export class AsyncUnixStream extends QueuedStream<Native.NativeAsyncUnixStream> {
  /** The native stream's handle for the calls made per message or per fd. */
  #handle: Native.ExternalObject<'StreamCore'>

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeAsyncUnixStream) {
    if (token !== WRAP) throw illegalConstructor('Use AsyncUnixStream.pair(), AsyncUnixStream.connect() or accept()')
    super(inner)
    this.#handle = inner.handle
    natives.set(this, inner)
  }

  /** Two connected streams (synchronous). */
  static pair(): [AsyncUnixStream, AsyncUnixStream] {
    const [a, b] = native(() => binding.NativeAsyncUnixStream.pair())
    return [new AsyncUnixStream(WRAP, a), new AsyncUnixStream(WRAP, b)]
  }

  /** Connects to the listener at `path`. Rejects with `ENOENT`, `ECONNREFUSED`, ... */
  static connect(path: string): Promise<AsyncUnixStream> {
    validatePath(path)
    return nativeAsync(() => binding.NativeAsyncUnixStream.connect(path)).then(
      (inner) => new AsyncUnixStream(WRAP, inner),
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
   * bytes, or an empty Buffer at end of stream.
   */
  read(size?: number): Promise<Buffer> {
    const checked = validateReadSize(size)
    return nativeAsync(() => binding.streamRead(this.#handle, checked), this)
  }

  /**
   * Writes every byte of `data` with the fds queued at the time of this call attached to
   * its first `sendmsg`. Resolves with the byte count.
   */
  write(data: Uint8Array | string): Promise<number> {
    const bytes = toBytes(data)
    return nativeAsync(() => binding.streamWrite(this.#handle, bytes), this)
  }

  /** Shuts down one or both directions (default `'both'`) after every earlier write went out. */
  shutdown(how?: ShutdownHow): Promise<void> {
    const checked = validateHow(how)
    return nativeAsync(() => this.inner.shutdown(checked), this)
  }
}

/** A listening Unix socket with a Promise-returning `accept`. */
export class AsyncUnixListener {
  #native: Native.NativeAsyncUnixListener

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeAsyncUnixListener) {
    if (token !== WRAP) throw illegalConstructor('Use AsyncUnixListener.bind()')
    this.#native = inner
  }

  /** Creates a socket file at `path` and listens on it (synchronous). */
  static bind(path: string): AsyncUnixListener {
    validatePath(path)
    return new AsyncUnixListener(
      WRAP,
      native(() => binding.NativeAsyncUnixListener.bind(path)),
    )
  }

  /** The listening socket's fd; -1 once closed. */
  get fd(): number {
    return this.#native.fd
  }

  /** The path it was bound to. */
  get path(): string {
    return this.#native.path
  }

  /** Resolves with the next connection; rejects with `ERR_SOCKET_CLOSED` if closed first. */
  accept(): Promise<AsyncUnixStream> {
    return nativeAsync(() => this.#native.accept(), this).then((inner) => new AsyncUnixStream(WRAP, inner))
  }

  /** Stops listening, removes the socket file and rejects pending accepts. Idempotent. */
  close(): void {
    this.#native.close()
  }
}
