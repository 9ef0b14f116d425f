/**
 * Message sockets: Unix `SOCK_SEQPACKET` and `SOCK_DGRAM`. They keep message boundaries,
 * so the fds of a message belong to that message alone: `send(data, fds)` is one
 * `sendmsg`, `receive()` one whole message with its fds.
 */
import { binding, peerCredentialsOf, WRAP, type Native, type PeerCredentials } from './binding.js'
import { closedError, illegalConstructor, invalidArgType, native, QueueFullError, shapeError } from './errors.js'
import {
  holdsFd,
  setMaxQueuedFds,
  toBytes,
  toFd,
  validateAddress,
  validateFdNumber,
  validatePath,
  validateSignalOption,
} from './args.js'
import type { EnqueueFd, FdLike } from './interfaces.js'
import { PromiseListener } from './listener.js'
import {
  answered,
  closing,
  connectedNow,
  copyOut,
  fdArray,
  fdsCopied,
  Liveness,
  messageHeldId,
  messageTruncated,
  mustDefer,
  newId,
  noScratch,
  operation,
  readMustDefer,
  readScratch,
  setReferencedOpen,
} from './pending.js'

/** Most fds one message carries (Linux's `SCM_MAX_FD`). */
const SCM_MAX_FD = 253

/** One received message. */
export interface Message {
  /** The message's bytes, all of them (see `truncated`). */
  data: Buffer
  /**
   * The fds that came with it, in the order they were attached; yours to close once this
   * is first read. Until then the message holds them, and closes them if it is garbage
   * collected (or its worker ends) before any code read them.
   */
  fds: number[]
  /**
   * Something of the message was lost on the way in: fds the kernel could not install
   * (`MSG_CTRUNC`: this process was at its open-file limit) or that did not fit in the
   * socket's `maxQueuedFds` (the fds that did arrive are in `fds`), or bytes past the
   * largest message this system lets an unprivileged sender make (`MSG_TRUNC`; only a
   * sender with `CAP_NET_ADMIN` can exceed it).
   */
  truncated: boolean
  /**
   * The sender's address (a datagram socket's sender that is bound): a path or `'\0name'`,
   * or its bytes in a Buffer when they are not UTF-8 (a string would name another socket);
   * `sendTo` takes either back.
   */
  from?: string | Buffer
}

/**
 * A message as the addon makes it, `[data, truncated, from?, held?]`: with fds, it holds
 * them under the id `held`, and their numbers come only when they are claimed.
 */
type Received = [data: Buffer, truncated: boolean, from?: string | Buffer, held?: number]

/** A message's fds: held by the addon under `id` until claimed into `fds`. */
interface HeldFds {
  id: number
  fds: number[] | undefined
}

/**
 * Where a message keeps its {@link HeldFds}: a non-enumerable property, so that a spread,
 * `structuredClone` and `deepStrictEqual` see only the message, while a Proxy of the
 * message or an object made from it (`Object.create`) still reaches it.
 */
const HELD = Symbol('fd-queue.heldFds')

function heldOf(message: object): HeldFds {
  const held = (message as { [HELD]?: HeldFds })[HELD]
  if (held === undefined) throw new TypeError("'fds' was read from an object that is not a received message")
  return held
}

/** The fds are the caller's: the numbers, once (later reads get the same array). */
function claim(held: HeldFds): number[] {
  if (held.fds === undefined) {
    const got = binding.releaseHeldFds(held.id, true, readScratch())
    held.fds = typeof got === 'number' ? fdArray(fdsCopied(got), got) : (got ?? [])
  }
  return held.fds
}

/** The `fds` of every message that came with fds: one accessor, so one object shape. */
const FDS: PropertyDescriptor = {
  get(this: object): number[] {
    return claim(heldOf(this))
  },
  set(this: object, fds: number[]) {
    const held = heldOf(this)
    // Replaced before any code saw them: nobody has their numbers, so they are closed.
    if (held.fds === undefined) binding.releaseHeldFds(held.id, false, noScratch)
    held.fds = fds
  },
  enumerable: true,
  configurable: true,
}

/**
 * A message collected before any code read its `fds` closes them. Registering costs more
 * than the rest of a receive, and nearly every message has its `fds` read by the code
 * awaiting it: only messages still unread once that code has run (when the next receive
 * is called or the next message comes, or an immediate later) are registered. A receive
 * that waits for room (see `maxQueuedFds`) then finds every message dropped unread
 * collectable.
 */
const unread = new FinalizationRegistry<HeldFds>((held) => {
  if (held.fds === undefined) binding.releaseHeldFds(held.id, false, noScratch)
})
const fresh: Array<[Message, HeldFds]> = []
/** An immediate will register what is fresh then. */
let registering = false

function registerUnread(): void {
  for (const [message, held] of fresh) if (held.fds === undefined) unread.register(message, held)
  fresh.length = 0
}

function registerLater(): void {
  registering = false
  registerUnread()
}

/**
 * The public message, a plain object. With fds, they become the caller's when `fds` is
 * first read (a spread, `structuredClone` or `JSON.stringify` reads it); a message whose
 * `fds` is set before any read closes them. Until then the addon holds them, and closes
 * them if the message is garbage collected, or its thread's environment ends (a worker
 * terminated before the code awaiting the message ran), before any code read them.
 */
function claimedOnRead([data, truncated, from, id]: Received): Message {
  if (id === undefined) return from === undefined ? { data, fds: [], truncated } : { data, fds: [], truncated, from }
  const message = { data } as Message
  Object.defineProperty(message, 'fds', FDS)
  message.truncated = truncated
  if (from !== undefined) message.from = from
  const held: HeldFds = { id, fds: undefined }
  Object.defineProperty(message, HELD, { value: held })
  // Unref'd: should the thread end first, the end of its environment closes the fds.
  if (fresh.length > 0) registerUnread()
  fresh.push([message, held])
  if (!registering) {
    registering = true
    setImmediate(registerLater).unref()
  }
  return message
}

/** A message received at once whose bytes (their count) are in the scratch Buffer. */
type InScratch = [data: number, truncated: boolean, from?: string | Buffer, held?: number]

/**
 * The message, its bytes copied out of the scratch Buffer into a Buffer of its own. Out of
 * memory, the receive rejects and the message's fds are closed.
 */
function copiedOut(message: InScratch): Received | Promise<never> {
  const [count, truncated, from, held] = message
  try {
    return [copyOut(count), truncated, from, held]
  } catch (error) {
    if (held !== undefined) binding.releaseHeldFds(held, false, noScratch)
    return Promise.reject(error)
  }
}

/** A receive's outcome as `receive()` resolves with it. */
function publicMessage(outcome: Received | typeof END | null): Message | null {
  return outcome === END || outcome == null ? null : claimedOnRead(outcome)
}

function validateFds(fds: unknown): number[] {
  if (fds === undefined) return []
  if (!Array.isArray(fds)) throw invalidArgType('fds', 'an array of fds', fds)
  if (fds.length > SCM_MAX_FD) {
    throw new QueueFullError(`One message carries at most ${SCM_MAX_FD} fds; got ${fds.length}`)
  }
  const raw: number[] = []
  for (let i = 0; i < fds.length; i++) raw.push(toFd(fds[i] as FdLike, `fds[${i}]`))
  return raw
}

/** What both message socket classes share. */
abstract class MessageSocket implements EnqueueFd {
  /** @internal */
  protected readonly inner: Native.NativeMessageSocket
  /** The native socket's handle for the calls made per message. */
  #handle: Native.ExternalObject<'MessageCore'>
  #liveness = new Liveness()

  /** @internal */
  protected constructor(inner: Native.NativeMessageSocket) {
    this.inner = inner
    this.#handle = inner.handle
  }

  /** The socket's fd; -1 once closed. */
  get fd(): number {
    return this.inner.fd
  }

  /** The address it is bound to (`'\0name'` for an abstract one); `''` when unbound. */
  get path(): string {
    return this.inner.path
  }

  /**
   * Bound of the received fds that wait in messages whose `fds` no code has read yet
   * (default 1024). While that many wait, a receive waits for room (messages dropped
   * unread free theirs when collected, and the collector is asked to run); if none comes
   * within about 750 ms of the JS thread running, it takes its message with the fds that
   * fit, the others closed and the message `truncated`, as when the kernel finds the fd
   * table full.
   */
  get maxQueuedFds(): number {
    return this.inner.maxQueuedFds
  }

  set maxQueuedFds(value: number) {
    setMaxQueuedFds(this.inner, value)
  }

  /** Duplicates `fd` now; the duplicate rides on the next `send` (at most 253 per message). */
  enqueue(fd: FdLike): void {
    const raw = toFd(fd)
    native(() => this.inner.enqueue(raw))
  }

  /** @internal */
  protected sendMessage(data: Uint8Array | string, fds: unknown, to: string | Uint8Array | undefined): Promise<number> {
    const bytes = toBytes(data)
    const raw = validateFds(fds)
    const liveness = this.#liveness
    // The hot path, as AsyncUnixStream#write's.
    const id = newId()
    let now: number | null
    try {
      now = binding.messageSend(this.#handle, bytes, raw, to, id, mustDefer())
    } catch (error) {
      throw shapeError(error)
    }
    return Promise.resolve(answered(this, liveness, id, now))
  }

  /**
   * Resolves with the next whole message and its fds (yours to close), in call order;
   * with `null` once a seqpacket peer has closed. Aborting `signal` rejects with an
   * `AbortError` and loses nothing: the message stays for the next `receive`.
   */
  receive(options?: { signal?: AbortSignal }): Promise<Message | null> {
    const signal = validateSignalOption(options)
    if (fresh.length > 0) registerUnread()
    const liveness = this.#liveness
    let now: Received | typeof END | Promise<Received | null> | null
    if (signal) {
      return operation<Received | typeof END | null>(
        this,
        liveness,
        (id, canceller, defer) => this.#receive(id, canceller, defer || readMustDefer(this)),
        signal,
      ).then(publicMessage)
    }
    // The hot path, as AsyncUnixStream#read's: a message there at once becomes the public
    // one now, with no Promise reaction of its own.
    const id = newId()
    try {
      now = this.#receive(id, undefined, readMustDefer(this))
    } catch (error) {
      throw shapeError(error)
    }
    const answer = answered(this, liveness, id, now)
    return answer instanceof Promise ? answer.then(publicMessage) : Promise.resolve(publicMessage(answer))
  }

  /**
   * The native receive, started as operation `id`: the message now (its bytes copied out
   * of the scratch Buffer), {@link END}, or `null` (later: settled with a message or `null`
   * for the end).
   */
  #receive(
    id: number,
    canceller: Native.ExternalObject<'Canceller'> | undefined,
    defer: boolean,
  ): Received | typeof END | Promise<Received | null> | null {
    const now = binding.messageReceive(this.#handle, id, canceller, readScratch(), defer)
    if (now === false) return END
    if (now === null) return null
    // What the scratch area holds is taken before anything else runs.
    if (typeof now === 'number') return copiedOut([now, messageTruncated(), undefined, messageHeldId()])
    return typeof now[0] === 'number' ? copiedOut(now as InScratch) : (now as Received)
  }

  /**
   * The peer process's `pid`, `uid` and `gid` (a connected socket: a seqpacket connection,
   * a pair).
   */
  peerCredentials(): PeerCredentials {
    return native(() => peerCredentialsOf(this.inner))
  }

  /** Lets the process exit while operations of this socket are pending. */
  unref(): this {
    setReferencedOpen(this.#liveness, false, this.inner.fd)
    return this
  }

  /** Undoes `unref()`. */
  ref(): this {
    setReferencedOpen(this.#liveness, true, this.inner.fd)
    return this
  }

  /**
   * Closes the socket and the fds queued for the next send, and settles pending
   * operations with `ERR_SOCKET_CLOSED` (under the `'threads'` driver, one that its worker
   * had already finished settles as done). Idempotent.
   */
  close(): void {
    closing(this.#liveness)
    this.inner.close()
  }

  /** `using socket = ...`: closes the socket. */
  [Symbol.dispose](): void {
    this.close()
  }

  /** `await using socket = ...`: closes the socket. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close()
    return Promise.resolve()
  }
}

/** The end of a seqpacket connection, when `receive` finds it at once (`null` means pending there). */
const END = Symbol('fd-queue.end')

/**
 * A connected Unix seqpacket socket: reliable, ordered messages with their fds, on a
 * connection (`pair()`, `connect()`, or `SeqpacketListener#accept()`).
 */
export class SeqpacketSocket extends MessageSocket {
  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeMessageSocket) {
    if (token !== WRAP) {
      throw illegalConstructor('Use SeqpacketSocket.pair(), connect(), fromFd() or SeqpacketListener#accept()')
    }
    super(inner)
  }

  /** Two connected seqpacket sockets (synchronous). */
  static pair(): [SeqpacketSocket, SeqpacketSocket] {
    const [a, b] = native(() => binding.NativeMessageSocket.pair(false))
    return [new SeqpacketSocket(WRAP, a), new SeqpacketSocket(WRAP, b)]
  }

  /**
   * Connects to the seqpacket listener at `path` (`'\0name'`: abstract, Linux). A Unix
   * socket connects at once or not at all (`EAGAIN`: the backlog is full), so `signal` only
   * matters when it is aborted already.
   */
  static connect(path: string, options?: { signal?: AbortSignal }): Promise<SeqpacketSocket> {
    validatePath(path)
    const signal = validateSignalOption(options)
    return connectedNow(
      signal,
      () =>
        new SeqpacketSocket(
          WRAP,
          native(() => binding.NativeMessageSocket.connectSeqpacket(path)),
        ),
    )
  }

  /**
   * Adopts `fd`, a connected Unix seqpacket socket this process holds: the socket owns it
   * from now on and makes it close-on-exec. Its `O_NONBLOCK` flag, which other holders
   * share, is left as it is. Any other kind of fd throws `ERR_INVALID_FD_TYPE` and stays
   * yours.
   */
  static fromFd(fd: number): SeqpacketSocket {
    const raw = validateFdNumber(fd, 'fd')
    return new SeqpacketSocket(
      WRAP,
      native(() => binding.NativeMessageSocket.fromFd(raw, false)),
    )
  }

  /**
   * Sends `data` as one message, with the queued fds and then `fds` (duplicated at the
   * call) attached. Resolves with the byte count. A message may be empty.
   */
  send(data: Uint8Array | string, fds?: FdLike[]): Promise<number> {
    return this.sendMessage(data, fds, undefined)
  }

  /** Yields every message until the peer closes. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Message, void, undefined> {
    for (let message = await this.receive(); message !== null; message = await this.receive()) yield message
  }
}

/**
 * A Unix datagram socket: bound to a path (`bind(path)`) or not (`bind()`), connected to
 * one peer (`connect(path)`, `pair()`) or sending to any (`sendTo`). Every datagram
 * carries its own fds.
 */
export class DatagramSocket extends MessageSocket {
  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeMessageSocket) {
    if (token !== WRAP) throw illegalConstructor('Use DatagramSocket.bind(), pair() or fromFd()')
    super(inner)
  }

  /**
   * A datagram socket bound at `path` (a socket file is created, and removed by `close()`
   * unless `setUnlinkOnClose(false)`; `'\0name'`: abstract, Linux), or unbound with no
   * `path` (it can send, and receive replies only on a pair or after `connect`).
   */
  static bind(path?: string): DatagramSocket {
    if (path !== undefined) validatePath(path)
    return new DatagramSocket(
      WRAP,
      native(() => binding.NativeMessageSocket.bindDatagram(path ?? null)),
    )
  }

  /** Two connected datagram sockets (synchronous). */
  static pair(): [DatagramSocket, DatagramSocket] {
    const [a, b] = native(() => binding.NativeMessageSocket.pair(true))
    return [new DatagramSocket(WRAP, a), new DatagramSocket(WRAP, b)]
  }

  /**
   * Adopts `fd`, a Unix datagram socket this process holds (bound or not, connected or
   * not): the socket owns it from now on and makes it close-on-exec. Its `O_NONBLOCK`
   * flag, which other holders share, is left as it is. Any other kind of fd throws
   * `ERR_INVALID_FD_TYPE` and stays yours.
   */
  static fromFd(fd: number): DatagramSocket {
    const raw = validateFdNumber(fd, 'fd')
    return new DatagramSocket(
      WRAP,
      native(() => binding.NativeMessageSocket.fromFd(raw, true)),
    )
  }

  /**
   * Sends to `path` (a string, or its bytes as a message's `from` may give them) by default
   * from now on (`connect(2)`), and receives only from there. Throws `ENOENT`,
   * `ECONNREFUSED`, ... at once.
   */
  connect(path: string | Uint8Array): this {
    const checked = validateAddress(path)
    native(() => this.inner.connect(checked))
    return this
  }

  /** Sends `data` with its fds to the connected peer (see `connect`, `pair`). */
  send(data: Uint8Array | string, fds?: FdLike[]): Promise<number> {
    return this.sendMessage(data, fds, undefined)
  }

  /**
   * Sends `data` with the queued fds and `fds` to the datagram socket at `path` (a string,
   * or the bytes of one, as a message's `from` may be). A receiver whose queue is full is
   * retried (up to 64 ms apart) until it has room.
   */
  sendTo(path: string | Uint8Array, data: Uint8Array | string, fds?: FdLike[]): Promise<number> {
    return this.sendMessage(data, fds, validateAddress(path))
  }

  /**
   * Whether `close()` removes the socket file `bind(path)` created (default `true`).
   */
  setUnlinkOnClose(unlink: boolean): this {
    if (typeof unlink !== 'boolean') throw invalidArgType('unlink', 'of type boolean', unlink)
    if (this.inner.fd === -1) throw closedError()
    this.inner.setUnlinkOnClose(unlink)
    return this
  }

  /** Yields every datagram until the socket is closed. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Message, void, undefined> {
    // Closed before the loop began: as receive() says. (Closed during it: the loop ends.)
    if (this.inner.fd === -1) throw closedError()
    for (;;) {
      let message: Message | null
      try {
        message = await this.receive()
      } catch (error) {
        if ((error as { code?: unknown }).code === 'ERR_SOCKET_CLOSED') return
        throw error
      }
      if (message === null) return
      yield message
    }
  }
}

/**
 * A listening Unix seqpacket socket with a Promise-returning `accept`, and
 * async-iterable: `for await (const connection of listener)` until it is closed.
 */
export class SeqpacketListener extends PromiseListener<SeqpacketSocket> {
  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeAsyncUnixListener) {
    if (token !== WRAP) throw illegalConstructor('Use SeqpacketListener.bind() or SeqpacketListener.fromFd()')
    super(inner)
  }

  /** Creates a socket file at `path` and listens on it; `'\0name'`: abstract (Linux). */
  static bind(path: string): SeqpacketListener {
    validatePath(path)
    return new SeqpacketListener(
      WRAP,
      native(() => binding.NativeAsyncUnixListener.bindSeqpacket(path)),
    )
  }

  /**
   * Adopts `fd`, a listening Unix seqpacket socket this process holds (from `listenFds()`,
   * a predecessor, ...); it never removes a socket file. Any other kind of fd throws
   * `ERR_INVALID_FD_TYPE` and stays yours.
   */
  static fromFd(fd: number): SeqpacketListener {
    const raw = validateFdNumber(fd, 'fd')
    return new SeqpacketListener(
      WRAP,
      native(() => binding.NativeAsyncUnixListener.fromFdSeqpacket(raw)),
    )
  }

  /** @internal */
  protected wrapConnection(inner: unknown): SeqpacketSocket {
    return new SeqpacketSocket(WRAP, inner as Native.NativeMessageSocket)
  }
}

holdsFd(SeqpacketSocket)
holdsFd(DatagramSocket)
holdsFd(SeqpacketListener)
