/**
 * Helpers for the async and stream specs (async.spec.ts, duplex.spec.ts, lifetime.spec.ts):
 * timeouts around every wait, chunk-exact reading from an AsyncUnixStream, and temp files
 * with distinct content whose fds can be checked by reading through them.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { once as eventsOnce, type EventEmitter } from 'node:events'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type { Readable } from 'node:stream'
import { AsyncUnixStream, FdSocket, type DequeueFd } from '../index.js'
import { ROOT, scaled, settledOpenFds, tmpDir } from './helpers.js'

/**
 * Never synchronisation that a result depends on: to wait for something, wait for its
 * event. Only a short wait before checking that something did NOT happen (a read stays
 * paused, no 'close' yet), which on a slow machine can miss a bug but cannot fail a good
 * build, or a chance for something to get going (a read to be pending) where the test
 * passes either way.
 */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * `promise`, or a rejection naming `what` once `budgetMs` (scaled by FDQ_TIME_SCALE) passed,
 * so no test can hang. Only a hang guard: never use it to decide that something did not happen.
 */
export function withTimeout<T>(promise: Promise<T>, budgetMs: number, what: string): Promise<T> {
  const ms = scaled(budgetMs)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Watches a promise: `state.settled` turns true once it resolved or rejected. */
export interface Tracked<T> {
  promise: Promise<T>
  settled: boolean
  value?: T
  error?: unknown
}

export function track<T>(promise: Promise<T>): Tracked<T> {
  const tracked: Tracked<T> = { promise, settled: false }
  promise.then(
    (value) => {
      tracked.settled = true
      tracked.value = value
    },
    (error: unknown) => {
      tracked.settled = true
      tracked.error = error
    },
  )
  return tracked
}

/** What a promise settles to, with a handler attached at once (no unhandled rejection). */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: any }

export function outcome<T>(promise: Promise<T>): Promise<Outcome<T>> {
  return promise.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  )
}

/** The error a promise rejects with (fails if it resolves or takes longer than `ms`). */
export async function rejection(promise: Promise<unknown>, ms = 5000, what = 'rejection'): Promise<any> {
  const outcome = await withTimeout(
    promise.then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    ),
    ms,
    what,
  )
  if (outcome.ok) throw new Error(`expected a rejection (${what}), but it resolved with ${String(outcome.value)}`)
  return outcome.error
}

/**
 * The error `call` throws synchronously. If it returns a Promise instead, that Promise's
 * rejection is swallowed and this fails: bad arguments must throw, not reject.
 */
export function syncThrow(call: () => unknown): any {
  let result: unknown
  try {
    result = call()
  } catch (error) {
    return error
  }
  if (result instanceof Promise) result.catch(() => {})
  throw new Error(`expected a synchronous throw, got ${result instanceof Promise ? 'a Promise' : String(result)}`)
}

/** `events.once` with a timeout, rejecting on 'error' as events.once does. */
export function onceEvent(emitter: EventEmitter, event: string, ms = 10_000): Promise<any[]> {
  return withTimeout(eventsOnce(emitter, event), ms, `event '${event}'`)
}

/** Dequeues until null. */
export function dequeueAll(stream: DequeueFd): number[] {
  const fds: number[] = []
  for (let fd = stream.dequeue(); fd !== null; fd = stream.dequeue()) fds.push(fd)
  return fds
}

/** Reads exactly `n` bytes (several reads of at most what is still missing). */
export async function readExactly(stream: AsyncUnixStream, n: number, ms = 10_000): Promise<Buffer> {
  const parts: Buffer[] = []
  let got = 0
  while (got < n) {
    const part = await withTimeout(stream.read(n - got), ms, `read of ${n - got} bytes`)
    if (part.length === 0) throw new Error(`end of stream after ${got} of ${n} bytes`)
    parts.push(part)
    got += part.length
  }
  return Buffer.concat(parts)
}

/**
 * The next `n` bytes of a Readable's 'data' events, however many chunks they come in; fails
 * if the stream ends or errors first. It leaves the stream flowing.
 */
export function receiveExactly(stream: Readable, n: number, ms = 10_000): Promise<Buffer> {
  const parts: Buffer[] = []
  let got = 0
  let stop = () => {}
  const all = new Promise<Buffer>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      parts.push(chunk)
      got += chunk.length
      if (got >= n) resolve(Buffer.concat(parts))
    }
    const onEnd = () => reject(new Error(`end of stream after ${got} of ${n} bytes`))
    stream.on('data', onData)
    stream.on('end', onEnd)
    stream.on('error', reject)
    stop = () => {
      stream.off('data', onData)
      stream.off('end', onEnd)
      stream.off('error', reject)
    }
  })
  return withTimeout(all, ms, `${n} bytes`).finally(() => stop())
}

/** Reads until the empty Buffer of end of stream; the fds that arrived are dequeued as they come. */
export async function readToEnd(
  stream: AsyncUnixStream,
  ms = 10_000,
): Promise<{ data: Buffer; fds: number[]; reads: number }> {
  const parts: Buffer[] = []
  const fds: number[] = []
  let reads = 0
  for (;;) {
    const part = await withTimeout(stream.read(), ms, 'read to end')
    reads++
    fds.push(...dequeueAll(stream))
    if (part.length === 0) return { data: Buffer.concat(parts), fds, reads }
    parts.push(part)
  }
}

/** `n` temp files in one fresh directory, file i holding `${prefix}${i}`. */
export interface FileSet {
  dir: string
  files: string[]
  contents: string[]
  /** Opens file i read-only. */
  open(i: number): number
  remove(): void
}

export function fileSet(n: number, prefix = 'file-'): FileSet {
  const dir = tmpDir('fdq-set-')
  const files: string[] = []
  const contents: string[] = []
  for (let i = 0; i < n; i++) {
    const file = path.join(dir, `f${i}`)
    const content = `${prefix}${i}`
    fs.writeFileSync(file, content)
    files.push(file)
    contents.push(content)
  }
  return {
    dir,
    files,
    contents,
    open: (i) => fs.openSync(files[i], 'r'),
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  }
}

/** Opens `file` read-only, enqueues it on `stream` and closes this process's own copy at once. */
export function enqueueFile(stream: { enqueue(fd: number): void }, file: string): void {
  const fd = fs.openSync(file, 'r')
  try {
    stream.enqueue(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Error code of an unknown thrown value. */
export function codeOf(error: unknown): unknown {
  return (error as { code?: unknown } | null)?.code
}

/**
 * The fd count to compare against at the end of a spec file, taken after one FdSocket
 * pair has exchanged a chunk and closed: the first async use starts the tokio runtime,
 * whose epoll and wake fds stay open for the life of the process.
 */
export async function warmedUpFdBaseline(): Promise<number> {
  const [a, b] = FdSocket.pair()
  a.write('warm')
  await onceEvent(b, 'data')
  a.destroy()
  b.destroy()
  await Promise.all([onceEvent(a, 'close'), onceEvent(b, 'close')].map((p) => p.catch(() => {})))
  return settledOpenFds()
}

/**
 * The check every spec file makes: the open fds are counted before its first test
 * (`measure`: warmed up unless the file never starts the async runtime) and must settle
 * back to that count once its last test is over.
 */
export function checkNoFdLeaked(measure: () => Promise<number> = warmedUpFdBaseline): void {
  let baseline = 0
  test.before(async () => {
    baseline = await measure()
  })
  test.after.always('no fd of this file leaked', async (t) => {
    t.is(await settledOpenFds(baseline), baseline)
  })
}

/**
 * The JSON lines a child process prints on stdout (its stdout and stderr piped):
 * `line(match, what)` resolves with the first one, from the start, that `match` accepts,
 * and rejects (with everything it printed) once the child has exited without printing it.
 * No deadline: the test's timeout is the net.
 */
export function jsonLines(child: ChildProcess) {
  const lines: any[] = []
  let stderr = ''
  let buffered = ''
  const wakers = new Set<() => void>()
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    const complete = buffered.split('\n')
    buffered = complete.pop()!
    for (const l of complete) if (l.trim()) lines.push(JSON.parse(l))
    for (const wake of wakers) wake()
  })
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
  return {
    exited,
    stderr: () => stderr,
    async line(match: (line: any) => boolean, what = 'the line'): Promise<any> {
      for (;;) {
        const found = lines.find(match)
        if (found) return found
        let wake = (): void => {}
        const woken = new Promise<undefined>((resolve) => (wake = () => resolve(undefined)))
        wakers.add(wake)
        const code = await Promise.race([woken, exited])
        wakers.delete(wake)
        if (code !== undefined)
          throw new Error(`the child exited (${code}) before ${what}: ${JSON.stringify(lines)} ${stderr}`)
      }
    },
  }
}

/**
 * Sockets Node cannot make (unconnected, bound, datagram, TCP, blocking pairs: see
 * fixtures/odd-sockets.py), received from a Python helper: name -> fd, ours. What the
 * test still holds at its end is closed then: delete what it hands over from the map.
 */
export async function oddSockets(t: ExecutionContext): Promise<Map<string, number>> {
  const [mine, theirs] = AsyncUnixStream.pair()
  const child = spawn('python3', [path.join(ROOT, '__test__', 'fixtures', 'odd-sockets.py')], {
    stdio: ['ignore', 'ignore', 'pipe', theirs.fd],
  })
  theirs.close()
  let text = ''
  while (!text.endsWith('\n')) text += (await withTimeout(mine.read(), 30_000, 'the odd sockets')).toString()
  const names = text.trim().split(',')
  const sockets = new Map<string, number>()
  for (const name of names) sockets.set(name, mine.dequeue()!)
  mine.close()
  await new Promise((resolve) => child.on('close', resolve))
  t.teardown(() => {
    for (const fd of sockets.values()) {
      try {
        fs.closeSync(fd)
      } catch {
        // Closed by the test already.
      }
    }
  })
  return sockets
}
