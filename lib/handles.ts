/**
 * Turning a dequeued fd back into a Node object: what it is ({@link fdInfo}), and the
 * `net.Socket`, listening `net.Server` or stream that should own it; or closing it
 * ({@link closeFd}). Every helper checks the fd first and throws `ERR_INVALID_FD_TYPE` on
 * a mismatch without touching the fd, so the caller still owns it and nothing is closed
 * twice.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import type { Readable, Writable } from 'node:stream'
import * as tty from 'node:tty'
import { binding } from './binding.js'
import { codedError, native } from './errors.js'
import { toFd, validateFdNumber } from './args.js'

/**
 * What an fd refers to. `'path'` is an `O_PATH` fd (Linux, FreeBSD): it names a file
 * without opening it, so it can be neither read nor written.
 */
export type FdKind =
  | 'file'
  | 'directory'
  | 'pipe'
  | 'unix'
  | 'tcp'
  | 'udp'
  | 'socket'
  | 'character-device'
  | 'block-device'
  | 'path'
  | 'unknown'

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
  /**
   * Sockets only: it has a peer now (`getpeername`). A Unix socket keeps its peer once
   * that closes; a TCP socket has none before it connects, nor once its connection is
   * over; a listening socket has none.
   */
  connected: boolean
  /**
   * `FD_CLOEXEC` is set: a program this process `exec`s does not inherit the fd. Every fd
   * fd-queue hands over (received, dequeued, adopted) has it.
   */
  closeOnExec: boolean
  /**
   * `O_NONBLOCK` is set: reads and writes answer `EAGAIN` instead of waiting. It belongs to
   * the open file, so every duplicate of the fd (in any process) shares it.
   */
  nonBlocking: boolean
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
  if (info.pathOnly) kind = 'path'
  else if (stat.isFile()) kind = 'file'
  else if (stat.isDirectory()) kind = 'directory'
  else if (stat.isFIFO()) kind = 'pipe'
  else if (stat.isSocket()) kind = socketKind(info.family, info.socketType)
  else if (stat.isCharacterDevice()) kind = 'character-device'
  else if (stat.isBlockDevice()) kind = 'block-device'
  const result: FdInfo = {
    fd: raw,
    kind,
    readable: !info.pathOnly && info.access !== 'w',
    writable: !info.pathOnly && info.access !== 'r',
    listening: info.listening ?? false,
    connected: info.connected ?? false,
    closeOnExec: info.closeOnExec,
    nonBlocking: info.nonBlocking,
  }
  if (info.family != null) result.family = info.family
  if (info.socketType != null) result.socketType = info.socketType
  return result
}

/**
 * A stream socket libuv can read and write on the event loop: a connected Unix one, or a
 * TCP one that does not listen. (A TCP socket has no peer once its connection is over, yet
 * still gives the bytes left and the end; one that never connected fails its first read
 * or write with `ENOTCONN` or `EPIPE`, which cannot be told apart without reading it.)
 */
function isConnectedStream(info: FdInfo): boolean {
  if (info.socketType !== 'stream' || info.listening) return false
  return info.kind === 'tcp' || (info.kind === 'unix' && info.connected)
}

function wrongType(fd: number, wanted: string): Error {
  return codedError(
    new TypeError(`fd ${fd} is ${binding.describeFd(fd)}, not ${wanted}; it was left open and is still yours to close`),
    'ERR_INVALID_FD_TYPE',
  )
}

/**
 * A `net.Socket` that owns `fd`: a connected Unix stream socket, a TCP stream socket that
 * does not listen, or a pipe (whose direction is taken from its access mode). Destroying
 * the socket closes the fd.
 */
export function toNetSocket(fd: number, options: Omit<net.SocketConstructorOpts, 'fd'> = {}): net.Socket {
  const info = fdInfo(fd)
  if (!isConnectedStream(info) && info.kind !== 'pipe') {
    throw wrongType(info.fd, 'a connected stream socket or a pipe')
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
    return Promise.reject(wrongType(info.fd, 'a listening stream socket'))
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

/**
 * A readable stream that owns `fd`, which must be open for reading:
 * - a pipe or a connected stream socket: a `net.Socket` (read on the event loop: a pipe
 *   that stays idle holds no thread, unlike an `fs.ReadStream`, whose every pending read
 *   ties up one of libuv's four threadpool threads and with them every `fs` call);
 * - a terminal: a `tty.ReadStream`;
 * - a file or another character device: an `fs.ReadStream` (`start`/`end` apply to files).
 * Destroying the stream closes the fd.
 */
export function toReadStream(
  fd: number,
  options: { start?: number; end?: number; highWaterMark?: number } = {},
): Readable {
  const info = fdInfo(fd)
  if (info.readable && (info.kind === 'pipe' || isConnectedStream(info))) {
    // net.Socket hands its options to stream.Duplex, which takes the high-water mark.
    const socketOptions = { fd: info.fd, readable: true, writable: false, readableHighWaterMark: options.highWaterMark }
    return new net.Socket(socketOptions as net.SocketConstructorOpts)
  }
  if (info.readable && info.kind === 'character-device' && tty.isatty(info.fd)) return new tty.ReadStream(info.fd)
  if (!(info.kind === 'file' || info.kind === 'character-device') || !info.readable) {
    throw wrongType(info.fd, 'a file, pipe or stream socket open for reading')
  }
  return fs.createReadStream('', { ...options, fd: info.fd, autoClose: true })
}

/**
 * A writable stream that owns `fd`, which must be open for writing: a `net.Socket` for a
 * pipe or a connected stream socket (written on the event loop, no threadpool thread
 * blocks on a full pipe), a `tty.WriteStream` for a terminal, an `fs.WriteStream` for a
 * file or another character device. Destroying the stream closes the fd.
 */
export function toWriteStream(fd: number, options: { start?: number } = {}): Writable {
  const info = fdInfo(fd)
  if (info.writable && (info.kind === 'pipe' || isConnectedStream(info))) {
    return new net.Socket({ fd: info.fd, readable: false, writable: true })
  }
  if (info.writable && info.kind === 'character-device' && tty.isatty(info.fd)) return new tty.WriteStream(info.fd)
  if (!(info.kind === 'file' || info.kind === 'character-device') || !info.writable) {
    throw wrongType(info.fd, 'a file, pipe or stream socket open for writing')
  }
  return fs.createWriteStream('', { ...options, fd: info.fd, autoClose: true })
}

/**
 * Closes an fd this process owns (one `dequeue()` handed over, say). Throws `EBADF` if it
 * is not open. Use it instead of `fs.closeSync` in worker threads: Node warns there
 * ("closed but not opened in unmanaged mode") about every fd the worker did not open
 * through `fs` itself.
 */
export function closeFd(fd: number): void {
  const raw = validateFdNumber(fd, 'fd')
  native(() => binding.closeFd(raw))
}
