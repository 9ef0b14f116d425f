/** Argument checks with Node-style errors, thrown before anything reaches the native side. */
import * as dgram from 'node:dgram'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { types } from 'node:util'
import { closedError, invalidArgType, invalidArgValue, outOfRange } from './errors.js'
import type { FdLike, ShutdownHow } from './interfaces.js'

const MAX_FD = 2 ** 31 - 1
/** Largest async `read(size)`. */
const MAX_READ_SIZE = 2 ** 30

export function validateFdNumber(value: unknown, name: string): number {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value)
  if (!Number.isInteger(value) || value < 0 || value > MAX_FD) {
    throw outOfRange(name, `an integer >= 0 and <= ${MAX_FD}`, value)
  }
  return value
}

/** The fd inside a `net` handle, or `undefined` when the handle has none (yet). */
function handleFd(handle: object): number | undefined {
  const fd = (handle as { _handle?: { fd?: unknown } | null })._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/** dgram keeps its handle in a symbol-keyed state object. */
function dgramFd(socket: dgram.Socket): number | undefined {
  for (const symbol of Object.getOwnPropertySymbols(socket)) {
    const state = (socket as unknown as Record<symbol, { handle?: { fd?: unknown } | null } | undefined>)[symbol]
    const fd = state?.handle?.fd
    if (typeof fd === 'number') return fd >= 0 ? fd : undefined
  }
  return undefined
}

function isFileHandle(value: object): boolean {
  return value.constructor?.name === 'FileHandle'
}

/** Marks this package's classes, whose `fd` is -1 once closed (or before it is connected). */
const FD_HOLDER: unique symbol = Symbol('fd-queue.fdHolder')

/** Declares that instances of `holder` have an `fd` that is -1 while they hold none. */
export function holdsFd(holder: { prototype: object }): void {
  Object.defineProperty(holder.prototype, FD_HOLDER, { value: true })
}

/** Resolves an {@link FdLike} to the fd number it names, without taking ownership. */
export function toFd(value: FdLike, name = 'fd'): number {
  if (typeof value === 'number') return validateFdNumber(value, name)
  if (value instanceof net.Socket || value instanceof net.Server) {
    const fd = handleFd(value)
    // A Unix net.Socket has its fd while it still connects (a TCP one has none yet).
    if (fd === undefined || (value instanceof net.Socket && value.connecting)) {
      const kind = value instanceof net.Server ? 'net.Server that is not listening' : 'net.Socket that is not connected'
      throw invalidArgValue(name, `is a ${kind} (yet), or is closed: it has no fd`)
    }
    return fd
  }
  if (value instanceof dgram.Socket) {
    const fd = dgramFd(value)
    if (fd === undefined)
      throw invalidArgValue(name, 'is a dgram.Socket that is not bound (yet), or is closed: it has no fd')
    return fd
  }
  if (value !== null && typeof value === 'object' && 'fd' in value) {
    const fd = (value as { fd: unknown }).fd
    const handle = value instanceof fs.ReadStream || value instanceof fs.WriteStream || isFileHandle(value)
    if (handle && (fd === null || fd === undefined || fd === -1)) {
      throw invalidArgValue(name, `is a ${value.constructor.name} that is not open (yet), or is closed: it has no fd`)
    }
    if ((value as { [FD_HOLDER]?: boolean })[FD_HOLDER] === true && fd === -1) {
      throw invalidArgValue(
        name,
        `is a ${value.constructor.name} that is closed (or not connected or listening yet): it has no fd`,
      )
    }
    return validateFdNumber(fd, `${name}.fd`)
  }
  throw invalidArgType(
    name,
    'a non-negative integer, an object with an fd, or a Node socket, server or file handle',
    value,
  )
}

/**
 * A socket address: a path, or (Linux) `'\0name'` for the name `name` in the abstract
 * namespace, as in Node's `net` (no file is created or removed for it).
 */
export function validatePath(path: unknown, name = 'path'): string {
  if (typeof path !== 'string') throw invalidArgType(name, 'of type string', path)
  checkAddress(name, Buffer.byteLength(path), path.startsWith('\0'), path.indexOf('\0', 1) >= 0)
  return path
}

/**
 * A socket address given as a string or as its bytes (a datagram's `from` that is not
 * UTF-8, handed back to reply): checked as {@link validatePath} checks a string.
 */
export function validateAddress(path: unknown, name = 'path'): string | Uint8Array {
  if (typeof path === 'string') return validatePath(path, name)
  // A Uint8Array of any realm; an object that only has its prototype is refused.
  if (!types.isUint8Array(path)) throw invalidArgType(name, 'of type string or Uint8Array', path)
  checkAddress(name, path.length, path[0] === 0, path.indexOf(0, 1) >= 0)
  return path
}

/** The rules for a socket path or `'\0name'` of `length` bytes. */
function checkAddress(name: string, length: number, isAbstract: boolean, innerNul: boolean): void {
  if (length === 0) throw invalidArgValue(name, 'must be a non-empty socket path')
  if (isAbstract) {
    if (process.platform !== 'linux' && process.platform !== 'android') {
      throw invalidArgValue(
        name,
        `is an abstract socket address ('\\0name'), which ${process.platform} does not have; use a path`,
      )
    }
    // The whole of sun_path (108 bytes) holds the NUL and the name.
    if (length > 108) {
      throw invalidArgValue(
        name,
        `is ${length} bytes long; an abstract address holds at most 108 (the NUL and 107 of name)`,
      )
    }
    return
  }
  if (innerNul) throw invalidArgValue(name, 'must not contain null bytes (except a leading one: an abstract address)')
  // sun_path is 108 bytes on Linux and 104 on the BSDs and macOS, with room for a NUL.
  const limit = process.platform === 'linux' ? 107 : 103
  if (length > limit) {
    throw invalidArgValue(
      name,
      `is ${length} bytes long; a Unix socket path holds at most ${limit} bytes (sun_path). Use a shorter or relative path`,
    )
  }
}

/** The `signal` of an options object (`{ signal?: AbortSignal }`), or `undefined`. */
export function validateSignalOption(options: unknown, name = 'options'): AbortSignal | undefined {
  if (options === undefined) return undefined
  if (options === null || typeof options !== 'object') throw invalidArgType(name, 'of type object', options)
  const { signal } = options as { signal?: unknown }
  if (signal === undefined) return undefined
  if (!(signal instanceof AbortSignal)) throw invalidArgType(`${name}.signal`, 'an instance of AbortSignal', signal)
  return signal
}

/**
 * The bytes of a string (UTF-8) or of any typed array or DataView, from this realm or
 * another (a `vm` context, say: `instanceof` would refuse those).
 */
export function toBytes(data: unknown, name = 'data'): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8')
  if (types.isUint8Array(data)) return data
  if (types.isArrayBufferView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  throw invalidArgType(name, 'of type string or an instance of Buffer or Uint8Array', data)
}

/** A Uint8Array (Buffer included) from any realm, to read into. */
export function validateReadBuffer(buf: unknown, name = 'buf'): Uint8Array {
  if (!types.isUint8Array(buf)) throw invalidArgType(name, 'an instance of Buffer or Uint8Array', buf)
  return buf
}

/**
 * The `timeout` of an options object (`{ timeout?: number }`): milliseconds, or
 * `undefined` for none.
 */
export function validateTimeoutOption(options: unknown, name = 'options'): number | undefined {
  if (options === undefined) return undefined
  if (options === null || typeof options !== 'object') throw invalidArgType(name, 'of type object', options)
  const { timeout } = options as { timeout?: unknown }
  if (timeout === undefined) return undefined
  if (typeof timeout !== 'number') throw invalidArgType(`${name}.timeout`, 'of type number', timeout)
  if (!(timeout > 0 && timeout <= MAX_FD)) throw outOfRange(`${name}.timeout`, `> 0 and <= ${MAX_FD}`, timeout)
  return timeout
}

export function validateTimeout(ms: unknown, name = 'ms'): number | null {
  if (ms === null || ms === undefined) return null
  if (typeof ms !== 'number') throw invalidArgType(name, 'of type number or null', ms)
  if (!(ms > 0 && ms <= MAX_FD)) throw outOfRange(name, `> 0 and <= ${MAX_FD}, or null for no timeout`, ms)
  return ms
}

export function validateMaxQueuedFds(value: unknown): number {
  if (typeof value !== 'number') throw invalidArgType('maxQueuedFds', 'of type number', value)
  if (!Number.isInteger(value) || value < 1 || value > MAX_FD) {
    throw outOfRange('maxQueuedFds', `an integer >= 1 and <= ${MAX_FD}`, value)
  }
  return value
}

/** Sets `maxQueuedFds` of an open native socket (the setter of every class that has one). */
export function setMaxQueuedFds(inner: { readonly fd: number; maxQueuedFds: number }, value: unknown): void {
  const limit = validateMaxQueuedFds(value)
  if (inner.fd === -1) throw closedError()
  inner.maxQueuedFds = limit
}

export function validateReadSize(size: unknown): number {
  if (size === undefined) return 65536
  if (typeof size !== 'number') throw invalidArgType('size', 'of type number', size)
  if (!Number.isInteger(size) || size < 1 || size > MAX_READ_SIZE) {
    throw outOfRange('size', `an integer >= 1 and <= ${MAX_READ_SIZE}`, size)
  }
  return size
}

export function validateHow(how: unknown): ShutdownHow {
  if (how === undefined) return 'both'
  if (how === 'read' || how === 'write' || how === 'both') return how
  if (typeof how !== 'string') throw invalidArgType('how', "one of 'read', 'write' or 'both'", how)
  throw invalidArgValue('how', `must be 'read', 'write' or 'both'. Received '${how}'`)
}

/** The longest timer Node keeps (2^31 - 1 ms); longer ones are cut to it, as `net` does. */
const TIMEOUT_MAX = 2 ** 31 - 1

/** An idle timeout in ms, checked as `net.Socket#setTimeout` checks it (0: none). */
export function validateIdleTimeout(ms: unknown, name = 'msecs'): number {
  if (typeof ms !== 'number') throw invalidArgType(name, 'of type number', ms)
  if (!(ms >= 0) || !Number.isFinite(ms)) throw outOfRange(name, 'a non-negative finite number', ms)
  if (ms > TIMEOUT_MAX) {
    process.emitWarning(
      `${ms} does not fit into a 32-bit signed integer.\nTimer duration was truncated to ${TIMEOUT_MAX}.`,
      'TimeoutOverflowWarning',
    )
    return TIMEOUT_MAX
  }
  return ms
}

export function validateCallback(cb: unknown, name = 'callback'): void {
  if (cb !== undefined && typeof cb !== 'function') throw invalidArgType(name, 'of type function', cb)
}
