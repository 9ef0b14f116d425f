/**
 * fd-queue: pass open file descriptors between processes over Unix domain sockets
 * (SCM_RIGHTS).
 *
 * Every stream has an **outbound queue** of fds that ride on its next write and an
 * **inbound queue** of fds that arrived with its reads; {@link EnqueueFd.enqueue} and
 * {@link DequeueFd.dequeue} are the only way fds move in and out.
 *
 * @packageDocumentation
 */
import * as dgram from 'node:dgram'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import type * as Native from './binding.js'

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
  return require('./binding.js') as typeof Native
}

const binding = loadBinding()

// ---------------------------------------------------------------------------------------
// Interfaces

/**
 * Anything that names an open fd: a non-negative integer, an object with a numeric `fd`
 * (`fs.promises.FileHandle`, an open `fs.ReadStream`/`fs.WriteStream`), or a Node handle
 * that wraps one (`net.Socket`, `net.Server`, `dgram.Socket`).
 */
export type FdLike =
  | number
  | { fd: number }
  | net.Socket
  | net.Server
  | dgram.Socket
  | fs.promises.FileHandle
  | fs.ReadStream
  | fs.WriteStream

/** A socket with an outbound fd queue. */
export interface EnqueueFd {
  /**
   * Duplicates `fd` (close-on-exec) into the outbound queue; the duplicate rides on the
   * next write. The caller keeps its own fd and may close it as soon as this returns.
   * Throws {@link QueueFullError} when 253 fds are already queued.
   */
  enqueue(fd: FdLike): void
}

/** A socket with an inbound fd queue. */
export interface DequeueFd {
  /**
   * The oldest fd received and not yet dequeued, or `null`. The caller owns it and must
   * close it (or hand it to something that will).
   */
  dequeue(): number | null
}

// ---------------------------------------------------------------------------------------
// Errors

/** An error with Node's `code` property. */
export interface CodedError extends Error {
  code: string
}

/** A system error shaped like Node's own: `code`, `errno`, `syscall` and maybe `path`. */
export interface SystemError extends CodedError {
  errno: number
  syscall: string
  path?: string
}

/**
 * Thrown by `enqueue` when the outbound queue already holds 253 fds (the most one
 * message can carry), and by a blocking `read` while the inbound queue is at
 * `maxQueuedFds`. Nothing changes when it is thrown.
 */
export class QueueFullError extends Error {
  readonly code = 'ERR_FD_QUEUE_FULL'
  constructor(message: string) {
    super(message)
    this.name = 'QueueFullError'
  }
}

function codedError<E extends Error>(error: E, code: string): E & CodedError {
  return Object.assign(error, { code })
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return `Received ${value}`
  if (typeof value === 'function') return `Received function ${value.name || '<anonymous>'}`
  if (typeof value === 'object') {
    const name = value.constructor?.name
    return name ? `Received an instance of ${name}` : 'Received an object'
  }
  let shown = String(value)
  if (typeof value === 'string') shown = `'${shown.length > 25 ? `${shown.slice(0, 25)}...` : shown}'`
  return `Received type ${typeof value} (${shown})`
}

function invalidArgType(name: string, expected: string, value: unknown): TypeError & CodedError {
  return codedError(
    new TypeError(`The "${name}" argument must be ${expected}. ${describe(value)}`),
    'ERR_INVALID_ARG_TYPE',
  )
}

function invalidArgValue(name: string, reason: string): TypeError & CodedError {
  return codedError(new TypeError(`The argument '${name}' ${reason}`), 'ERR_INVALID_ARG_VALUE')
}

function outOfRange(name: string, range: string, value: unknown): RangeError & CodedError {
  return codedError(
    new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${String(value)}`),
    'ERR_OUT_OF_RANGE',
  )
}

const SYSTEM_MESSAGE = /^(\S+) (E[A-Z0-9]+)(?: (.*))?$/s

/**
 * Gives an error from the native side its Node shape: `QueueFullError` for a full queue,
 * `errno` / `syscall` / `path` for a system error (whose message is `"<syscall> <CODE>
 * [path]"`).
 */
function shapeError(error: unknown): unknown {
  if (!(error instanceof Error)) return error
  const coded = error as NodeJS.ErrnoException
  if (coded.code === 'ERR_FD_QUEUE_FULL') return new QueueFullError(error.message)
  const errno = coded.code ? (os.constants.errno as Record<string, number>)[coded.code] : undefined
  if (errno !== undefined) {
    const parts = SYSTEM_MESSAGE.exec(error.message)
    coded.errno = -errno
    if (parts) {
      coded.syscall = parts[1]
      if (parts[3] !== undefined) coded.path = parts[3]
    }
  }
  return error
}

/** Runs a native call, reshaping what it throws. */
function native<T>(call: () => T): T {
  try {
    return call()
  } catch (error) {
    throw shapeError(error)
  }
}

// ---------------------------------------------------------------------------------------
// Argument checks

const MAX_FD = 2 ** 31 - 1

function validateFdNumber(value: unknown, name: string): number {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value)
  if (!Number.isInteger(value) || value < 0 || value > MAX_FD) {
    throw outOfRange(name, `an integer >= 0 and <= ${MAX_FD}`, value)
  }
  return value
}

/** The fd inside a Node handle, or `undefined` when the handle has none (yet). */
function handleFd(handle: { _handle?: { fd?: number } | null }): number | undefined {
  const fd = handle._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/** dgram keeps its handle behind a private symbol. */
function dgramFd(socket: dgram.Socket): number | undefined {
  for (const symbol of Object.getOwnPropertySymbols(socket)) {
    const state = (socket as unknown as Record<symbol, { handle?: { fd?: number } | null }>)[symbol]
    const fd = state?.handle?.fd
    if (typeof fd === 'number') return fd >= 0 ? fd : undefined
  }
  return undefined
}

/** Resolves an {@link FdLike} to the fd number it names, without taking ownership. */
export function toFd(value: FdLike, name = 'fd'): number {
  if (typeof value === 'number') return validateFdNumber(value, name)
  if (value instanceof net.Socket || value instanceof net.Server) {
    const fd = handleFd(value as unknown as { _handle?: { fd?: number } | null })
    if (fd === undefined) {
      throw invalidArgValue(
        name,
        `is a ${value.constructor.name} with no fd: it is not connected or listening (yet), or it is closed`,
      )
    }
    return fd
  }
  if (value instanceof dgram.Socket) {
    const fd = dgramFd(value)
    if (fd === undefined) throw invalidArgValue(name, 'is a dgram.Socket with no fd: bind it first')
    return fd
  }
  if (value !== null && typeof value === 'object' && 'fd' in value) {
    const fd = (value as { fd: unknown }).fd
    if (
      (fd === null || fd === undefined) &&
      (value instanceof fs.ReadStream || value instanceof fs.WriteStream || value.constructor?.name === 'FileHandle')
    ) {
      throw invalidArgValue(name, `is a ${value.constructor.name} with no fd: it is not open yet, or it is closed`)
    }
    if (typeof fd === 'number' && fd === -1 && value.constructor?.name === 'FileHandle') {
      throw invalidArgValue(name, 'is a closed FileHandle')
    }
    return validateFdNumber(fd, `${name}.fd`)
  }
  throw invalidArgType(
    name,
    'a non-negative integer, an object with an fd, or a Node socket, server or file handle',
    value,
  )
}

function validatePath(path: unknown, name = 'path'): string {
  if (typeof path !== 'string') throw invalidArgType(name, 'of type string', path)
  if (path.length === 0) throw invalidArgValue(name, 'must be a non-empty socket path')
  if (path.includes('\0')) throw invalidArgValue(name, 'must not contain null bytes')
  const limit = process.platform === 'linux' ? 107 : 103
  if (Buffer.byteLength(path) > limit) {
    throw invalidArgValue(
      name,
      `is ${Buffer.byteLength(path)} bytes long; a Unix socket path holds at most ${limit} bytes (sun_path). Use a shorter or relative path`,
    )
  }
  return path
}

function toBytes(data: unknown, name = 'data'): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8')
  if (data instanceof Uint8Array) return data
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  throw invalidArgType(name, 'of type string or an instance of Buffer or Uint8Array', data)
}

function validateTimeout(ms: unknown, name = 'ms'): number | null {
  if (ms === null || ms === undefined) return null
  if (typeof ms !== 'number') throw invalidArgType(name, 'of type number or null', ms)
  if (!(ms > 0 && ms <= MAX_FD)) throw outOfRange(name, `> 0 and <= ${MAX_FD}, or null for no timeout`, ms)
  return ms
}

function validateMaxQueuedFds(value: unknown): number {
  if (typeof value !== 'number') throw invalidArgType('maxQueuedFds', 'of type number', value)
  if (!Number.isInteger(value) || value < 1 || value > MAX_FD) {
    throw outOfRange('maxQueuedFds', `an integer >= 1 and <= ${MAX_FD}`, value)
  }
  return value
}

/** How a stream shuts down: `'read'`, `'write'` or `'both'`. */
export type ShutdownHow = 'read' | 'write' | 'both'

function validateHow(how: unknown): ShutdownHow {
  if (how === undefined) return 'both'
  if (how === 'read' || how === 'write' || how === 'both') return how
  if (typeof how !== 'string') throw invalidArgType('how', "one of 'read', 'write' or 'both'", how)
  throw invalidArgValue('how', `must be 'read', 'write' or 'both'. Received '${how}'`)
}

// ---------------------------------------------------------------------------------------
// Blocking classes

/** Only this module may wrap a native object. */
const WRAP = Symbol('fd-queue.wrap')

/**
 * A connected Unix stream socket whose calls block the calling thread (for scripts, CLIs
 * and worker threads). Fds enqueued ride on the next `write`; fds that arrive with a
 * `read` are dequeue-able as soon as it returns. It never reads ahead.
 */
export class UnixStream implements EnqueueFd, DequeueFd {
  #native: Native.NativeUnixStream

  /** @internal */
  constructor(token: typeof WRAP, inner: Native.NativeUnixStream) {
    if (token !== WRAP) throw new TypeError('Use UnixStream.pair(), UnixStream.connect() or UnixListener.accept()')
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
    if (token !== WRAP) throw new TypeError('Use UnixListener.bind()')
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
