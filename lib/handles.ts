/**
 * Turning a dequeued fd back into a Node object: what it is ({@link fdInfo}), and the
 * `net.Socket`, listening `net.Server` or fs stream that should own it. Every helper
 * checks the fd first and throws `ERR_INVALID_FD_TYPE` on a mismatch without touching
 * the fd, so the caller still owns it and nothing is closed twice.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import { binding } from './binding.js'
import { codedError, native } from './errors.js'
import { toFd } from './args.js'

/** What an fd refers to. */
export type FdKind =
  'file' | 'directory' | 'pipe' | 'unix' | 'tcp' | 'udp' | 'socket' | 'character-device' | 'block-device' | 'unknown'

/** What {@link fdInfo} reports. */
export interface FdInfo {
  fd: number
  kind: FdKind
  /** The fd was opened for reading (`O_RDONLY` or `O_RDWR`). */
  readable: boolean
  /** The fd was opened for writing (`O_WRONLY` or `O_RDWR`). */
  writable: boolean
  /** Sockets only: a listening socket, ready for `net.createServer().listen({ fd })`. */
  listening: boolean
  /** Sockets only: `'unix'`, `'ipv4'`, `'ipv6'` or `'other'`. */
  family?: string
  /** Sockets only: `'stream'`, `'dgram'`, `'seqpacket'` or `'other'`. */
  socketType?: string
}

function socketKind(family: string | null | undefined, type: string | null | undefined): FdKind {
  if (family === 'unix') return 'unix'
  if (family === 'ipv4' || family === 'ipv6') {
    if (type === 'stream') return 'tcp'
    if (type === 'dgram') return 'udp'
  }
  return 'socket'
}

/** Reports what `fd` is (`fstat` plus socket queries). Throws `EBADF` if it is not open. */
export function fdInfo(fd: number): FdInfo {
  const raw = toFd(fd)
  const stat = fs.fstatSync(raw)
  const info = native(() => binding.fdInfo(raw))
  let kind: FdKind = 'unknown'
  if (stat.isFile()) kind = 'file'
  else if (stat.isDirectory()) kind = 'directory'
  else if (stat.isFIFO()) kind = 'pipe'
  else if (stat.isSocket()) kind = socketKind(info.family, info.socketType)
  else if (stat.isCharacterDevice()) kind = 'character-device'
  else if (stat.isBlockDevice()) kind = 'block-device'
  const result: FdInfo = {
    fd: raw,
    kind,
    readable: info.access !== 'w',
    writable: info.access !== 'r',
    listening: info.listening ?? false,
  }
  if (info.family != null) result.family = info.family
  if (info.socketType != null) result.socketType = info.socketType
  return result
}

function wrongType(info: FdInfo, wanted: string): Error {
  const what = info.listening ? `listening ${info.kind} socket` : info.kind
  return codedError(
    new TypeError(`fd ${info.fd} is a ${what}, not ${wanted}; it was left open and is still yours to close`),
    'ERR_INVALID_FD_TYPE',
  )
}

/**
 * A `net.Socket` that owns `fd`, a connected Unix or TCP stream socket or a pipe (whose
 * direction is taken from its access mode). Destroying the socket closes the fd.
 */
export function toNetSocket(fd: number, options: Omit<net.SocketConstructorOpts, 'fd'> = {}): net.Socket {
  const info = fdInfo(fd)
  const stream = (info.kind === 'unix' || info.kind === 'tcp') && info.socketType === 'stream'
  if (!(stream && !info.listening) && info.kind !== 'pipe') {
    throw wrongType(info, 'a connected stream socket or a pipe')
  }
  return new net.Socket({ readable: info.readable, writable: info.writable, ...options, fd: info.fd })
}

/**
 * A `net.Server` listening on `fd`, a listening Unix or TCP socket (for example one a
 * previous process handed over). Resolves once it listens; closing the server closes the fd.
 */
export function toNetServer(fd: number, options: net.ServerOpts = {}): Promise<net.Server> {
  toFd(fd) // bad arguments throw; only what the fd turns out to be rejects
  let info: FdInfo
  try {
    info = fdInfo(fd)
  } catch (error) {
    return Promise.reject(error)
  }
  if (!info.listening || info.socketType !== 'stream') {
    return Promise.reject(wrongType(info, 'a listening stream socket'))
  }
  const server = net.createServer(options)
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ fd: info.fd }, () => {
      server.off('error', reject)
      resolve(server)
    })
  })
}

/** An `fs.ReadStream` that owns `fd`, a file or pipe open for reading. Closing it closes the fd. */
export function toReadStream(fd: number, options: { start?: number; end?: number; highWaterMark?: number } = {}) {
  const info = fdInfo(fd)
  if (!(info.kind === 'file' || info.kind === 'pipe' || info.kind === 'character-device') || !info.readable) {
    throw wrongType(info, 'a file or pipe open for reading')
  }
  return fs.createReadStream('', { ...options, fd: info.fd, autoClose: true })
}

/** An `fs.WriteStream` that owns `fd`, a file or pipe open for writing. Closing it closes the fd. */
export function toWriteStream(fd: number, options: { start?: number } = {}) {
  const info = fdInfo(fd)
  if (!(info.kind === 'file' || info.kind === 'pipe' || info.kind === 'character-device') || !info.writable) {
    throw wrongType(info, 'a file or pipe open for writing')
  }
  return fs.createWriteStream('', { ...options, fd: info.fd, autoClose: true })
}
