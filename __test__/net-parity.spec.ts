/**
 * FdSocket and FdServer where they follow net.Socket and net.Server to the letter: the idle
 * timeout (`setTimeout`, `'timeout'`, the `timeout` option) and what it is for against a
 * peer that keeps its connection open with its own end, `'close'`'s `hadError`,
 * `bytesRead`/`bytesWritten`/`readyState`/`destroySoon` (the same scenario run on both),
 * and the server's `'listening'`/`'close'` around a `close()`.
 */
import test from 'ava'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import type { Duplex } from 'node:stream'
import { AsyncUnixStream, createServer, connect, FdSocket, runtimeInfo, type FdServer } from '../index.js'
import { ROOT, runProcess, tmpDir, tmpSocketPath } from './helpers.js'
import { checkNoFdLeaked, onceEvent, syncThrow, withTimeout } from './async-helpers.js'

const T = 10_000

checkNoFdLeaked()

/** Resolves once `socket` emitted 'close', with its argument. */
function closeOf(socket: FdSocket): Promise<boolean> {
  return withTimeout(new Promise((resolve) => socket.once('close', resolve)), T, "'close'")
}

async function listening(server: FdServer): Promise<string> {
  const sock = tmpSocketPath()
  server.listen(sock)
  await onceEvent(server, 'listening', T)
  return sock
}

test.serial(
  'a peer that sends its own end and goes keeps the connection open; an idle timeout ends it, and no fd is left',
  async (t) => {
    // The connection cannot end while its other end waits in this side's inbound queue; a
    // client can open any number of them and hold nothing itself. Servers time idle
    // connections out against it, as against any idle client.
    const server = createServer({ timeout: 200 })
    const sock = await listening(server)
    const events: string[] = []
    const closed = new Promise<void>((resolve) =>
      server.on('connection', (socket: FdSocket) => {
        socket.on('data', (data: Buffer) => events.push(`data ${data} with ${socket.queuedInboundFds} fd`))
        socket.on('end', () => events.push('end'))
        socket.on('timeout', () => {
          events.push('timeout')
          socket.destroy()
        })
        socket.on('close', () => resolve())
      }),
    )
    const peer = [
      'import socket, sys',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
      's.connect(sys.argv[1])',
      "socket.send_fds(s, [b'x'], [s.fileno()])",
      's.close()',
    ].join('\n')
    const result = await runProcess('python3', ['-c', peer, sock], { timeoutMs: 20_000 })
    t.is(result.status, 0, result.stderr)
    await withTimeout(closed, 20_000, 'the idle connection closes')
    t.deepEqual(events, ['data x with 1 fd', 'timeout'], "no 'end' before the timeout: the peer's end was here")
    server.close()
    await onceEvent(server, 'close', T)
  },
)

test.serial(
  "setTimeout(ms): 'timeout' once the socket was idle that long; reads and writes start it over, also after it fired",
  async (t) => {
    const [a, b] = FdSocket.pair()
    b.resume()
    let timeouts = 0
    a.on('timeout', () => timeouts++)
    let callbacks = 0
    t.is(a.timeout, undefined)
    t.is(
      a.setTimeout(200, () => callbacks++),
      a,
    )
    t.is(a.timeout, 200)
    // Activity for longer than the timeout, a read or a write every 50 ms or so.
    let last = performance.now()
    let longestGap = 0
    for (let i = 0; i < 10; i++) {
      if (i % 2 === 0) {
        const got = onceEvent(a, 'data', T)
        b.write(`to a ${i}`)
        await got
      } else {
        await new Promise((resolve) => a.write(`from a ${i}`, resolve))
      }
      const now = performance.now()
      longestGap = Math.max(longestGap, now - last)
      last = now
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const duringActivity = timeouts
    longestGap = Math.max(longestGap, performance.now() - last)
    // A machine that stalled for most of a timeout between two steps proves nothing here.
    if (longestGap < 150) t.is(duringActivity, 0, 'no timeout while reads and writes went on')
    else t.log(`a step took ${longestGap} ms: the no-timeout check is skipped`)
    await onceEvent(a, 'timeout', T)
    t.is(callbacks, 1, 'the callback is a one-time listener')
    // It fired: the next activity starts it again.
    const timedOutAgain = onceEvent(a, 'timeout', T)
    b.write('after the timeout')
    await timedOutAgain
    t.is(timeouts, duringActivity + 2)
    // 0 turns it off and takes the callback away.
    const cb = () => callbacks++
    a.setTimeout(50, cb)
    t.is(a.setTimeout(0, cb), a)
    t.is(a.timeout, 0)
    t.is(a.listenerCount('timeout'), 1)
    // It keeps nothing open: destroy() stops it.
    a.setTimeout(10_000)
    a.destroy()
    b.destroy()
    await Promise.all([closeOf(a), closeOf(b)])
  },
)

test.serial("a write that waits for a slow reader is activity; one that is stuck is not (as net's)", async (t) => {
  const [raw, peer] = AsyncUnixStream.pair()
  const writer = FdSocket.from(raw)
  let timeouts = 0
  writer.on('timeout', () => timeouts++)
  writer.setTimeout(300)
  // 1 MiB to a reader taking 32 KiB every 30 ms: the write goes on for most of a second.
  const written = new Promise((resolve) => writer.write(Buffer.alloc(1 << 20), resolve))
  let got = 0
  let longestGap = 0
  let last = performance.now()
  while (got < 1 << 20) {
    got += (await peer.read(32768)).length
    const now = performance.now()
    longestGap = Math.max(longestGap, now - last)
    last = now
    await new Promise((resolve) => setTimeout(resolve, 30))
  }
  await withTimeout(written, T, 'the write')
  // A machine that stalled for most of a timeout between two reads proves nothing here.
  if (longestGap < 200) t.is(timeouts, 0, 'no timeout while the write went on')
  else t.log(`a read took ${longestGap} ms: the no-timeout check is skipped`)
  // The reader stops: the next write waits with nothing going out, and times out.
  const before = timeouts
  let finished = false
  const stuckSince = performance.now()
  writer.write(Buffer.alloc(1 << 20), () => (finished = true))
  await onceEvent(writer, 'timeout', T)
  t.false(finished, 'the write was still waiting')
  // As net's: the first time the timer runs out during a wait, it starts over (a blocked
  // writer is woken only once most of the socket's buffer is read).
  const stuckFor = performance.now() - stuckSince
  t.true(stuckFor >= 2 * 300 - 20, `timed out after ${stuckFor} ms, not twice the timeout`)
  t.is(timeouts, before + 1)
  writer.destroy()
  peer.close()
  await closeOf(writer)
})

test.serial('setTimeout() and the timeout option check their arguments as net does', (t) => {
  const [a, b] = FdSocket.pair()
  t.is(syncThrow(() => a.setTimeout(-1)).code, 'ERR_OUT_OF_RANGE')
  t.is(syncThrow(() => a.setTimeout(Infinity)).code, 'ERR_OUT_OF_RANGE')
  t.is(syncThrow(() => a.setTimeout(NaN)).code, 'ERR_OUT_OF_RANGE')
  t.is(syncThrow(() => a.setTimeout('10' as any)).code, 'ERR_INVALID_ARG_TYPE')
  t.is(syncThrow(() => a.setTimeout(10, 'cb' as any)).code, 'ERR_INVALID_ARG_TYPE')
  t.is(syncThrow(() => new FdSocket({ timeout: -5 })).code, 'ERR_OUT_OF_RANGE')
  t.is(syncThrow(() => createServer({ timeout: 'soon' as any })).code, 'ERR_INVALID_ARG_TYPE')
  t.is(a.timeout, undefined, 'a refused call changes nothing')
  // A plain property on net.Socket: setting it changes no timer.
  a.timeout = 5
  t.is(a.timeout, 5)
  // No Nagle and no TCP keep-alive on a Unix socket: as net's, no-ops that return the socket.
  t.is(a.setNoDelay(true), a)
  t.is(a.setKeepAlive(true, 1000), a)
  a.destroy()
  b.destroy()
})

test.serial('an idle timer does not keep the process alive', async (t) => {
  const script = [
    `const { FdSocket } = require(${JSON.stringify(path.join(ROOT, 'index.js'))})`,
    'const [a, b] = FdSocket.pair({ timeout: 600000 })',
    'a.unref(); b.unref()',
    "a.on('timeout', () => process.exit(3))",
  ].join('\n')
  // Killed (and failed) long before the ten minutes if the timer held the process.
  const result = await runProcess(process.execPath, ['-e', script], { cwd: tmpDir(), timeoutMs: 30_000 })
  t.is(result.signal, null, 'exited by itself')
  t.is(result.status, 0, result.stderr)
})

test.serial("'close' says whether an error destroyed the socket (hadError), as net's", async (t) => {
  const failed = new FdSocket()
  const errored = closeOf(failed)
  failed.on('error', () => {})
  failed.connect(path.join(tmpDir(), 'missing.sock'))
  t.true(await errored, 'a connect that failed')

  const [a, b] = FdSocket.pair()
  a.on('error', () => {})
  const aClosed = closeOf(a)
  const bClosed = closeOf(b)
  a.destroy(new Error('broken'))
  t.true(await aClosed, 'destroy(error)')
  t.false(await bClosed, 'the peer: its other end went, no error')

  const [c, d] = FdSocket.pair()
  const cClosed = closeOf(c)
  c.destroy()
  t.false(await cClosed, 'destroy()')
  d.destroy()
  await closeOf(d)
})

test.serial("FdServer: close() in the tick of listen() emits 'close' only, never 'listening'", async (t) => {
  const server = createServer()
  const events: string[] = []
  server.on('listening', () => events.push('listening'))
  server.listen(tmpSocketPath(), () => events.push('listen callback'))
  server.close(() => events.push('close callback'))
  await onceEvent(server, 'close', T)
  // 'listening' would have come first: both are a tick away.
  t.deepEqual(events, ['close callback'])
  t.false(server.listening)
})

test.serial(
  "a server closed on its client's 'connect' (same thread) has accepted it first, as net's: the connection works (libuv driver)",
  async (t) => {
    // Each phase of the event loop the connect may be made in: a tick, a poll callback
    // (fs), a timer, an immediate. The 'threads' driver's accepts come from its worker
    // thread, with no order against the JS thread's events: net's alone is checked there.
    const phases: Record<string, (go: () => void) => void> = {
      tick: (go) => process.nextTick(go),
      poll: (go) => fs.stat(ROOT, go),
      timer: (go) => setTimeout(go, 1),
      check: (go) => setImmediate(go),
    }
    const api: Record<string, { createServer: unknown; connect: (p: string) => Duplex }> = {
      net: { createServer: net.createServer, connect: (p: string) => net.connect(p) },
    }
    if (runtimeInfo().driver === 'libuv') api['fd-queue'] = { createServer, connect: (p: string) => connect(p) }
    else t.log('fd-queue not checked: the threads driver accepts on its own thread')
    const outcomes: string[] = []
    for (const [name, { createServer: serve, connect: dial }] of Object.entries(api)) {
      for (const [phase, inPhase] of Object.entries(phases)) {
        const server = (serve as typeof net.createServer)((socket) => socket.end('accepted'))
        const sock = tmpSocketPath()
        await new Promise<void>((resolve) => server.listen(sock, resolve))
        const got = await withTimeout(
          new Promise<string>((resolve) =>
            inPhase(() => {
              const client = (dial as (p: string) => Duplex)(sock)
              let text = ''
              client.on('connect', () => server.close())
              client.on('data', (chunk) => (text += chunk))
              client.on('error', (error: NodeJS.ErrnoException) => resolve(`error ${error.code}`))
              client.on('end', () => resolve(text))
            }),
          ),
          T,
          `${name} ${phase}`,
        )
        outcomes.push(`${name} ${phase}: ${got}`)
      }
    }
    t.deepEqual(
      outcomes,
      Object.keys(api).flatMap((name) => Object.keys(phases).map((phase) => `${name} ${phase}: accepted`)),
    )
  },
)

test.serial(
  "a socket destroyed while it connects is no longer connecting, as net's: 'closed' in its 'close'",
  async (t) => {
    const server = createServer((socket) => socket.destroy())
    const sock = await listening(server)
    const seen: Record<string, string> = {}
    for (const [name, dial] of [
      ['net', (p: string) => net.connect(p)],
      ['fd-queue', (p: string) => connect(p)],
    ] as const) {
      const client = dial(sock) as net.Socket | FdSocket
      const closed = new Promise<void>((resolve) =>
        client.once('close', () => {
          seen[name] = `connecting ${client.connecting}, readyState ${client.readyState}`
          resolve()
        }),
      )
      client.destroy()
      await withTimeout(closed, T, `${name} 'close'`)
    }
    t.deepEqual(seen, { net: 'connecting false, readyState closed', 'fd-queue': 'connecting false, readyState closed' })
    server.close()
  },
)

test.serial(
  "FdServer: close() when not listening still emits 'close'; the callback gets ERR_SERVER_NOT_RUNNING",
  async (t) => {
    const server = createServer()
    const closed = onceEvent(server, 'close', T)
    const reported = new Promise<Error | undefined>((resolve) => server.close(resolve))
    await closed
    t.is(((await reported) as NodeJS.ErrnoException | undefined)?.code, 'ERR_SERVER_NOT_RUNNING')
  },
)

test.serial(
  "createServer({ signal }) and listen({ signal }): aborting closes the server as net's, and createServer's its connections",
  async (t) => {
    const controller = new AbortController()
    const server = createServer({ signal: controller.signal })
    const sock = await listening(server)
    const accepted = new Promise<FdSocket>((resolve) => server.once('connection', resolve))
    const client = connect(sock)
    const connection = await withTimeout(accepted, T, 'the connection')
    const errors: string[] = []
    connection.on('error', (error: NodeJS.ErrnoException) => errors.push(String(error.code)))
    const serverClosed = onceEvent(server, 'close', T)
    const clientClosed = closeOf(client)
    controller.abort()
    await serverClosed
    t.false(server.listening)
    t.false(fs.existsSync(sock), 'the socket file is gone')
    t.true(connection.destroyed)
    t.deepEqual(errors, ['ABORT_ERR'])
    t.false(await clientClosed, 'the client saw the connection end')

    // Aborted already: the server closes before it says it listens.
    const aborted = createServer({ signal: AbortSignal.abort() })
    const events: string[] = []
    aborted.on('listening', () => events.push('listening'))
    const path2 = tmpSocketPath()
    aborted.listen(path2)
    await onceEvent(aborted, 'close', T)
    t.deepEqual(events, [])
    t.false(fs.existsSync(path2))
    t.is(syncThrow(() => createServer({ signal: 'soon' as any })).code, 'ERR_INVALID_ARG_TYPE')

    // listen({ path, signal }), as net's.
    const byListen = new AbortController()
    const server3 = createServer()
    const path3 = tmpSocketPath()
    server3.listen({ path: path3, signal: byListen.signal })
    await onceEvent(server3, 'listening', T)
    const closed3 = onceEvent(server3, 'close', T)
    byListen.abort()
    await closed3
    t.false(server3.listening)
    t.false(fs.existsSync(path3))
    const refused = syncThrow(() => createServer().listen({ path: tmpSocketPath(), signal: 1 as any }))
    t.is(refused.code, 'ERR_INVALID_ARG_TYPE')
  },
)

test.serial('FdSocket.from() refuses a stream that already belongs to a socket', async (t) => {
  const [raw, peer] = AsyncUnixStream.pair()
  const socket = FdSocket.from(raw)
  t.is(syncThrow(() => FdSocket.from(raw)).code, 'ERR_INVALID_ARG_VALUE')
  socket.destroy()
  peer.close()
  await closeOf(socket)
})

/** The state a net.Socket-like socket shows at each step of {@link scenario}. */
function shown(socket: Duplex & { bytesRead: number; bytesWritten: number; readyState: string }) {
  return { bytesRead: socket.bytesRead, bytesWritten: socket.bytesWritten, readyState: socket.readyState }
}

/**
 * Writes 1 MiB and a few small chunks from `client` to a paused `server`, then reads it
 * all, and `destroySoon()` after a last write: what both show at each step.
 */
async function scenario(client: any, server: any): Promise<unknown[]> {
  const steps: unknown[] = []
  steps.push(['connected', shown(client), shown(server)])
  server.pause()
  client.write(Buffer.alloc(1 << 20, 'a'))
  client.write('bc')
  client.write(Buffer.from('def'))
  steps.push(['written, not read', shown(client).bytesWritten])
  let received = 0
  const all = new Promise<void>((resolve) =>
    server.on('data', (chunk: Buffer) => {
      received += chunk.length
      if (received === (1 << 20) + 5) resolve()
    }),
  )
  server.resume()
  await withTimeout(all, T, 'every byte')
  steps.push(['read', shown(server).bytesRead])
  const serverClosed = new Promise((resolve) => server.once('close', resolve))
  const clientClosed = new Promise((resolve) => client.once('close', resolve))
  client.write('last')
  client.destroySoon()
  steps.push(['destroySoon', shown(client).readyState])
  await withTimeout(Promise.all([serverClosed, clientClosed]), T, "both 'close'")
  steps.push(['closed', shown(client), shown(server)])
  return steps
}

test.serial('bytesRead, bytesWritten, readyState and destroySoon() show what net.Socket shows', async (t) => {
  const netServer = net.createServer()
  const netPath = tmpSocketPath()
  await new Promise<void>((resolve) => netServer.listen(netPath, resolve))
  const netAccepted = new Promise<net.Socket>((resolve) => netServer.once('connection', resolve))
  const netClient = net.connect(netPath)
  await onceEvent(netClient, 'connect', T)
  const ofNet = await scenario(netClient, await netAccepted)
  netServer.close()

  const server = createServer()
  const sock = await listening(server)
  const accepted = new Promise<FdSocket>((resolve) => server.once('connection', resolve))
  const client = connect(sock)
  t.is(client.readyState, 'opening')
  // Before connect, as net's: what waits for the connection counts as written.
  const early = net.connect(tmpSocketPath())
  early.on('error', () => {})
  const waiting = connect(path.join(tmpDir(), 'missing.sock'))
  waiting.on('error', () => {})
  for (const socket of [early, waiting]) {
    socket.write('héllo')
    ;(socket as Duplex).write('ff00', 'hex')
    socket.cork()
    socket.write(Buffer.alloc(10))
    socket.write('ab')
  }
  t.is(waiting.bytesWritten, early.bytesWritten)
  t.is(waiting.bytesWritten, 20)
  early.destroy()
  waiting.destroy()
  await onceEvent(client, 'connect', T)
  const ofFdSocket = await scenario(client, await accepted)
  server.close()
  t.deepEqual(ofFdSocket, ofNet)
  t.deepEqual(ofNet[0], [
    'connected',
    { bytesRead: 0, bytesWritten: 0, readyState: 'open' },
    { bytesRead: 0, bytesWritten: 0, readyState: 'open' },
  ])
})
