/**
 * What the Promise-returning listeners share (`AsyncUnixListener`, `SeqpacketListener`):
 * `accept({ signal })`, async iteration that waits out a lack of fds, ref/unref, close and
 * dispose, on a native listener.
 */
import type { Native } from './binding.js'
import { closedError, invalidArgType } from './errors.js'
import { validateSignalOption } from './args.js'
import { closing, Liveness, operation, setReferencedOpen } from './pending.js'

/** `accept` errors that only say the process is out of fds or memory for now. */
const EXHAUSTED = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM'])
/** Longest wait of the iterator between accepts while out of fds. */
const MAX_ACCEPT_BACKOFF_MS = 200

/** A listening socket whose connections are `T`s. */
export abstract class PromiseListener<T> {
  /** @internal */
  protected readonly native: Native.NativeAsyncUnixListener
  #liveness = new Liveness()

  /** @internal */
  protected constructor(inner: Native.NativeAsyncUnixListener) {
    this.native = inner
  }

  /** @internal The connection object for an accepted native socket. */
  protected abstract wrapConnection(inner: unknown): T

  /** The listening socket's fd; -1 once closed. */
  get fd(): number {
    return this.native.fd
  }

  /** The address it listens on: a path, `'\0name'` for an abstract one, `''` if unnamed. */
  get path(): string {
    return this.native.path
  }

  /**
   * Whether `close()` removes the socket file this listener created (default `true`).
   * Pass `false` before handing the listener to a successor, so that its path stays
   * reachable after this process closes its copy.
   */
  setUnlinkOnClose(unlink: boolean): this {
    if (typeof unlink !== 'boolean') throw invalidArgType('unlink', 'of type boolean', unlink)
    if (this.native.fd === -1) throw closedError()
    this.native.setUnlinkOnClose(unlink)
    return this
  }

  /**
   * Resolves with the next connection; rejects with `ERR_SOCKET_CLOSED` if closed first,
   * with `EMFILE` (…) when the process is out of fds (the listener stays open: retry), and
   * with an `AbortError` when `signal` aborts (the connection is left for the next accept).
   */
  accept(options?: { signal?: AbortSignal }): Promise<T> {
    const signal = validateSignalOption(options)
    return operation<unknown>(
      this,
      this.#liveness,
      (id, canceller) => {
        this.native.accept(id, canceller)
        return null
      },
      signal,
    ).then((inner) => this.wrapConnection(inner))
  }

  /**
   * Yields every connection until the listener is closed. Running out of fds does not end
   * it: it waits (up to 200 ms between tries) and accepts again. Leaving the loop early
   * leaves the listener open.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    // Closed before the loop began: as accept() says. (Closed during it: the loop ends.)
    if (this.native.fd === -1) throw closedError()
    let backoff = 0
    for (;;) {
      let connection: T
      try {
        connection = await this.accept()
      } catch (error) {
        const code = (error as { code?: unknown }).code
        if (code === 'ERR_SOCKET_CLOSED') return
        if (typeof code !== 'string' || !EXHAUSTED.has(code)) throw error
        backoff = Math.min(Math.max(1, backoff * 2), MAX_ACCEPT_BACKOFF_MS)
        await new Promise((resolve) => setTimeout(resolve, backoff))
        continue
      }
      backoff = 0
      yield connection
    }
  }

  /** Lets the process exit while an `accept` is pending. */
  unref(): this {
    setReferencedOpen(this.#liveness, false, this.native.fd)
    return this
  }

  /** Undoes `unref()`. */
  ref(): this {
    setReferencedOpen(this.#liveness, true, this.native.fd)
    return this
  }

  /**
   * Stops listening (this descriptor: a process it was handed to keeps listening), removes
   * the socket file it created unless `setUnlinkOnClose(false)`, and rejects pending
   * accepts. Idempotent.
   */
  close(): void {
    closing(this.#liveness)
    this.native.close()
  }

  /** `using listener = ...`: closes the listener. */
  [Symbol.dispose](): void {
    this.close()
  }

  /** `await using listener = ...`: closes the listener. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close()
    return Promise.resolve()
  }
}
