/**
 * fd-queue: pass open file descriptors between processes over Unix domain sockets
 * (SCM_RIGHTS).
 *
 * Every stream has an **outbound queue** of fds that ride on its next write and an
 * **inbound queue** of fds that arrived with its reads; {@link EnqueueFd.enqueue} and
 * {@link DequeueFd.dequeue} are the only way fds move in and out.
 *
 * - {@link UnixStream} / {@link UnixListener}: blocking, for scripts, CLIs and workers.
 * - {@link AsyncUnixStream} / {@link AsyncUnixListener}: Promise-returning, on tokio.
 * - {@link FdSocket} / {@link FdServer}: `stream.Duplex` and `EventEmitter` shaped like
 *   `net.Socket` / `net.Server`.
 *
 * @packageDocumentation
 */
export type { DequeueFd, EnqueueFd, FdLike, FdsArrived, ShutdownHow } from './lib/interfaces.js';
export type { PeerCredentials } from './lib/binding.js';
export { QueueFullError, type CodedError, type SystemError } from './lib/errors.js';
export { runtimeInfo, type RuntimeInfo } from './lib/runtime.js';
export { toFd } from './lib/args.js';
export { closeFd, fdInfo, toNetServer, toNetSocket, toReadStream, toWriteStream, type FdInfo, type FdKind, } from './lib/handles.js';
export { UnixListener, UnixStream } from './lib/blocking.js';
export { AsyncUnixListener, AsyncUnixStream } from './lib/async.js';
export { connect, createServer, FdServer, FdSocket, type FdServerOptions, type FdSocketOptions } from './lib/duplex.js';
export { DatagramSocket, SeqpacketListener, SeqpacketSocket, type Message } from './lib/message.js';
export { listenFds, sdNotify, type ListenFd } from './lib/systemd.js';
