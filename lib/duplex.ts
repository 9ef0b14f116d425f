/**
 * `stream.Duplex` wrappers shaped like `net.Socket` / `net.Server`, carrying fds.
 *
 * Reading is pushed from native code through a threadsafe function (no Promise per
 * chunk); the JS side pauses it when `push()` says the buffer is full, and only a reading,
 * ref'd socket keeps the process alive. Fds enqueued on an `FdSocket` are duplicated at
 * once and staged natively; this side counts them per `write()` call, so when that call's
 * chunk reaches `_write` it says where they ride: on the first chunk written after
 * `enqueue`, however many chunks are still buffered.
 */
import { EventEmitter } from 'node:events'
import { addAbortSignal, Duplex, type DuplexOptions } from 'node:stream'
import { binding, peerCredentialsOf, type Native, type PeerCredentials } from './binding.js'
import { AsyncUnixStream, wrappedStreamOf } from './async.js'
import {
  closedError,
  codedError,
  invalidArgType,
  invalidArgValue,
  native,
  outOfRange,
  QueueFullError,
  shapeError,
} from './errors.js'
import {
  holdsFd,
  toBytes,
  toFd,
  validateCallback,
  validateFdNumber,
  validateMaxQueuedFds,
  validatePath,
  validateSignalOption,
  validateIdleTimeout,
} from './args.js'
import {
  answered,
  closing,
  copy,
  copyIfResizable,
  copyOut,
  disarm,
  fdArray,
  fdsCopied,
  Liveness,
  newId,
  operation,
  setReferenced,
} from './pending.js'
import type { DequeueFd, EnqueueFd, FdLike, FdsArrived } from './interfaces.js'

/** What handing fds over before an event came to: a listener's exception, fds lost. */
interface Handing {
  failure: { error: unknown } | null
  lost: boolean
}
/** Nothing handed over (no allocation per `'data'`). */
const NOTHING_HANDED: Handing = Object.freeze({ failure: null, lost: false })

/** Most fds one write can carry (the kernel's SCM_MAX_FD). */
const SCM_MAX_FD = 253
const DEFAULT_MAX_QUEUED_FDS = 1024
/**
 * The cuts of a batch with none or one (the common case), reused: native code copies them
 * out at once (making a Float64Array from a JS array per write took a runtime call).
 */
const NO_CUTS = new Float64Array(0)
const ONE_CUT = new Float64Array(2)

/** Options of {@link FdSocket} (and of the sockets an {@link FdServer} accepts). */
export interface FdSocketOptions extends Pick<
  DuplexOptions,
  'readableHighWaterMark' | 'writableHighWaterMark' | 'highWaterMark' | 'signal'
> {
  /**
   * Keep the writable side open after the peer ended (default `false`, like
   * `net.Socket`): with `false`, the socket ends its side once the peer's end arrives.
   */
  allowHalfOpen?: boolean
  /** Bound of the inbound queue and of fds buffered for writing (default 1024). */
  maxQueuedFds?: number
  /**
   * Adopt this fd, a connected Unix stream socket the process holds (inherited from a
   * parent, received with `dequeue()`, ...): the socket owns it from now on and makes it
   * close-on-exec. Any other kind of fd throws `ERR_INVALID_FD_TYPE` and stays yours.
   */
  fd?: number
  /** Calls `setTimeout(timeout)` on the socket once it is made (ms; 0: none, the default). */
  timeout?: number
}

/** Writable's `writableNeedDrain` getter: whether the bytes buffered owe a `'drain'`. */
const bytesNeedDrain = Object.getOwnPropertyDescriptor(Duplex.prototype, 'writableNeedDrain')!.get! as (
  this: Duplex,
) => boolean

/** How many staged fds wait for the chunk of one `write()` call. */
interface StagedRun {
  chunk: number
  count: number
}

/**
 * Joins the strings waiting in the readable buffer of `stream` (with `setEncoding()`) into
 * one, before a `read(n)` that takes part of them. Readable's `fromList` (Node 20.20 and
 * every line before nodejs/node#61884) compares the characters still wanted with the
 * number of buffered chunks instead of the current chunk's length: when they happen to be
 * equal it returns the whole chunk, more than `n`, and its count of buffered characters
 * goes wrong (a later `read` throws a TypeError). With one chunk that path is never taken.
 * Reading stops and starts at `maxQueuedFds`, which leaves many small chunks waiting.
 */
function joinDecodedChunks(stream: Duplex): void {
  const state = (
    stream as unknown as { _readableState?: { decoder?: unknown; buffer?: unknown; bufferIndex?: number } }
  )._readableState
  if (!state?.decoder || !Array.isArray(state.buffer)) return
  const buffer: string[] = state.buffer
  const start = state.bufferIndex ?? 0
  if (buffer.length - start < 2) return
  const joined = buffer.slice(start).join('')
  buffer.length = 0
  buffer.push(joined)
  state.bufferIndex = 0
}

/** How the native stream finds a chunk's held fds: its first fd (-1 for none) and their count. */
function firstFd(fds: number[]): number {
  return fds.length > 0 ? fds[0] : -1
}

/** @internal */
type Callback = (error?: Error | null) => void

let attachNative: (socket: FdSocket, inner: Native.NativeAsyncUnixStream, paused?: boolean) => void
/** The native streams of the `AsyncUnixStream`s that `FdSocket.from` wrapped. */
const wrappedStreams = new WeakSet<Native.NativeAsyncUnixStream>()

/**
 * A Unix stream socket as a `stream.Duplex`, like `net.Socket`, that also carries fds.
 *
 * Events: `connect`, `ready`, `data`, `end`, `finish`, `close` (`(hadError)`), `error`,
 * `drain`, `timeout` (see {@link FdSocket.setTimeout}), and `fds` (`(fds)`: right before
 * the `data` of a chunk that brought fds, with those fds, an array whose `truncated` says
 * whether the kernel dropped some). While the socket has `fds` listeners, the fds are
 * theirs (they are not in the inbound queue); with none, they are dequeue-able by the
 * time their chunk's `data` is emitted.
 */
export class FdSocket extends Duplex implements EnqueueFd, DequeueFd {
  #native: Native.NativeAsyncUnixStream | null = null
  #connecting = false
  /** Work that waits for `connect`: a `_write`, `_final` or `_read`. */
  #onConnect: Array<{ run: () => void; fail?: Callback }> = []
  /**
   * Fds handed over with chunks not yet emitted as 'data': `at` is where the chunk starts,
   * counted as `#pushedLength` counts.
   */
  #fdsAhead: Array<{ at: number; fds: FdsArrived; truncated: boolean }> = []
  /**
   * How much was pushed into the readable side, and emitted as 'data', so far: in bytes, or
   * after `setEncoding()` in the decoded strings' length, as `readableLength` counts.
   */
  #pushedLength = 0
  #emittedLength = 0
  /** The fds in `#fdsAhead`. */
  #fdsAheadCount = 0
  /** Inside `unshift()`: its bytes go out first, and no chunk's fds go with them. */
  #unshifting = false
  /** How much `unshift()` put back so far, counted as `#pushedLength` counts. */
  #unshiftedLength = 0
  #reading = false
  /** The native reader was told to pause (and not told to go on since). */
  #readingPaused = false
  #referenced = true
  /** Whether the socket's pending native writes keep the process alive. */
  #liveness = new Liveness()
  #maxQueuedFds: number
  /** The native stream's handle for the per-chunk and per-fd calls. */
  #handle: Native.ExternalObject<'StreamCore'> | null = null
  /** The duplicates `enqueue` made, held natively until their chunk is written. */
  #staged = binding.stagedFds()
  /** Oldest first: which write call's chunk the staged fds wait for, and how many. */
  #stagedRuns: StagedRun[] = []
  #stagedCount = 0
  /** Fds of a native write still in progress (the socket was full): buffered all the same. */
  #sendingCount = 0
  /** Fds staged since the last non-empty `write()`: they ride on the next one. */
  #ridingNext = 0
  /** Index the next `write()` call gets; chunk indexes in `_write` follow the same count. */
  #writeCalls = 0
  #chunksWritten = 0
  /** Index of the last non-empty chunk `_write`/`_writev` took. */
  #lastNonEmpty = -1
  /**
   * Indexes of the `write()` calls whose chunk may be empty when written (an empty view,
   * or a string: its bytes are Node's own, and some decode to none), oldest first. Any
   * other chunk found empty had its memory detached or shrunk while it waited.
   */
  #mayBeEmpty: number[] = []
  /** Where `#mayBeEmpty`'s entries still to be looked at start (a queue without `shift()`). */
  #mayBeEmptyHead = 0
  /** `write()` returned false because of buffered fds, so a `drain` is owed. */
  #owesDrain = false
  /** The idle timer `setTimeout()` started (unref'd), refreshed by every read and write. */
  #idleTimer: ReturnType<typeof setTimeout> | null = null
  /** What `setTimeout()` was last given, as `net.Socket#timeout`. */
  #timeout: number | undefined = undefined
  #bytesRead = 0
  /** Bytes handed to the native stream to send (sent, or being sent). */
  #bytesDispatched = 0
  /** Bytes of the chunks `_write`/`_writev` hold until `connect`. */
  #bytesAwaitingConnect = 0
  /** A write waits for room (its outcome is a Promise). */
  #writeWaiting = false
  /**
   * What the native stream said its waiting writes had sent, when the idle timer last
   * looked; -1 until it has looked during the current wait (see `#onIdle`).
   */
  #progressSeen = -1
  /**
   * The stream `from()` wrapped had fds in its own outbound queue, which ride on the first
   * write with the ones staged here: they count against its 253 until they are sent.
   */
  #inheritedOutbound = false
  /** The operations of the stream `from()` wrapped: destroying this socket closes them. */
  #wrappedLiveness: Liveness | undefined = undefined

  static {
    attachNative = (socket, inner, paused) => socket.#attach(inner, paused)
    // `writableNeedDrain`: `true` after a `write()` returned `false`, until `'drain'`, also
    // when it did for the fds waiting in the write buffer (see `maxQueuedFds`), not only
    // for the bytes; `false` once ending or destroyed, as Writable's. (Defined here:
    // Duplex declares it as a field to TypeScript.)
    Object.defineProperty(FdSocket.prototype, 'writableNeedDrain', {
      get(this: FdSocket): boolean {
        return bytesNeedDrain.call(this) || (this.#owesDrain && !this.destroyed && !this.writableEnded)
      },
      configurable: true,
    })
  }

  constructor(options: FdSocketOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options)
    for (const mode of ['objectMode', 'readableObjectMode', 'writableObjectMode'] as const) {
      // A socket carries bytes (and fds on them), never JS values.
      if ((options as DuplexOptions)[mode])
        throw invalidArgValue(`options.${mode}`, 'is not supported: an FdSocket carries bytes')
    }
    const {
      maxQueuedFds = DEFAULT_MAX_QUEUED_FDS,
      allowHalfOpen = false,
      fd,
      signal: _,
      timeout = 0,
      ...rest
    } = options
    const adopted = fd === undefined ? undefined : validateFdNumber(fd, 'options.fd')
    const signal = validateSignalOption(options)
    const idle = validateIdleTimeout(timeout, 'options.timeout')
    super({ ...rest, allowHalfOpen, decodeStrings: true, emitClose: true, autoDestroy: true })
    this.#maxQueuedFds = validateMaxQueuedFds(maxQueuedFds)
    if (idle > 0) {
      this.setTimeout(idle)
      // As given (`idle` is cut to what a timer holds).
      this.#timeout = timeout
    }
    // Last: every other option is checked, so a refusal leaves the fd with the caller.
    if (adopted !== undefined) this.#attach(native(() => binding.NativeAsyncUnixStream.fromFd(adopted)))
    // Not given to Duplex: a signal aborted already destroys the socket at once, which
    // must find it whole (its fields made, an adopted fd attached, to be closed).
    if (signal) addAbortSignal(signal, this)
  }

  // While there are 'fds' listeners, the fds of each chunk go to them, not to dequeue().
  // Tracked here rather than with 'newListener'/'removeListener', which a stream's emitter
  // does not always emit (nor keep, after removeAllListeners()).
  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    super.on(event, listener)
    if (event === 'fds') this.#native?.setHandingFds(true)
    return this
  }

  override addListener(event: string | symbol, listener: (...args: any[]) => void): this {
    return this.on(event, listener)
  }

  override prependListener(event: string | symbol, listener: (...args: any[]) => void): this {
    super.prependListener(event, listener)
    if (event === 'fds') this.#native?.setHandingFds(true)
    return this
  }

  override removeListener(event: string | symbol, listener: (...args: any[]) => void): this {
    super.removeListener(event, listener)
    if (event === 'fds') this.#handingChanged()
    return this
  }

  override off(event: string | symbol, listener: (...args: any[]) => void): this {
    return this.removeListener(event, listener)
  }

  override removeAllListeners(...args: [event?: string | symbol]): this {
    // Its arity matters, as for any emitter: no argument removes every listener, an
    // explicit `undefined` those of the event `undefined`.
    super.removeAllListeners(...args)
    this.#handingChanged()
    return this
  }

  /**
   * After `'fds'` listeners were removed: with none left, the fds of each chunk go to the
   * inbound queue from now on, and so do those of chunks not yet emitted (in order, behind
   * the older fds already there), which no listener will take now.
   */
  #handingChanged(): void {
    if (this.listenerCount('fds') > 0) return
    const inner = this.#native
    if (!inner) return
    inner.setHandingFds(false)
    for (const { fds, truncated } of this.#fdsAhead.splice(0)) {
      if (fds.length > 0 || truncated) native(() => inner.requeueHanded(firstFd(fds), fds.length))
    }
    this.#fdsAheadCount = 0
    // They may have been what kept reading paused.
    this.#resumeIfRoom()
  }

  /** Two connected sockets. */
  static pair(options?: FdSocketOptions): [FdSocket, FdSocket] {
    // The sockets first, so that bad options throw before any fd exists.
    const sockets: [FdSocket, FdSocket] = [new FdSocket(options), new FdSocket(options)]
    const [a, b] = native(() => binding.NativeAsyncUnixStream.pair())
    attachNative(sockets[0], a)
    attachNative(sockets[1], b)
    return sockets
  }

  /**
   * Wraps a connected {@link AsyncUnixStream}; the stream then belongs to the socket (use
   * the socket, not the stream, from here on). Reads already called on the stream are
   * served before the socket reads, in call order; fds enqueued on it ride on the
   * socket's next write (and count in `queuedOutboundFds`, and against the 253 one write
   * carries); its `maxQueuedFds` stays unless `options` set one.
   */
  static from(stream: AsyncUnixStream, options?: FdSocketOptions): FdSocket {
    const wrapped = stream instanceof AsyncUnixStream ? wrappedStreamOf(stream) : undefined
    if (!wrapped) throw invalidArgType('stream', 'an instance of AsyncUnixStream', stream)
    const { inner } = wrapped
    if (inner.fd < 0) throw closedError()
    // Two sockets on one stream would both read from it.
    if (wrappedStreams.has(inner)) throw invalidArgValue('stream', 'already belongs to an FdSocket')
    // The stream's bound stays, unless the options set one.
    const inherited = inner.maxQueuedFds
    const socket = wrapNative(inner, options)
    wrappedStreams.add(inner)
    if (options?.maxQueuedFds === undefined) socket.maxQueuedFds = inherited
    socket.#inheritedOutbound = inner.queuedOutbound > 0
    socket.#wrappedLiveness = wrapped.liveness
    return socket
  }

  /**
   * Connects to the `FdServer` or listener at `path` (or `{ path }`, as `net`'s
   * `socket.connect(options)`); `cb` runs on `connect`. A socket connects once: unlike a
   * `net.Socket`, one that was destroyed (a failed connect destroys it) throws
   * `ERR_SOCKET_CLOSED` instead of connecting again.
   */
  connect(path: string | { path: string }, cb?: () => void): this {
    if (path !== null && typeof path === 'object') path = path.path
    validatePath(path)
    validateCallback(cb)
    if (this.destroyed) throw closedError()
    if (this.#native || this.#connecting) {
      throw codedError(new Error('Socket is already connected or connecting'), 'ERR_SOCKET_CONNECTED')
    }
    if (cb) this.once('connect', cb)
    this.#connecting = true
    // A Unix socket connects at once or not at all; like net, the outcome is an event.
    let inner: Native.NativeAsyncUnixStream
    try {
      inner = native(() => binding.NativeAsyncUnixStream.connect(path))
    } catch (error) {
      // After the loop's poll too, as net's: a loop that retries a failing connect lets
      // timers and I/O run.
      setImmediate(() => {
        this.#connecting = false
        this.destroy(error as Error)
      })
      return this
    }
    // 'connect' waits for the event loop to poll once more, as net's comes from its poll:
    // with the libuv driver a server of this thread has accepted the connection by then,
    // so one that closes on 'connect' leaves it connected (closing first would reset it,
    // still in the backlog). The 'threads' driver's accepts come from its worker thread,
    // on no such schedule.
    setImmediate(() =>
      setImmediate(() => {
        if (this.destroyed) {
          inner.close()
          return
        }
        this.#connecting = false
        this.#attach(inner)
        this.emit('connect')
        this.emit('ready')
      }),
    )
    return this
  }

  /** `paused`: made by a server with `pauseOnConnect`, it reads nothing until resumed. */
  #attach(inner: Native.NativeAsyncUnixStream, paused = false): void {
    // Destroyed before it got its stream (its signal aborted already): the stream goes too.
    if (this.destroyed) {
      inner.close()
      return
    }
    this.#native = inner
    this.#handle = inner.handle
    this.#active()
    inner.maxQueuedFds = this.#maxQueuedFds
    inner.setHandingFds(this.listenerCount('fds') > 0)
    for (const { run } of this.#onConnect.splice(0)) run()
    if (this.destroyed) return
    // Like net.Socket with pauseOnCreate: paused (not flowing, nothing read) until
    // resume() or read(), so that the bytes and fds stay in the socket, e.g. to be handed
    // over with it.
    if (paused) (this as { readableFlowing: boolean | null }).readableFlowing = false
    // Like net.Socket: a connected socket reads (up to its highWaterMark) so that the
    // peer's end is noticed and 'end'/'close' follow without a consumer.
    else this.read(0)
  }

  /** `true` until connected. */
  get pending(): boolean {
    return this.#native === null
  }

  get connecting(): boolean {
    return this.#connecting
  }

  /** Bytes received so far, as `net.Socket#bytesRead`. */
  get bytesRead(): number {
    return this.#bytesRead
  }

  /**
   * Bytes written so far, as `net.Socket#bytesWritten`: those handed on to be sent and
   * those still in the write buffer.
   */
  get bytesWritten(): number {
    let bytes = this.#bytesDispatched + this.#bytesAwaitingConnect
    // Writable's own getter (untyped): the chunks not yet handed on, Buffers (decodeStrings).
    const buffered = (this as unknown as { writableBuffer?: Array<{ chunk: Buffer }> }).writableBuffer ?? []
    for (const { chunk } of buffered) bytes += chunk.length
    return bytes
  }

  /**
   * As `net.Socket#readyState`: `'opening'` while connecting, `'open'`, `'readOnly'` or
   * `'writeOnly'` with one side ended, `'closed'`.
   */
  get readyState(): 'opening' | 'open' | 'readOnly' | 'writeOnly' | 'closed' {
    if (this.#connecting) return 'opening'
    if (this.readable && this.writable) return 'open'
    if (this.readable) return 'readOnly'
    if (this.writable) return 'writeOnly'
    return 'closed'
  }

  /** As `net.Socket#destroySoon`: ends the writable side, and destroys once it finished. */
  destroySoon(): void {
    if (this.writable) this.end()
    if (this.writableFinished) this.destroy()
    else this.once('finish', () => this.destroy())
  }

  /** The socket's fd; -1 before connect and once closed. */
  get fd(): number {
    return this.#native?.fd ?? -1
  }

  /**
   * Bound of the inbound queue (reading pauses while that many fds wait for `dequeue`) and
   * of the fds buffered for writing (`write()` returns false once that many wait).
   */
  get maxQueuedFds(): number {
    return this.#maxQueuedFds
  }

  set maxQueuedFds(value: number) {
    this.#maxQueuedFds = validateMaxQueuedFds(value)
    if (this.#native) this.#native.maxQueuedFds = value
    this.#settleDrain()
    this.#resumeIfRoom()
  }

  /** Fds enqueued and not yet sent (with those a wrapped stream had queued: `from`). */
  get queuedOutboundFds(): number {
    return this.#stagedCount + this.#sendingCount + this.#inheritedCount()
  }

  /** The fds still in the wrapped stream's own outbound queue (see `#inheritedOutbound`). */
  #inheritedCount(): number {
    if (!this.#inheritedOutbound) return 0
    const inherited = this.#native?.queuedOutbound ?? 0
    if (inherited === 0) this.#inheritedOutbound = false
    return inherited
  }

  /** Received fds not yet dequeued. */
  get queuedInboundFds(): number {
    return this.#native?.queuedInbound ?? 0
  }

  enqueue(fd: FdLike): void {
    this.#stage(toFd(fd))
  }

  /**
   * Duplicates every fd of `fds` now and sends them with the first byte of `data`: as
   * `enqueue()` of each, then `write(data, cb)`, whose result it returns. All of them or
   * none: more than 253 fds for one write throw `QueueFullError`, and nothing is enqueued.
   * This and the `'fds'` event are the seam fd-capable protocol libraries (D-Bus clients)
   * expect of a transport stream.
   */
  writeWithFds(data: Uint8Array | string, fds: FdLike[], cb?: (error?: Error | null) => void): boolean {
    if (!Array.isArray(fds)) throw invalidArgType('fds', 'an array of fds', fds)
    const raw = Array.from(fds, (fd: FdLike, i) => toFd(fd, `fds[${i}]`))
    validateCallback(cb)
    const bytes = toBytes(data)
    if (raw.length > 0 && bytes.byteLength === 0) {
      throw codedError(new Error('fds need at least one byte of data to ride on'), 'ERR_FD_EMPTY_WRITE')
    }
    this.#stage(raw)
    return this.write(bytes, cb as Callback)
  }

  /**
   * Closes fds that an `'fds'` event handed over and nothing claimed: the hook a protocol
   * library calls when the connection goes with fds it never matched to a message
   * (dbus-native does). Closes every one; then throws the first error, if any (`EBADF`: one
   * was not open).
   */
  closeFds(fds: number[]): void {
    if (!Array.isArray(fds)) throw invalidArgType('fds', 'an array of fds', fds)
    let first: unknown = null
    for (let i = 0; i < fds.length; i++) {
      try {
        const fd = validateFdNumber(fds[i], `fds[${i}]`)
        try {
          binding.closeFd(fd)
        } catch (error) {
          throw shapeError(error)
        }
      } catch (error) {
        first ??= error
      }
    }
    if (first !== null) throw first
  }

  /**
   * Duplicates `raw` (one fd, or several: all of them or none) onto the next non-empty
   * chunk written.
   */
  #stage(raw: number | number[]): void {
    if (this.destroyed || this.writableEnded) throw closedError()
    const count = typeof raw === 'number' ? 1 : raw.length
    if (this.#ridingNext + this.#inheritedCount() + count > SCM_MAX_FD) {
      throw new QueueFullError(`The outbound fd queue is full: one write carries at most ${SCM_MAX_FD} fds`)
    }
    if (count === 0) return
    const chunk = this.#writeCalls
    try {
      if (typeof raw === 'number') binding.stageFd(this.#staged, raw)
      else binding.stageFds(this.#staged, raw)
    } catch (error) {
      throw shapeError(error)
    }
    this.#ridingNext += count
    this.#stagedCount += count
    const last = this.#stagedRuns.at(-1)
    if (last !== undefined && last.chunk === chunk) last.count += count
    else this.#stagedRuns.push({ chunk, count })
  }

  /**
   * The peer process's `pid`, `uid` and `gid` as the kernel recorded them when it
   * connected (`SO_PEERCRED`; `getpeereid` on the BSDs, where `pid` may be `null`).
   */
  peerCredentials(): PeerCredentials {
    if (this.destroyed) throw closedError()
    if (!this.#native) throw codedError(new Error('Socket is not connected'), 'ERR_SOCKET_NOT_CONNECTED')
    return native(() => peerCredentialsOf(this.#native!))
  }

  dequeue(): number | null {
    if (this.destroyed) throw closedError()
    if (!this.#handle) return null
    try {
      return binding.streamDequeue(this.#handle)
    } catch (error) {
      throw shapeError(error)
    }
  }

  override write(chunk: any, cb?: (error: Error | null | undefined) => void): boolean
  override write(chunk: any, encoding: BufferEncoding, cb?: (error: Error | null | undefined) => void): boolean
  override write(chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
    // The bytes this call added to the buffer (a string counts once decoded): only a
    // non-empty chunk carries the fds staged for it.
    // (It may also have gone out and completed within super.write: see #writeChunks.)
    const before = this.writableLength
    const index = this.#writeCalls
    // A view over a resizable (or growable) buffer may change length while it waits, and
    // Writable counts the length it had here: it is copied now, so that what goes out is
    // what was counted (otherwise 'finish' may never come).
    chunk = copyIfResizable(chunk) ?? chunk
    const mayBeEmpty = typeof chunk === 'string' || (ArrayBuffer.isView(chunk) && chunk.byteLength === 0)
    if (mayBeEmpty) this.#mayBeEmpty.push(index)
    let ok: boolean
    try {
      ok = super.write(chunk, encoding as BufferEncoding, cb as Callback)
    } catch (error) {
      // Refused (a chunk of the wrong type): the next call takes this index.
      if (mayBeEmpty) this.#mayBeEmpty.pop()
      throw error
    }
    if (this.writableLength > before || this.#lastNonEmpty === index) this.#ridingNext = 0
    this.#writeCalls++
    if (ok && this.#bufferedFds() >= this.#maxQueuedFds) {
      this.#owesDrain = true
      return false
    }
    return ok
  }

  /**
   * Fds that wait in the write buffer: those of chunks already written (not those waiting
   * for the next non-empty chunk, which no `drain` could release) and of a send in progress.
   */
  #bufferedFds(): number {
    return this.#stagedCount - this.#ridingNext + this.#sendingCount
  }

  override end(cb?: () => void): this
  override end(chunk: any, cb?: () => void): this
  override end(chunk: any, encoding: BufferEncoding, cb?: () => void): this
  override end(chunk?: unknown, encoding?: unknown, cb?: unknown): this {
    if (typeof chunk === 'function') return super.end(chunk as () => void)
    if (typeof encoding === 'function') [encoding, cb] = [undefined, encoding]
    if (chunk !== undefined && chunk !== null) {
      if (encoding === undefined) this.write(chunk)
      else this.write(chunk, encoding as BufferEncoding)
    }
    return super.end(cb as () => void)
  }

  /**
   * Waits for `connect` when there is no native stream yet; `fail` (a write's callback)
   * hears of a destroy that comes first. `run` learns whether it runs at once (`true`) or
   * later, on connect.
   */
  #whenConnected(run: (direct: boolean) => void, fail?: Callback): void {
    if (this.#native) run(true)
    else this.#onConnect.push({ run: () => run(false), fail })
  }

  /** Emits the `drain` that `write()` promised when buffered fds went below the bound. */
  #settleDrain(): void {
    if (this.#owesDrain && this.#bufferedFds() < this.#maxQueuedFds) {
      this.#owesDrain = false
      // Writable emits its own when the bytes were what it owed for, and none once the
      // socket is ending (end() was called: nothing more is written) or destroyed.
      if (!bytesNeedDrain.call(this) && !this.writableEnded && !this.destroyed) {
        process.nextTick(() => this.emit('drain'))
      }
    }
  }

  /** @internal */
  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: Callback): void {
    if (this.#native) this.#writeChunks([chunk], cb, true)
    else this.#writeOnConnect([chunk], cb)
  }

  /** @internal */
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: Callback): void {
    const buffers = chunks.map((c) => c.chunk)
    if (this.#native) this.#writeChunks(buffers, cb, true)
    else this.#writeOnConnect(buffers, cb)
  }

  /** Chunks written before `connect`: they go once connected, and count in `bytesWritten` meanwhile. */
  #writeOnConnect(chunks: Buffer[], cb: Callback): void {
    let length = 0
    for (const chunk of chunks) length += chunk.length
    this.#bytesAwaitingConnect += length
    this.#whenConnected(() => {
      this.#bytesAwaitingConnect -= length
      this.#writeChunks(chunks, cb, false)
    }, cb)
  }

  /**
   * Whether the chunk of call `index` may be empty; the entries up to it are used up. (A
   * queue with a head index: a batch of many string writes would take quadratic time
   * with `shift()`.)
   */
  #mayBeEmptyAt(index: number): boolean {
    const entries = this.#mayBeEmpty
    let head = this.#mayBeEmptyHead
    if (head === entries.length) return false
    while (head < entries.length && entries[head] < index) head++
    const found = entries[head] === index
    if (found) head++
    if (head === entries.length) {
      entries.length = 0
      head = 0
    } else if (head > 1024 && head * 2 > entries.length) {
      entries.splice(0, head)
      head = 0
    }
    this.#mayBeEmptyHead = head
    return found
  }

  /**
   * Writes buffered chunks in order as one native call: one `sendmsg` takes neighbours
   * together (an iovec per chunk, no copy), and a chunk that carries fds starts a
   * `sendmsg` of its own (fds ride on its first byte).
   *
   * When everything went out at once, `cb` still waits for the next tick: chunks written
   * meanwhile collect in the Writable's buffer and come to `_writev` together, so a burst
   * of small writes costs one native call, not one each. A batch of a highWaterMark or
   * more that `direct`ly followed its write() call (not one that waited for `connect`)
   * completes at once (see below).
   */
  #writeChunks(chunks: Buffer[], cb: Callback, direct: boolean): void {
    const handle = this.#handle
    if (!handle) return cb(closedError())
    this.#active()
    const parts: Buffer[] = []
    /** Pairs (offset, count): `count` staged fds ride on the byte at `offset`. */
    const cuts: number[] = []
    let length = 0
    let carried = 0
    for (const chunk of chunks) {
      const index = this.#chunksWritten++
      const mayBeEmpty = this.#mayBeEmptyAt(index)
      if (chunk.length === 0) {
        if (mayBeEmpty) continue
        // Its bytes are gone: nothing of it is sent, and what was staged goes with the
        // socket, which this error destroys (as a failed send does).
        this.#releaseStaged()
        return cb(
          codedError(new Error('A chunk was detached or resized while it waited to be written'), 'ERR_INVALID_STATE'),
        )
      }
      let count = 0
      while (this.#stagedRuns.length > 0 && this.#stagedRuns[0].chunk <= index) {
        count += this.#stagedRuns.shift()!.count
      }
      if (count > 0) cuts.push(length, count)
      this.#lastNonEmpty = index
      carried += count
      parts.push(chunk)
      length += chunk.length
    }
    this.#stagedCount -= carried
    this.#bytesDispatched += length
    if (length === 0) {
      this.#settleDrain()
      return cb()
    }
    // Not joined: native code gathers each sendmsg's slices from the chunks themselves.
    const data = parts.length === 1 ? parts[0] : parts
    let cutsArray = NO_CUTS
    if (cuts.length === 2) {
      cutsArray = ONE_CUT
      cutsArray[0] = cuts[0]
      cutsArray[1] = cuts[1]
    } else if (cuts.length > 0) cutsArray = new Float64Array(cuts)
    let now: number | null
    // The hot path: a call per write and no closure (see `answered`).
    const id = newId()
    try {
      now = binding.sendStaged(this.#staged, handle, data, cutsArray, id)
    } catch (error) {
      // The socket is destroyed by this error; what was staged goes with it.
      this.#releaseStaged()
      return cb(shapeError(error) as Error)
    }
    const written = answered(this, this.#liveness, id, now)
    if (typeof written === 'number') {
      this.#settleDrain()
      // A batch that fills the buffer completes at once, as net's writes do, so that
      // write() of a large chunk returns true instead of waiting for 'drain' each time.
      if (direct && length >= this.writableHighWaterMark) cb()
      else process.nextTick(cb)
      return
    }
    // The rest goes out once the socket has room; its fds still count as buffered.
    this.#sendingCount = carried
    this.#writeWaiting = true
    this.#progressSeen = -1
    written.then(
      () =>
        asCallback(() => {
          this.#sendingCount = 0
          this.#writeWaiting = false
          this.#active()
          this.#settleDrain()
          cb()
        }),
      (error: unknown) =>
        asCallback(() => {
          this.#sendingCount = 0
          this.#writeWaiting = false
          cb(error as Error)
        }),
    )
  }

  /** @internal */
  override _final(cb: Callback): void {
    this.#whenConnected(() => {
      const inner = this.#native
      if (!inner) return cb(closedError())
      operation(this, this.#liveness, (id) => {
        inner.shutdown('write', id)
        return null
      }).then(
        () =>
          asCallback(() => {
            this.#releaseStaged()
            cb()
          }),
        (error: Error) => asCallback(() => cb(error)),
      )
    }, cb)
  }

  /**
   * As Readable's. A consumer that asks for more than the buffer can give (a `read(n)`
   * short of `n` bytes, a character still incomplete with `setEncoding()`) while the fds
   * of unemitted chunks stop reading at `maxQueuedFds` would wait for good: those chunks
   * cannot be emitted without more data, so reading goes on past the bound, by at most
   * one more message's worth (253 fds). A peer that sends more fds than that before the
   * bytes the consumer waits for has it destroyed with `ERR_FD_QUEUE_FULL`: reading on
   * would let it fill the fd table, pausing would hang the consumer. (A consumer that
   * takes nothing on `'readable'`, waiting for more, is one too: see emit().)
   */
  override read(size?: number): any {
    if (typeof size === 'number' && size > 0 && size < this.readableLength) joinDecodedChunks(this)
    const result = super.read(size)
    if (result === null && size !== 0) this.#consumerWaits()
    return result
  }

  /** The consumer waits for bytes still to come: see read(). */
  #consumerWaits(): void {
    if (
      !this.#readingPaused ||
      !this.#native ||
      this.#fdsAheadCount < this.#maxQueuedFds ||
      this.readableLength >= this.readableHighWaterMark
    ) {
      return
    }
    if (this.#fdsAheadCount < this.#maxQueuedFds + SCM_MAX_FD) {
      this.#setReading(true)
    } else {
      this.destroy(
        new QueueFullError(
          `The peer sent ${this.#fdsAheadCount} fds with bytes still short of what the consumer waits for: ` +
            `more than maxQueuedFds (${this.#maxQueuedFds}) and one more message (${SCM_MAX_FD}) allow`,
        ),
      )
    }
  }

  /** @internal */
  override _read(): void {
    this.#whenConnected(() => {
      const inner = this.#native
      if (!inner || this.destroyed) return
      if (this.#reading) {
        // Readable asks again after every chunk: only a paused reader needs telling.
        if (this.#readingPaused && !this.#fdsBoundReached()) this.#setReading(true)
        return
      }
      this.#reading = true
      native(() =>
        inner.startReading((chunk, handed, error, truncated) => this.#onChunk(chunk, handed, error, truncated), copy),
      )
      if (!this.#referenced) native(() => inner.setReferenced(false))
    })
  }

  #onChunk(
    chunk: Buffer | number | null,
    handed: number[] | number | null,
    error: string | null,
    truncated: boolean,
  ): void {
    // What waits in the scratch area (a chunk's bytes, as their count; two or more fds'
    // numbers, as minus their count) is copied out first thing, before any other code can
    // run; a lone fd comes as its number, none or more than the area holds as an array.
    let fds: number[] | null = null
    try {
      const numbers = typeof handed === 'number' && handed < 0 ? fdsCopied(-handed) : null
      if (typeof chunk === 'number') chunk = copyOut(chunk)
      disarm()
      if (numbers !== null) fds = fdArray(numbers, -(handed as number))
      else if (typeof handed === 'number') fds = [handed]
      else fds = handed
    } catch (thrown) {
      disarm()
      // Out of memory: like a read that failed.
      return void this.destroy(thrown as Error)
    }
    this.#active()
    // Handed fds stay the native stream's until their chunk is emitted (see emit()): a
    // destroyed socket's closed them, as destroying this one now does.
    if (this.destroyed) return
    if (error !== null) {
      this.destroy(shapeError(new Error(error)) as Error)
      return
    }
    if (chunk === null) {
      // Like net's onStreamRead: read(0) lets 'end' follow even if nobody consumes.
      this.push(null)
      this.read(0)
      return
    }
    this.#bytesRead += chunk.length
    // Handed over right before the 'data' that holds the chunk's first byte (see emit()),
    // however long the chunk waits in the readable buffer.
    if (fds !== null) {
      const arrived = fds as FdsArrived
      try {
        arrived.truncated = truncated
      } catch (thrown) {
        // A throwing setter on a prototype: like a read that failed.
        return void this.destroy(thrown as Error)
      }
      this.#fdsAhead.push({ at: this.#pushedLength, fds: arrived, truncated })
      this.#fdsAheadCount += arrived.length
    }
    if (this.readableEncoding === null) {
      this.#pushedLength += chunk.length
      this.#pushChunk(chunk)
      return
    }
    // Decoded as it is pushed: what it adds is what it left in the buffer plus what went
    // out as 'data' at once.
    const buffered = this.readableLength
    const emitted = this.#emittedLength
    const unshifted = this.#unshiftedLength
    try {
      this.#pushChunk(chunk)
    } finally {
      // Less what a 'data' listener unshifted meanwhile: unshift() counted it.
      this.#pushedLength +=
        this.readableLength - buffered + (this.#emittedLength - emitted) - (this.#unshiftedLength - unshifted)
    }
  }

  /** Decodes what follows (and what the readable buffer holds) as `encoding`, as Readable does. */
  override setEncoding(encoding: BufferEncoding): this {
    super.setEncoding(encoding)
    // Readable decoded the buffer's contents into one string, whose length counts from now
    // on: the fds of every chunk in it go with its next 'data'.
    for (const entry of this.#fdsAhead) entry.at = Math.min(entry.at, this.#emittedLength)
    this.#pushedLength = this.#emittedLength + this.readableLength
    return this
  }

  /**
   * As Readable's. What goes back to the front of the readable buffer is emitted (again)
   * before every chunk still waiting there, so their fds move back by as much. With an
   * encoding set, a Buffer or other view goes back as text in that encoding (Readable would
   * keep the bytes, count them as characters, and hand them out as UTF-8 or as a Buffer).
   */
  override unshift(chunk: any, encoding?: BufferEncoding): void {
    let length = 0
    if (typeof chunk === 'string' || ArrayBuffer.isView(chunk)) {
      const decoding = this.readableEncoding
      if (decoding !== null) {
        // As Readable would store it: text in the socket's encoding.
        const from = typeof chunk === 'string' ? encoding || this.#defaultEncoding() : null
        if (from !== decoding) {
          const view = chunk as ArrayBufferView
          const bytes =
            from === null
              ? Buffer.from(view.buffer, view.byteOffset, view.byteLength)
              : Buffer.from(chunk as string, from)
          chunk = bytes.toString(decoding)
        }
        encoding = decoding
        length = (chunk as string).length
      } else {
        // Converted here, as Readable would: an unknown encoding throws before anything moved.
        if (typeof chunk === 'string') chunk = Buffer.from(chunk, encoding || this.#defaultEncoding())
        length = (chunk as ArrayBufferView).byteLength
      }
    }
    // Whether Readable takes it (it refuses it after 'end', and drops it when destroyed).
    if (length > 0 && !this.readableEnded && !this.destroyed && this.errored === null) {
      // Only chunks still waiting move: the fds of a 'data' being emitted (an unshift from
      // an 'fds' listener) stay with it.
      for (const entry of this.#fdsAhead) if (entry.at >= this.#emittedLength) entry.at += length
      this.#pushedLength += length
      this.#unshiftedLength += length
    }
    // Emitted at once when the buffer is empty and flowing: no chunk's fds go with it.
    const unshifting = this.#unshifting
    this.#unshifting = true
    try {
      super.unshift(chunk, encoding)
    } finally {
      this.#unshifting = unshifting
    }
  }

  /** The encoding Readable gives a string that comes without one. */
  #defaultEncoding(): BufferEncoding {
    return (
      (this as unknown as { _readableState?: { defaultEncoding?: BufferEncoding } })._readableState?.defaultEncoding ??
      'utf8'
    )
  }

  /**
   * @internal Emits the `'fds'` of the chunks a `'data'` event starts, right before it (and
   * of any chunk left, right before `'end'`).
   */
  override emit(event: string | symbol, ...args: any[]): boolean {
    if (event === 'end') {
      // Fds whose bytes the string decoder dropped at the end (a last odd byte in utf16le)
      // are handed over before 'end', not closed silently when the socket is destroyed.
      const { failure, lost } = this.#handFds(Infinity)
      // A listener's exception goes on after 'end' is over: thrown from this emit, it
      // would stop Readable before it ends the writable side and destroys the socket.
      if (failure)
        process.nextTick(() => {
          throw failure.error
        })
      const listened = super.emit(event, ...args)
      if (lost) this.destroy(closedError())
      return listened
    }
    // `(hadError)`, as net.Socket's: whether an error destroyed the socket.
    if (event === 'close' && args.length === 0) return super.emit(event, this.errored != null)
    if (event === 'readable') {
      // A 'readable' handler that leaves bytes in the buffer (it checks readableLength and
      // waits for a whole frame) waits for bytes still to come, as a read(n) short of n
      // does. (Emitted with no handler, on a paused socket, it is no consumer waiting.)
      const listened = super.emit(event, ...args)
      if (listened && this.readableLength > 0) this.#consumerWaits()
      return listened
    }
    if (event !== 'data') return super.emit(event, ...args)
    const data = args[0] as Buffer | string
    this.#emittedLength += data.length
    const handing = this.#unshifting ? NOTHING_HANDED : this.#handFds(this.#emittedLength)
    return this.#handed(handing, super.emit(event, ...args))
  }

  /**
   * Emits `'fds'` for the chunks that start before `end` (in emitted length). A listener
   * that throws must not cost the chunk or later fds: everything is handed over, and the
   * first exception is returned, to be thrown once the event that follows is emitted (it
   * goes to 'uncaughtException', as from any event handler). `lost`: fds the native
   * stream had closed (closed under this socket).
   */
  #handFds(end: number): Handing {
    if (this.#fdsAhead.length === 0 || this.#fdsAhead[0].at >= end) return NOTHING_HANDED
    let failure: { error: unknown } | null = null
    let lost = false
    while (this.#fdsAhead.length > 0 && this.#fdsAhead[0].at < end) {
      // Every listener removed in a way this socket did not see (EventEmitter's own
      // removeListener called on it): the fds go to the inbound queue, as with off().
      if (this.listenerCount('fds') === 0) {
        this.#handingChanged()
        break
      }
      const { fds, truncated } = this.#fdsAhead.shift()!
      this.#fdsAheadCount -= fds.length
      // The native stream held them until now. It closed them if it was closed under this
      // socket (an AsyncUnixStream given to FdSocket.from() and closed directly).
      if ((fds.length > 0 || truncated) && !binding.streamReleaseHanded(this.#handle!, firstFd(fds), fds.length)) {
        lost ||= fds.length > 0
        if (fds.length > 0) continue
      }
      try {
        // The listeners own the fds from here on (were they all removed by a listener
        // before, the fds would have nobody to close them: closed here instead).
        if (!super.emit('fds', fds)) for (const fd of fds) closeFdQuietly(fd)
      } catch (error) {
        failure ??= { error }
      }
    }
    return { failure, lost }
  }

  /**
   * What follows a `'data'` that fds were handed over before ({@link #handFds}): the fds
   * handed over may have been what kept reading paused, and Readable may not call _read()
   * again (it did while they still counted, and waits for a push since).
   */
  #handed({ failure, lost }: Handing, listened: boolean): boolean {
    if (lost) this.destroy(closedError())
    this.#resumeIfRoom()
    if (failure) throw failure.error
    return listened
  }

  #pushChunk(chunk: Buffer): void {
    // Reading pauses while the readable buffer is full, and while the fds of unread chunks
    // reach maxQueuedFds (fds handed to 'fds' listeners wait with their chunk).
    const full = !this.push(chunk)
    if (!this.#native) return
    if (full || this.#fdsBoundReached()) this.#setReading(false)
  }

  /**
   * Whether the fds of unemitted chunks stop reading: they reach `maxQueuedFds` while the
   * readable buffer has something to take. With nothing there (the bytes that carried them
   * wait in the string decoder as an incomplete character) only more data lets them out.
   */
  #fdsBoundReached(): boolean {
    return this.#fdsAheadCount >= this.#maxQueuedFds && this.readableLength > 0
  }

  /** Lets a paused reader go on once both the readable buffer and the fds bound have room. */
  #resumeIfRoom(): void {
    if (
      this.#readingPaused &&
      this.#native &&
      !this.#fdsBoundReached() &&
      this.readableLength < this.readableHighWaterMark
    ) {
      this.#setReading(true)
    }
  }

  #setReading(wanted: boolean): void {
    this.#readingPaused = !wanted
    native(() => this.#native!.setReading(wanted))
  }

  /** Closes the fds that no chunk will carry. */
  #releaseStaged(): void {
    binding.clearStaged(this.#staged)
    this.#stagedRuns.length = 0
    this.#stagedCount = 0
    this.#sendingCount = 0
    this.#ridingNext = 0
    this.#native?.clearOutbound()
  }

  /** @internal */
  override _destroy(error: Error | null, cb: Callback): void {
    // Fds of chunks that will never be emitted: the native stream holds them, and closes
    // them below.
    this.#fdsAhead.length = 0
    this.#fdsAheadCount = 0
    this.#releaseStaged()
    if (this.#wrappedLiveness) closing(this.#wrappedLiveness)
    this.#native?.close()
    // A connect still waiting for its event is over (its stream is closed when it comes).
    this.#connecting = false
    this.#stopIdleTimer()
    // Writes that waited for a connection that never came fail, as net's do.
    const waiting = this.#onConnect.splice(0)
    cb(error)
    for (const { fail } of waiting) {
      if (fail)
        process.nextTick(
          fail,
          codedError(
            new Error('Socket closed before the connection was established'),
            'ERR_SOCKET_CLOSED_BEFORE_CONNECTION',
          ),
        )
    }
  }

  /** Lets the process exit while this socket waits for data (like `net.Socket#unref`). */
  unref(): this {
    this.#referenced = false
    setReferenced(this.#liveness, false)
    if (this.#native && this.#reading) native(() => this.#native!.setReferenced(false))
    return this
  }

  /** Undoes `unref()`. */
  ref(): this {
    this.#referenced = true
    setReferenced(this.#liveness, true)
    if (this.#native && this.#reading) native(() => this.#native!.setReferenced(true))
    return this
  }

  /**
   * As `net.Socket#setTimeout`: after `ms` milliseconds without a chunk read, a write
   * started or finished, or bytes sent by a write that waits for a slow reader (see
   * `#onIdle`), the socket emits `'timeout'` (once, until the next read or write). It stays
   * open: destroy it there to end an idle connection (one a peer keeps open by sending you
   * its own end, say). `0` turns the timer off; `callback` is added as a one-time
   * `'timeout'` listener (removed again with `0`). The timer never keeps the process alive.
   */
  setTimeout(ms: number, callback?: () => void): this {
    const idle = validateIdleTimeout(ms)
    validateCallback(callback)
    if (this.destroyed) return this
    this.#timeout = ms
    this.#stopIdleTimer()
    if (idle === 0) {
      if (callback) this.removeListener('timeout', callback)
      return this
    }
    this.#progressSeen = -1
    this.#idleTimer = setTimeout(() => this.#onIdle(), idle).unref()
    if (callback) this.once('timeout', callback)
    return this
  }

  /** The timeout `setTimeout()` was given (ms), `undefined` before; as `net.Socket#timeout`. */
  get timeout(): number | undefined {
    return this.#timeout
  }

  /** As on `net.Socket`, where it is a plain property: sets the value, not the timer. */
  set timeout(value: number | undefined) {
    this.#timeout = value
  }

  /**
   * The idle timer ran out: `'timeout'`, unless a write that waits for room has sent more
   * since the timer last looked (as net's: a long write to a slow reader is activity, a
   * stuck one is not). The first time the timer runs out during a wait it starts over, as
   * net's does: a blocked writer is woken only once the reader has emptied most of the
   * socket's buffer, so its first bytes may take that long. A write stuck from the start
   * times out after twice `ms`; one that stalls, `ms` to twice `ms` after its last byte.
   */
  #onIdle(): void {
    const inner = this.#native
    if (this.#writeWaiting && inner) {
      const progress = inner.waitingWritesProgress()
      if (progress !== this.#progressSeen) {
        this.#progressSeen = progress
        this.#idleTimer?.refresh()
        return
      }
    }
    this.emit('timeout')
  }

  #stopIdleTimer(): void {
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer)
    this.#idleTimer = null
  }

  /** Activity: the idle timer starts over (again, if it fired). */
  #active(): void {
    if (this.#idleTimer !== null) this.#idleTimer.refresh()
  }

  /** A no-op, as `net.Socket#setNoDelay` on a Unix socket (there is no Nagle to turn off). */
  setNoDelay(_noDelay?: boolean): this {
    return this
  }

  /** A no-op, as `net.Socket#setKeepAlive` on a Unix socket (no TCP keep-alive). */
  setKeepAlive(_enable?: boolean, _initialDelay?: number): this {
    return this
  }
}

/**
 * Runs `fn`, which hands an outcome to Writable (and so to user callbacks and `'drain'`
 * listeners), from a Promise reaction: what it throws is an uncaught exception, as from
 * net's callbacks, not a rejection nobody handles.
 */
function asCallback(fn: () => void): void {
  try {
    fn()
  } catch (error) {
    process.nextTick(() => {
      throw error
    })
  }
}

function wrapNative(inner: Native.NativeAsyncUnixStream, options?: FdSocketOptions, paused = false): FdSocket {
  const socket = new FdSocket(options)
  attachNative(socket, inner, paused)
  return socket
}

/** Options of {@link FdServer}: those of the sockets it accepts, and who may connect. */
export interface FdServerOptions extends FdSocketOptions {
  /**
   * Accept connections only from processes running as one of these uids (checked with
   * the peer's credentials); others are closed at once and reported by a `refused` event.
   */
  allowedUids?: number[]
  /**
   * Accepted sockets start paused, as with `net.createServer({ pauseOnConnect: true })`:
   * they read nothing (bytes and fds stay in the socket, to be handed over with it) until
   * `resume()` or `read()`. Default `false`.
   */
  pauseOnConnect?: boolean
}

/**
 * A Unix socket server like `net.Server` whose connections are {@link FdSocket}s.
 *
 * Events: `listening`, `connection` (`(socket)`), `refused` (`(credentials)`, a
 * connection from a uid not in `allowedUids`, already closed), `acceptError` (`(error)`,
 * accepting failed for lack of fds or memory, `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM`: the
 * server keeps listening and retries with a backoff of up to 200 ms, leaving waiting
 * clients in the backlog; emitted once per such episode, never fatal), `error` (accepting
 * failed for good: the server closes), `close` (once closed and every connection has
 * closed). A connection accepted before `close()` is closed, never delivered after it.
 */
/** Closes an fd that nobody will own, ignoring `EBADF` and the like. */
function closeFdQuietly(fd: number): void {
  try {
    binding.closeFd(fd)
  } catch {
    // not open: nothing to do
  }
}

/** How a turn of accepting ended (`endAcceptTurn`). */
const enum AcceptVerdict {
  Drained = 0,
  More = 1,
  Exhausted = 2,
  Failed = 3,
}
/** Most connections taken in one turn before the event loop gets a say. */
const ACCEPT_BATCH = 64
/** Accept errors that only say the process (or system) is out of fds or memory for now. */
const OUT_OF_RESOURCES = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM'])

export class FdServer extends EventEmitter {
  #native: Native.NativeAsyncUnixListener | null = null
  #path: string | null = null
  #connections = new Set<FdSocket>()
  #referenced = true
  #closed = false
  /** An episode of running out of fds or memory is under way (reported once). */
  #exhausted = false
  #options: FdSocketOptions
  #allowedUids: Set<number> | null = null
  #pauseOnConnect: boolean
  #unlinkOnClose = true
  /** `options.signal`: its abort closes the server (and, given to each, its connections). */
  #signal: AbortSignal | undefined
  /** The `signal` of the options `listen()` was given: its abort closes the server. */
  #listenSignal: AbortSignal | undefined
  #onAbort = (): void => {
    if (this.#native) this.close()
  }

  constructor(options?: FdServerOptions | ((socket: FdSocket) => void), onConnection?: (socket: FdSocket) => void) {
    super()
    if (typeof options === 'function') [options, onConnection] = [{}, options]
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw invalidArgType('options', 'of type object', options)
    }
    validateCallback(onConnection, 'onConnection')
    const { allowedUids, pauseOnConnect, ...socketOptions } = options ?? {}
    // Any value, taken as a boolean, as net.Server takes it.
    this.#pauseOnConnect = Boolean(pauseOnConnect)
    if (socketOptions.fd !== undefined) {
      throw invalidArgValue('options.fd', 'is for a socket; adopt a listening fd with server.listen({ fd })')
    }
    this.#options = socketOptions
    this.#signal = validateSignalOption(socketOptions)
    // The options of the sockets to come are checked now, by making one: a bad option
    // must throw here, not when a connection arrives.
    // (Without the signal: aborted already, it would destroy this one with an 'error'
    // nobody listens for. The sockets accepted get it.)
    new FdSocket({ ...socketOptions, signal: undefined }).destroy()
    if (allowedUids !== undefined) {
      if (!Array.isArray(allowedUids)) throw invalidArgType('options.allowedUids', 'an array of uids', allowedUids)
      for (const uid of allowedUids) {
        if (typeof uid !== 'number') throw invalidArgType('options.allowedUids', 'an array of numbers', uid)
        if (!Number.isInteger(uid) || uid < 0 || uid > 2 ** 32 - 1) {
          throw outOfRange('options.allowedUids', 'integers >= 0 and < 2^32', uid)
        }
      }
      this.#allowedUids = new Set(allowedUids)
    }
    if (onConnection) this.on('connection', onConnection)
  }

  /**
   * Accepts connections; `cb` runs on `listening`, errors go to `error` (`EADDRINUSE`, …):
   * - `listen(path)` / `listen({ path })` binds `path` (`'\0name'`: an abstract address);
   * - `listen({ fd })` adopts `fd`, a listening Unix stream socket this process holds
   *   (from `listenFds()`, a predecessor, ...): the server owns it from now on, makes it
   *   close-on-exec and non-blocking, and never removes a socket file for it. Any other
   *   kind of fd throws `ERR_INVALID_FD_TYPE` (synchronously) and stays yours.
   *
   * An options object may have a `signal`: its abort closes the server (as net's).
   */
  listen(
    path: string | { path: string; signal?: AbortSignal } | { fd: number; signal?: AbortSignal },
    cb?: () => void,
  ): this {
    let bind: () => Native.NativeAsyncUnixListener
    if (typeof path === 'string') {
      validatePath(path)
      bind = () => binding.NativeAsyncUnixListener.bind(path)
    } else if (path !== null && typeof path === 'object' && 'fd' in path && path.fd !== undefined) {
      const fd = validateFdNumber(path.fd, 'options.fd')
      bind = () => binding.NativeAsyncUnixListener.fromFd(fd)
    } else if (path !== null && typeof path === 'object' && 'path' in path) {
      const where = validatePath(path.path, 'options.path')
      bind = () => binding.NativeAsyncUnixListener.bind(where)
    } else {
      throw invalidArgType('options', 'a path, { path } or { fd }', path)
    }
    const listenSignal = typeof path === 'object' ? validateSignalOption(path) : undefined
    validateCallback(cb)
    if (this.#native)
      throw codedError(new Error('Listen method has been called more than once'), 'ERR_SERVER_ALREADY_LISTEN')
    let inner: Native.NativeAsyncUnixListener
    try {
      inner = native(bind)
    } catch (error) {
      // An fd of the wrong kind is a bad argument, thrown; a failed bind is an event.
      if ((error as { code?: unknown }).code === 'ERR_INVALID_FD_TYPE') throw error
      if (cb) this.once('listening', cb)
      process.nextTick(() => this.emit('error', error))
      return this
    }
    if (cb) this.once('listening', cb)
    this.#native = inner
    this.#path = inner.path
    this.#closed = false
    // As net's listen({ signal }): aborted already, the server closes before 'listening'.
    this.#listenSignal = listenSignal
    const signals = [this.#signal, listenSignal]
    if (signals.some((signal) => signal?.aborted)) process.nextTick(this.#onAbort)
    else for (const signal of signals) signal?.addEventListener('abort', this.#onAbort, { once: true })
    if (!this.#unlinkOnClose) inner.setUnlinkOnClose(false)
    native(() => inner.startAccepting(() => this.#acceptTurn(inner)))
    if (!this.#referenced) native(() => inner.setReferenced(false))
    // Not for a server closed meanwhile (in this tick), as net's.
    process.nextTick(() => {
      if (this.#native === inner) this.emit('listening')
    })
    return this
  }

  /**
   * Connections are pending: takes them one by one, each handed to the `'connection'`
   * listeners before the next is taken (a listener that closes the server leaves the rest
   * in the backlog, for whoever holds the listener next), at most a batch per turn.
   */
  #acceptTurn(listener: Native.NativeAsyncUnixListener): void {
    let verdict = AcceptVerdict.More
    try {
      for (let taken = 0; taken < ACCEPT_BATCH; taken++) {
        if (this.#native !== listener) {
          verdict = AcceptVerdict.Drained
          return
        }
        let stream: Native.NativeAsyncUnixStream | null
        try {
          stream = native(() => listener.acceptNext())
        } catch (error) {
          verdict = this.#acceptFailed(error as Error)
          return
        }
        if (stream === null) {
          verdict = AcceptVerdict.Drained
          return
        }
        this.#exhausted = false
        this.#onConnection(listener, stream)
      }
    } finally {
      // Also when a 'connection' listener threw: the turn goes on at once (verdict More).
      listener.endAcceptTurn(verdict)
    }
  }

  /**
   * Out of fds or memory: `'acceptError'` once per episode, and accepting goes on after a
   * backoff (a peer can cause this on purpose). Anything else stops the server.
   */
  #acceptFailed(error: Error): AcceptVerdict {
    if (OUT_OF_RESOURCES.has((error as { code?: string }).code ?? '')) {
      if (!this.#exhausted) {
        this.#exhausted = true
        this.emit('acceptError', error)
      }
      return AcceptVerdict.Exhausted
    }
    this.close()
    this.emit('error', error)
    return AcceptVerdict.Failed
  }

  #onConnection(listener: Native.NativeAsyncUnixListener, stream: Native.NativeAsyncUnixStream): void {
    // Connections are accepted only while the server listens; one that a 'connection'
    // listener's close() overtook within the same turn is closed, never delivered.
    if (this.#native !== listener) {
      stream.close()
      return
    }
    if (this.#allowedUids) {
      let credentials: PeerCredentials | null = null
      try {
        credentials = native(() => peerCredentialsOf(stream))
      } catch {
        // A peer that is already gone has no credentials to allow.
      }
      if (!credentials || !this.#allowedUids.has(credentials.uid)) {
        stream.close()
        if (credentials) this.emit('refused', credentials)
        return
      }
    }
    let socket: FdSocket
    try {
      socket = wrapNative(stream, this.#options, this.#pauseOnConnect)
    } catch (error) {
      stream.close()
      this.emit('acceptError', error)
      return
    }
    this.#connections.add(socket)
    socket.once('close', () => {
      this.#connections.delete(socket)
      this.#emitCloseWhenDone()
    })
    this.emit('connection', socket)
  }

  /**
   * Stops accepting and removes the socket file; `close` is emitted once every connection
   * has closed, also when the server was not listening (as net's). `cb` runs then, with
   * `ERR_SERVER_NOT_RUNNING` if the server was not listening.
   */
  close(cb?: (error?: Error) => void): this {
    validateCallback(cb)
    if (this.#native) {
      if (cb) this.once('close', cb)
      this.#native.close()
      this.#native = null
      this.#signal?.removeEventListener('abort', this.#onAbort)
      this.#listenSignal?.removeEventListener('abort', this.#onAbort)
      this.#listenSignal = undefined
    } else if (cb) {
      this.once('close', () => cb(codedError(new Error('Server is not running.'), 'ERR_SERVER_NOT_RUNNING')))
    }
    this.#closed = true
    this.#emitCloseWhenDone()
    return this
  }

  #emitCloseWhenDone(): void {
    if (this.#closed && this.#native === null && this.#connections.size === 0) {
      this.#closed = false
      process.nextTick(() => this.emit('close'))
    }
  }

  /**
   * The socket path while listening (`'\0name'` for an abstract one), else `null` (like
   * `net.Server#address` for a pipe).
   */
  address(): string | null {
    return this.#native ? this.#path : null
  }

  /** The listening socket's fd, -1 when not listening: `enqueue(server)` hands it over. */
  get fd(): number {
    return this.#native?.fd ?? -1
  }

  /**
   * Whether `close()` removes the socket file the server created (default `true`). Pass
   * `false` before handing the server's socket to a successor, so that its path stays
   * reachable after this process closes its copy.
   */
  setUnlinkOnClose(unlink: boolean): this {
    if (typeof unlink !== 'boolean') throw invalidArgType('unlink', 'of type boolean', unlink)
    this.#unlinkOnClose = unlink
    this.#native?.setUnlinkOnClose(unlink)
    return this
  }

  /** `await using server = ...`: closes the server and waits for its `'close'`. */
  [Symbol.asyncDispose](): Promise<void> {
    if (!this.#native) return Promise.resolve()
    return new Promise((resolve) => this.close(() => resolve()))
  }

  get listening(): boolean {
    return this.#native !== null
  }

  /** Lets the process exit while the server waits for connections. */
  unref(): this {
    this.#referenced = false
    if (this.#native) native(() => this.#native!.setReferenced(false))
    return this
  }

  ref(): this {
    this.#referenced = true
    if (this.#native) native(() => this.#native!.setReferenced(true))
    return this
  }
}

/** Creates an {@link FdServer}; `onConnection` listens for `connection`. */
export function createServer(
  options?: FdServerOptions | ((socket: FdSocket) => void),
  onConnection?: (socket: FdSocket) => void,
): FdServer {
  return new FdServer(options, onConnection)
}

/** Connects a new {@link FdSocket} to `path`; `cb` runs on `connect`. */
export function connect(path: string, cb?: () => void): FdSocket
export function connect(path: string, options: FdSocketOptions, cb?: () => void): FdSocket
/** As `net.connect({ path, ...options }, cb)`. */
export function connect(options: FdSocketOptions & { path: string }, cb?: () => void): FdSocket
export function connect(
  path: string | (FdSocketOptions & { path: string }),
  options?: FdSocketOptions | (() => void),
  cb?: () => void,
): FdSocket {
  if (path !== null && typeof path === 'object') {
    if (options !== undefined && typeof options !== 'function') throw invalidArgType('cb', 'of type function', options)
    cb = options
    const { path: target, ...rest } = path
    ;[path, options] = [target, rest]
  } else if (typeof options === 'function') [options, cb] = [undefined, options]
  // Checked before the socket exists: one that an aborted signal destroys at once emits
  // its AbortError, which nobody could listen for if this threw.
  validatePath(path)
  validateCallback(cb)
  const socket = new FdSocket(options)
  // Destroyed already (`options.signal` aborted): it emits the AbortError, as net's does.
  if (socket.destroyed) return socket
  return socket.connect(path, cb)
}

holdsFd(FdSocket)
holdsFd(FdServer)
