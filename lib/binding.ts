/** Loads the native addon, or explains why this platform cannot have one. */
import type * as Native from '../binding.js'

/** Platforms whose kernels pass fds with SCM_RIGHTS and for which binaries are built. */
const SUPPORTED_PLATFORMS = ['linux', 'darwin', 'freebsd']

type External<T extends string> = Native.ExternalObject<T>

/**
 * The calls made once per message or per fd, which src/fast.rs registers by hand (without
 * napi-rs's generated glue, which costs more than the call): their types.
 */
export interface FastCalls {
  streamEnqueue(stream: External<'StreamCore'>, fd: number): void
  streamDequeue(stream: External<'StreamCore'>): number | null
  /**
   * The fds handed over with a chunk (`count` of them, the first `first`), which the
   * stream held until now, are the caller's; `false` if the stream closed them.
   */
  streamReleaseHanded(stream: External<'StreamCore'>, first: number, count: number): boolean
  /**
   * The bytes now (their count when they fit in `scratch`, which received them), or
   * `null`: operation `id` settles later.
   */
  streamRead(
    stream: External<'StreamCore'>,
    size: number,
    id: number,
    canceller: External<'Canceller'> | undefined | null,
    scratch: Buffer,
    defer?: boolean,
  ): number | Buffer | null
  /** The byte count now, or `null`: operation `id` settles later. */
  streamWrite(stream: External<'StreamCore'>, data: Uint8Array, id: number, defer?: boolean): number | null
  /** Duplicates `fd` (close-on-exec) behind the fds already staged. */
  stageFd(staged: External<'StagedFds'>, fd: number): void
  /**
   * Writes `data` (a batch of Buffers is sent as it is, never joined) after every earlier
   * write; `cuts` holds pairs (offset, count): the next `count` staged fds ride on the byte
   * at `offset` of the batch. The byte count now, or `null`.
   */
  sendStaged(
    staged: External<'StagedFds'>,
    stream: External<'StreamCore'>,
    data: Uint8Array | Uint8Array[],
    cuts: Float64Array,
    id: number,
  ): number | null
  /**
   * The next message now (`[data, truncated, from?, held?]`, `data` the count of its bytes
   * when they are in `scratch`; or, for a message of at most 4096 bytes in `scratch` with no
   * sender's address, only that count, with its held id and truncated flag as doubles after
   * 4096 bytes of `scratch`), `false` for the end of a seqpacket connection, or `null`:
   * operation `id` settles later (always, with `defer`), with `data` a Buffer.
   */
  messageReceive(
    socket: External<'MessageCore'>,
    id: number,
    canceller: External<'Canceller'> | undefined | null,
    scratch: Buffer,
    defer?: boolean,
  ): [data: Buffer | number, truncated: boolean, from?: string | Buffer, held?: number] | number | false | null
  /**
   * Sends `data` as one message with the queued fds and then `fds` (duplicated now), to
   * `to` when given: the byte count now, or `null` and operation `id` settles later (always,
   * with `defer`).
   */
  messageSend(
    socket: External<'MessageCore'>,
    data: Uint8Array,
    fds: number[],
    to: string | Uint8Array | undefined | null,
    id: number,
    defer?: boolean,
  ): number | null
  /**
   * The numbers of the fds held under `id`, which are the caller's from now on (`keep`):
   * their count when they are in `scratch` (int32s from its byte 4096), else an array; or
   * nothing, the fds closed. `null` for an id not held (released already, or never given).
   */
  releaseHeldFds(id: number, keep: boolean, scratch: Buffer): number | number[] | null
}

function loadBinding(): typeof Native & FastCalls {
  if (!SUPPORTED_PLATFORMS.includes(process.platform)) {
    const error = new Error(
      `fd-queue: passing file descriptors needs a Unix system with SCM_RIGHTS; ` +
        `${process.platform}/${process.arch} is not supported. Supported: ` +
        `linux (x64, arm64; glibc and musl), darwin (x64, arm64), freebsd (x64).`,
    ) as NodeJS.ErrnoException
    error.code = 'ERR_FD_QUEUE_UNSUPPORTED_PLATFORM'
    throw error
  }
  return require('../binding.js') as typeof Native & FastCalls
}

export const binding = loadBinding()

/**
 * How this JS thread runs the async work: on the thread itself, driven by its event loop
 * (`'libuv'`), or on a tokio worker thread (`'threads'`, the fallback: where the host has no
 * libuv, as in Bun, on systems other than Linux, or when `FD_QUEUE_DRIVER=threads`).
 */
export const runtime = binding.initRuntime(
  process.env.FD_QUEUE_DRIVER === 'threads' || 'bun' in process.versions ? 'threads' : 'auto',
)
export type { Native }

/** Who is on the other end of a Unix socket, as the kernel recorded it at connect time. */
export interface PeerCredentials {
  /** The peer's process id; `null` where the OS does not report it (FreeBSD). */
  pid: number | null
  uid: number
  gid: number
}

/** The credentials of the peer of a native stream, in their public shape. */
export function peerCredentialsOf(inner: { peerCredentials(): Native.PeerCredentials }): PeerCredentials {
  const { pid, uid, gid } = inner.peerCredentials()
  return { pid: pid ?? null, uid, gid }
}

/** Only this package may wrap a native object in a public class. */
export const WRAP: unique symbol = Symbol('fd-queue.wrap')
