/** Errors shaped like Node's: a `code` on every one, `errno`/`syscall`/`path` on system errors. */
import * as os from 'node:os'
import { binding } from './binding.js'

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
 * Thrown by `enqueue` when 253 fds (the most one message can carry) already wait for the
 * next write, and by a blocking `read` while the inbound queue is at `maxQueuedFds`.
 * Nothing changes when it is thrown.
 */
export class QueueFullError extends Error {
  readonly code = 'ERR_FD_QUEUE_FULL'
  constructor(message: string) {
    super(message)
    this.name = 'QueueFullError'
  }
}

export function codedError<E extends Error>(error: E, code: string): E & CodedError {
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

export function invalidArgType(name: string, expected: string, value: unknown): TypeError & CodedError {
  return codedError(
    new TypeError(`The "${name}" argument must be ${expected}. ${describe(value)}`),
    'ERR_INVALID_ARG_TYPE',
  )
}

export function invalidArgValue(name: string, reason: string): TypeError & CodedError {
  return codedError(new TypeError(`The argument '${name}' ${reason}`), 'ERR_INVALID_ARG_VALUE')
}

export function outOfRange(name: string, range: string, value: unknown): RangeError & CodedError {
  return codedError(
    new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${String(value)}`),
    'ERR_OUT_OF_RANGE',
  )
}

/** The classes are made by their factories (`pair`, `connect`, `bind`, `accept`), not by `new`. */
export function illegalConstructor(hint: string): TypeError & CodedError {
  return codedError(new TypeError(`Illegal constructor. ${hint}`), 'ERR_ILLEGAL_CONSTRUCTOR')
}

export function closedError(): CodedError {
  return codedError(new Error('Socket is closed'), 'ERR_SOCKET_CLOSED')
}

/**
 * The number of the errno named `code`: Node's own table first, then the platform's (Node's
 * lacks some that sockets report, such as `ETOOMANYREFS`); `undefined` for other codes.
 */
function errnoNumber(code: string): number | undefined {
  const known = (os.constants.errno as Record<string, number | undefined>)[code]
  if (known !== undefined || !/^E[A-Z0-9]+$/.test(code)) return known
  // Asked of the addon once per name (it looks through every errno).
  if (!platformErrnos.has(code)) platformErrnos.set(code, binding.errnoNumber(code) ?? undefined)
  return platformErrnos.get(code)
}
const platformErrnos = new Map<string, number | undefined>()

/** What Node's own codes look like: an errno name, `ERR_*`, or `ABORT_ERR`. */
const NODE_STYLE_CODE = /^(E[A-Z0-9]+|ERR_[A-Z0-9_]+|ABORT_ERR)$/
const TAGGED_MESSAGE = /^\[([A-Z][A-Z0-9_]*)\] (.*)$/s
const SYSTEM_MESSAGE = /^(\S+) (E[A-Z0-9]+)(?: (.*))?$/s

/**
 * Gives an error from the native side its Node shape. Async rejections carry their code
 * as `[CODE] message` (napi-rs rejects only with its own status codes); system errors have
 * Node's `"<syscall> <CODE>[ <path>]"` message, from which `errno`, `syscall` and `path`
 * are filled in; a full queue becomes a {@link QueueFullError}.
 */
export function shapeError(error: unknown): unknown {
  if (!(error instanceof Error)) return error
  const coded = error as NodeJS.ErrnoException
  const tagged = TAGGED_MESSAGE.exec(error.message)
  if (tagged) {
    coded.code = tagged[1]
    error.message = tagged[2]
  }
  if (typeof coded.code !== 'string' || !NODE_STYLE_CODE.test(coded.code)) {
    // A napi-rs status (`InvalidArg`, `StringExpected`, `GenericFailure`, ...) is not a
    // code a Node user can switch on: name it the way Node would.
    const status = String(coded.code)
    if (/Expected$|^InvalidArg$/.test(status)) {
      return codedError(new TypeError(`${error.message} (${status})`), 'ERR_INVALID_ARG_TYPE')
    }
    coded.code = 'ERR_INTERNAL'
    error.message += ` (${status})`
  }
  if (coded.code === 'ERR_FD_QUEUE_FULL') return new QueueFullError(error.message)
  // A TypeError, as Node's own and as the receiving helpers' (lib/handles.ts).
  if (coded.code === 'ERR_INVALID_FD_TYPE') return codedError(new TypeError(error.message), coded.code)
  const errno = coded.code ? errnoNumber(coded.code) : undefined
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

/** Runs a synchronous native call, reshaping what it throws. */
export function native<T>(call: () => T): T {
  try {
    return call()
  } catch (error) {
    throw shapeError(error)
  }
}
