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
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type * as Native from './binding.js';
/**
 * Anything that names an open fd: a non-negative integer, an object with a numeric `fd`
 * (`fs.promises.FileHandle`, an open `fs.ReadStream`/`fs.WriteStream`), or a Node handle
 * that wraps one (`net.Socket`, `net.Server`, `dgram.Socket`).
 */
export type FdLike = number | {
    fd: number;
} | net.Socket | net.Server | dgram.Socket | fs.promises.FileHandle | fs.ReadStream | fs.WriteStream;
/** A socket with an outbound fd queue. */
export interface EnqueueFd {
    /**
     * Duplicates `fd` (close-on-exec) into the outbound queue; the duplicate rides on the
     * next write. The caller keeps its own fd and may close it as soon as this returns.
     * Throws {@link QueueFullError} when 253 fds are already queued.
     */
    enqueue(fd: FdLike): void;
}
/** A socket with an inbound fd queue. */
export interface DequeueFd {
    /**
     * The oldest fd received and not yet dequeued, or `null`. The caller owns it and must
     * close it (or hand it to something that will).
     */
    dequeue(): number | null;
}
/** An error with Node's `code` property. */
export interface CodedError extends Error {
    code: string;
}
/** A system error shaped like Node's own: `code`, `errno`, `syscall` and maybe `path`. */
export interface SystemError extends CodedError {
    errno: number;
    syscall: string;
    path?: string;
}
/**
 * Thrown by `enqueue` when the outbound queue already holds 253 fds (the most one
 * message can carry), and by a blocking `read` while the inbound queue is at
 * `maxQueuedFds`. Nothing changes when it is thrown.
 */
export declare class QueueFullError extends Error {
    readonly code = "ERR_FD_QUEUE_FULL";
    constructor(message: string);
}
/** Resolves an {@link FdLike} to the fd number it names, without taking ownership. */
export declare function toFd(value: FdLike, name?: string): number;
/** How a stream shuts down: `'read'`, `'write'` or `'both'`. */
export type ShutdownHow = 'read' | 'write' | 'both';
/** Only this module may wrap a native object. */
declare const WRAP: unique symbol;
/**
 * A connected Unix stream socket whose calls block the calling thread (for scripts, CLIs
 * and worker threads). Fds enqueued ride on the next `write`; fds that arrive with a
 * `read` are dequeue-able as soon as it returns. It never reads ahead.
 */
export declare class UnixStream implements EnqueueFd, DequeueFd {
    #private;
    /** @internal */
    constructor(token: typeof WRAP, inner: Native.NativeUnixStream);
    /** Two connected streams. */
    static pair(): [UnixStream, UnixStream];
    /** Connects to the listener at `path`. Throws `ENOENT`, `ECONNREFUSED`, ... */
    static connect(path: string): UnixStream;
    /** The socket's fd; -1 once closed. */
    get fd(): number;
    /**
     * Bound of the inbound queue (default 1024). While that many fds wait for `dequeue`,
     * `read` throws {@link QueueFullError} without reading.
     */
    get maxQueuedFds(): number;
    set maxQueuedFds(value: number);
    enqueue(fd: FdLike): void;
    dequeue(): number | null;
    /**
     * Reads once into `buf` (one `recvmsg`). Returns the bytes read, `0` at end of stream.
     * Fds that came with these bytes are dequeue-able when it returns.
     */
    read(buf: Uint8Array): number;
    /**
     * Writes once (one `sendmsg`) with every queued fd attached. Returns the bytes written,
     * at least 1 unless `data` is empty; writing nothing while fds are queued throws
     * `ERR_FD_EMPTY_WRITE`.
     */
    write(data: Uint8Array | string): number;
    /** Nothing is buffered in user space; throws only when the stream is closed. */
    flush(): void;
    /** Shuts down one or both directions (default `'both'`). */
    shutdown(how?: ShutdownHow): void;
    /** Read timeout in ms, `null` for none. A timed-out `read` throws `ETIMEDOUT` and loses nothing. */
    setReadTimeout(ms: number | null): void;
    /** Write timeout in ms, `null` for none. A timed-out `write` throws `ETIMEDOUT`; queued fds stay queued. */
    setWriteTimeout(ms: number | null): void;
    /** Closes the socket, every queued outbound fd and every fd not dequeued. Idempotent. */
    close(): void;
}
/** A listening Unix socket bound to a path; `accept` blocks the calling thread. */
export declare class UnixListener {
    #private;
    /** @internal */
    constructor(token: typeof WRAP, inner: Native.NativeUnixListener);
    /** Creates a socket file at `path` and listens on it. Throws `EADDRINUSE` if it exists. */
    static bind(path: string): UnixListener;
    /** The listening socket's fd; -1 once closed. */
    get fd(): number;
    /** The path it was bound to. */
    get path(): string;
    /** Waits for the next connection. */
    accept(): UnixStream;
    /** Stops listening and removes the socket file it created. Idempotent. */
    close(): void;
}
export {};
