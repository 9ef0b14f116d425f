/**
 * Cancelling and lifetime of the async classes (SPEC §3): `{ signal }` on connect, read
 * and accept loses nothing; `ref()`/`unref()`; `Symbol.dispose` / `Symbol.asyncDispose`;
 * async iteration of a listener.
 */
import test from 'ava'
import * as fs from 'node:fs'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect,
  createServer,
  FdSocket,
  SeqpacketSocket,
  UnixListener,
  UnixStream,
} from '../index.js'
import { fdIdentity, pathIdentity, settledOpenFds, startFixture, tmpFile, tmpSocketPath } from './helpers.js'
import { checkNoFdLeaked, onceEvent, outcome, readExactly, rejection, syncThrow, withTimeout } from './async-helpers.js'

checkNoFdLeaked()

function assertAbortError(t: { is: Function; true: Function }, error: any, reason?: unknown): void {
  t.is(error?.name, 'AbortError')
  t.is(error?.code, 'ABORT_ERR')
  t.true(error instanceof Error)
  if (reason !== undefined) t.is(error.cause, reason)
}

test('read({ signal }): an abort before data rejects with AbortError, and the next read gets the bytes and the fds', async (t) => {
  const [a, b] = AsyncUnixStream.pair()
  const controller = new AbortController()
  const reason = new Error('gave up')
  const aborted = outcome(b.read(64, { signal: controller.signal }))
  controller.abort(reason)
  const settled = await withTimeout(aborted, 10_000, 'the aborted read settles')
  t.false(settled.ok)
  assertAbortError(t, settled.ok ? undefined : settled.error, reason)
  // Nothing was consumed: the message that comes now goes to the next read, fd and all.
  const file = tmpFile('after the abort')
  const fd = fs.openSync(file, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  await a.write('after')
  t.is((await readExactly(b, 5)).toString(), 'after')
  const received = b.dequeue()
  t.not(received, null)
  t.is(fdIdentity(received!), pathIdentity(file))
  fs.closeSync(received!)
  a.close()
  b.close()
})

test('read({ signal }) with an already-aborted signal rejects at once and reads nothing', async (t) => {
  const [a, b] = AsyncUnixStream.pair()
  await a.write('waiting')
  const error = await b.read(64, { signal: AbortSignal.abort('stop') }).catch((e: unknown) => e)
  assertAbortError(t, error, 'stop')
  t.is((await readExactly(b, 7)).toString(), 'waiting')
  a.close()
  b.close()
})

test('the timeout pattern with signal: a read that timed out never eats the next message; reads behind it keep their order', async (t) => {
  const [a, b] = AsyncUnixStream.pair()
  const timedOut = outcome(b.read(64, { signal: AbortSignal.timeout(10) }))
  const second = b.read(64)
  const settled = await withTimeout(timedOut, 10_000, 'the timed-out read')
  t.false(settled.ok)
  t.is(settled.ok ? undefined : settled.error.name, 'AbortError')
  await a.write('first message')
  t.is((await withTimeout(second, 10_000, 'the read behind it')).toString(), 'first message')
  a.close()
  b.close()
})

test('accept({ signal }): an aborted accept leaves the connection for the next accept', async (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  const controller = new AbortController()
  const aborted = outcome(listener.accept({ signal: controller.signal }))
  controller.abort()
  const settled = await withTimeout(aborted, 10_000, 'the aborted accept')
  t.false(settled.ok)
  assertAbortError(t, settled.ok ? undefined : settled.error)
  const client = UnixStream.connect(sock)
  client.write('for the next accept')
  const server = await withTimeout(listener.accept(), 10_000, 'the next accept')
  t.is((await readExactly(server, 19)).toString(), 'for the next accept')
  const late = await listener.accept({ signal: AbortSignal.abort() }).catch((e: unknown) => e)
  assertAbortError(t, late)
  client.close()
  server.close()
  listener.close()
})

/** A read, an accept and a receive pending with `signal`; `close` closes their objects. */
function threeWaiting(signal: AbortSignal): { settled: Promise<unknown[]>; close(): void; end(): void } {
  const [a, b] = AsyncUnixStream.pair()
  const listener = AsyncUnixListener.bind(tmpSocketPath())
  const [c, d] = SeqpacketSocket.pair()
  const pending = [b.read(10, { signal }), listener.accept({ signal }), d.receive({ signal })]
  return {
    settled: Promise.all(pending.map((p) => rejection(p as Promise<unknown>, 10_000))),
    close() {
      b.close()
      listener.close()
      d.close()
    },
    end() {
      a.close()
      c.close()
    },
  }
}

test('an abort and then close() in the same tick: read(), accept() and receive() reject with the AbortError', async (t) => {
  const reason = new Error('given up')
  const controller = new AbortController()
  const waiting = threeWaiting(controller.signal)
  controller.abort(reason)
  // Settles the three at once, before their cancellation has run.
  waiting.close()
  for (const error of await waiting.settled) assertAbortError(t, error, reason)
  waiting.end()
})

test('close() and then an abort in the same tick: read(), accept() and receive() reject with ERR_SOCKET_CLOSED', async (t) => {
  const controller = new AbortController()
  const waiting = threeWaiting(controller.signal)
  // The close decides how they end; the abort after it comes too late to change that.
  waiting.close()
  controller.abort(new Error('too late'))
  for (const error of await waiting.settled) t.is((error as { code?: unknown })?.code, 'ERR_SOCKET_CLOSED')
  waiting.end()
})

test('a read pending on a stream FdSocket.from() took, the socket destroyed and then an abort: ERR_SOCKET_CLOSED, as a close()', async (t) => {
  const [a, b] = AsyncUnixStream.pair()
  const controller = new AbortController()
  const pending = rejection(b.read(10, { signal: controller.signal }), 10_000)
  const socket = FdSocket.from(b)
  socket.destroy()
  controller.abort()
  t.is(((await pending) as { code?: unknown })?.code, 'ERR_SOCKET_CLOSED')
  t.is(b.fd, -1)
  a.close()
})

test("a close() that an 'abort' listener makes comes after the abort: AbortError, whichever listener runs first", async (t) => {
  for (const closeFirst of [true, false]) {
    const controller = new AbortController()
    const { signal } = controller
    // The usual shutdown hook: one signal for the operations and for closing.
    let close = (): void => {}
    const hook = () => close()
    if (closeFirst) signal.addEventListener('abort', hook)
    const waiting = threeWaiting(signal)
    close = waiting.close
    if (!closeFirst) signal.addEventListener('abort', hook)
    const reason = new Error(`shut down (close listener ${closeFirst ? 'first' : 'last'})`)
    controller.abort(reason)
    for (const error of await waiting.settled) assertAbortError(t, error, reason)
    waiting.end()
  }
})

test('connect(path, { signal }) with an aborted signal rejects and connects nothing', async (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  const error = await AsyncUnixStream.connect(sock, { signal: AbortSignal.abort() }).catch((e: unknown) => e)
  assertAbortError(t, error)
  // Nothing waits in the backlog: a real client's connection is the first one accepted.
  const client = await AsyncUnixStream.connect(sock, { signal: new AbortController().signal })
  await client.write('real')
  const server = await listener.accept()
  t.is((await readExactly(server, 4)).toString(), 'real')
  client.close()
  server.close()
  listener.close()
})

test.serial(
  "FdSocket with a signal aborted already (new, pair(), from(), connect(), { fd }): an AbortError, then 'close', and no fd left open",
  async (t) => {
    const before = await settledOpenFds()
    // An fd of our own to adopt: a duplicate of a connected socket, received through another.
    const [x, y] = UnixStream.pair()
    const [a, b] = UnixStream.pair()
    a.enqueue(x.fd)
    a.write('x')
    b.read(Buffer.alloc(1))
    const raw = b.dequeue()!
    for (const stream of [x, y, a, b]) stream.close()
    const [wrapped, peer] = AsyncUnixStream.pair()
    const reason = new Error('aborted before')
    const signal = AbortSignal.abort(reason)
    const sockets: Array<[string, FdSocket]> = [
      ['new', new FdSocket({ signal })],
      ...FdSocket.pair({ signal }).map((socket, i): [string, FdSocket] => [`pair()[${i}]`, socket]),
      ['from()', FdSocket.from(wrapped, { signal })],
      ['connect()', connect(tmpSocketPath(), { signal })],
      ['{ fd }', new FdSocket({ fd: raw, signal })],
    ]
    // Listened for at once: the errors come on the next tick.
    const outcomes = sockets.map(([name, socket]) => ({
      name,
      error: new Promise((resolve) => socket.once('error', resolve)),
      closed: new Promise((resolve) => socket.once('close', resolve)),
    }))
    for (const { name, error, closed } of outcomes) {
      assertAbortError(t, await withTimeout(error, 10_000, `${name}: 'error'`), reason)
      await withTimeout(closed, 10_000, `${name}: 'close'`)
    }
    t.is(wrapped.fd, -1, 'the stream given to from() is closed')
    // A bad path or callback throws before any socket exists (one that could emit an
    // 'error' nobody listens for); a server's probe of its options emits none either.
    t.throws(() => connect(123 as never, { signal }), { code: 'ERR_INVALID_ARG_TYPE' })
    t.throws(() => connect(tmpSocketPath(), { signal }, 'cb' as never), { code: 'ERR_INVALID_ARG_TYPE' })
    createServer({ signal })
    t.throws(() => fs.fstatSync(raw), { code: 'EBADF' }, 'the adopted fd is closed')
    peer.close()
    t.is(await settledOpenFds(before), before)
  },
)

test('a bad signal throws ERR_INVALID_ARG_TYPE synchronously', (t) => {
  const [a, b] = AsyncUnixStream.pair()
  const listener = AsyncUnixListener.bind(tmpSocketPath())
  for (const options of [{ signal: {} }, { signal: 'x' }, null, 7]) {
    t.is(syncThrow(() => a.read(1, options as never)).code, 'ERR_INVALID_ARG_TYPE')
    t.is(syncThrow(() => listener.accept(options as never)).code, 'ERR_INVALID_ARG_TYPE')
  }
  t.is(syncThrow(() => AsyncUnixStream.connect('/x', { signal: 1 } as never)).code, 'ERR_INVALID_ARG_TYPE')
  a.close()
  b.close()
  listener.close()
})

// ---------------------------------------------------------------------------------------
// ref() / unref()
// ---------------------------------------------------------------------------------------

/**
 * A child with an operation pending: whether it exited by itself within `ms` of saying so
 * (its start-up, however slow, does not count).
 */
async function exits(args: string[], ms: number): Promise<{ exited: boolean; code: number | null; stderr: string }> {
  const child = startFixture('unref', args, { timeoutMs: 600_000, nodeArgs: ['--expose-gc'] })
  await child.waitForLine(/^pending$/, 300_000)
  const timer = new Promise<'alive'>((resolve) => setTimeout(() => resolve('alive'), ms))
  const first = await Promise.race([child.done, timer])
  if (first === 'alive') {
    child.child.kill('SIGKILL')
    const result = await child.done
    return { exited: false, code: result.code, stderr: result.stderr }
  }
  return { exited: true, code: first.code, stderr: first.stderr }
}

for (const scenario of ['read', 'accept', 'write'] as const) {
  test(`an unref()'d object with a pending ${scenario} lets the process exit; ref'd, it keeps it alive`, async (t) => {
    const args = (mode: string) => [scenario, mode, tmpSocketPath()]
    // Exiting: a generous budget (the child only has to start); staying alive: a short one,
    // which a slow machine cannot make fail (a process kept alive stays alive).
    const unrefd = await exits(args('unref'), 60_000)
    t.true(unrefd.exited, unrefd.stderr)
    t.is(unrefd.code, 0, unrefd.stderr)
    const refd = await exits(args('ref'), 1_500)
    t.false(refd.exited, `with the object ref'd the process exited: ${refd.stderr}`)
  })
}

test('a read that settles with nothing started after it lets the process exit; a read started in its continuation keeps it alive', async (t) => {
  const idle = await exits(['settled', 'idle'], 60_000)
  t.true(idle.exited, idle.stderr)
  t.is(idle.code, 0, idle.stderr)
  // The continuation starts a read of an unref'd stream: only that one is pending.
  const unrefd = await exits(['settled', 'unref-reading'], 60_000)
  t.true(unrefd.exited, unrefd.stderr)
  t.is(unrefd.code, 0, unrefd.stderr)
  const reading = await exits(['settled', 'reading'], 1_500)
  t.false(reading.exited, `with a read pending the process exited: ${reading.stderr}`)
  // Reads that found their bytes there leave the read registration in place (under
  // 'libuv'), and bytes then come with no read pending: nothing is pending.
  const kept = await exits(['settled', 'kept'], 60_000)
  t.true(kept.exited, kept.stderr)
  t.is(kept.code, 0, kept.stderr)
})

test('unref() then ref() again keeps the process alive', async (t) => {
  const result = await exits(['reref'], 1_500)
  t.false(result.exited, result.stderr)
})

// ---------------------------------------------------------------------------------------
// Dispose and async iteration
// ---------------------------------------------------------------------------------------

test('Symbol.dispose closes the blocking classes; Symbol.asyncDispose the async classes, FdSocket and FdServer', async (t) => {
  const [u1, u2] = UnixStream.pair()
  const listener = UnixListener.bind(tmpSocketPath())
  u1[Symbol.dispose]()
  listener[Symbol.dispose]()
  t.is(u1.fd, -1)
  t.is(listener.fd, -1)
  u2.close()
  const [a1, a2] = AsyncUnixStream.pair()
  const asyncListener = AsyncUnixListener.bind(tmpSocketPath())
  await a1[Symbol.asyncDispose]()
  await asyncListener[Symbol.asyncDispose]()
  t.is(a1.fd, -1)
  t.is(asyncListener.fd, -1)
  a2.close()
  const [f1, f2] = FdSocket.pair()
  await f1[Symbol.asyncDispose]()
  t.true(f1.destroyed)
  f2.destroy()
  const server = createServer()
  server.listen(tmpSocketPath())
  await onceEvent(server, 'listening')
  await server[Symbol.asyncDispose]()
  t.false(server.listening)
  // `using` and `await using`, as users write them.
  const [p1, p2] = UnixStream.pair()
  {
    using s = p1
    t.true(s.fd >= 0)
  }
  t.is(p1.fd, -1)
  p2.close()
  const [q1, q2] = AsyncUnixStream.pair()
  {
    await using s = q1
    t.true(s.fd >= 0)
  }
  t.is(q1.fd, -1)
  q2.close()
})

test('for await (const connection of listener) yields every connection until the listener closes; break leaves it open', async (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  const clients = [0, 1, 2].map(() => UnixStream.connect(sock))
  clients.forEach((client, i) => client.write(`client ${i}`))
  const seen: string[] = []
  for await (const connection of listener) {
    seen.push((await readExactly(connection, 8)).toString())
    connection.close()
    if (seen.length === 2) break
  }
  t.is(new Set(seen).size, 2)
  t.true(listener.fd >= 0, 'break left the listener open')
  // A loop ends when the listener is closed.
  const loop = (async () => {
    const names: string[] = []
    for await (const connection of listener) {
      names.push((await readExactly(connection, 8)).toString())
      connection.close()
      if (names.length === 1) listener.close()
    }
    return names
  })()
  const names = await withTimeout(loop, 10_000, 'the loop ends when the listener closes')
  t.is(names.length, 1)
  t.is(new Set([...seen, ...names]).size, 3)
  for (const client of clients) client.close()
})
