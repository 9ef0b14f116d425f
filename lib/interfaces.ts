/** The two trait-like interfaces every stream class implements, and what `enqueue` takes. */
import type * as dgram from 'node:dgram'
import type * as fs from 'node:fs'
import type * as net from 'node:net'

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
   * Throws {@link QueueFullError} when 253 fds already wait for that write.
   */
  enqueue(fd: FdLike): void
}

/** A socket with an inbound fd queue. */
export interface DequeueFd {
  /**
   * The oldest fd received and not yet dequeued, or `null`. The caller owns it and must
   * close it (or hand it to something that will). Throws `ERR_FD_TRUNCATED` once where
   * the kernel dropped fds of a message.
   */
  dequeue(): number | null
}

/**
 * The fds an `FdSocket`'s `'fds'` event hands its listeners: those that arrived with the
 * chunk whose `'data'` follows, in order, now owned by the listeners. `truncated` is true
 * when the kernel dropped fds of that chunk (this process was at its open-file limit).
 */
export type FdsArrived = number[] & { truncated: boolean }

/** Which direction `shutdown` closes. */
export type ShutdownHow = 'read' | 'write' | 'both'
