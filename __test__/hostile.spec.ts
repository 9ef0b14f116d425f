/**
 * Hostile peers (issue #6): fd-driver.c's `hostile` mode plays thousands of rounds of odd
 * but valid SCM_RIGHTS traffic from a fixed seed (logged): random lengths, several
 * SCM_RIGHTS headers in one message, SCM_CREDENTIALS mixed in (and alone), fds on every
 * byte of a run of 1-byte writes, 253 fds in a message, multi-iovec writes, partial
 * sends of large writes, floods of fds far beyond maxQueuedFds, and connections that end
 * abruptly in the middle of a message (a clean close, or a reset with our byte unread).
 *
 * Against AsyncUnixStream, FdSocket and UnixStream (blocking reads with a timeout), the
 * process must not crash, must never hold more than maxQueuedFds + 253 (one message of
 * overshoot) + a small constant fds while it does not dequeue, must get every byte in
 * order and exactly the fds sent, in order (each is a memfd whose content is
 * "<connection>:<index>"), and must end at its fd baseline.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import {
  AsyncUnixListener,
  type AsyncUnixStream,
  createServer,
  FdSocket,
  QueueFullError,
  UnixListener,
  type UnixStream,
} from '../index.js'
import { openFds, runProcess, settledOpenFds, tmpSocketPath, scaled } from './helpers.js'
import { linuxTest } from './platform.js'
import * as path from 'node:path'
import { codeOf, dequeueAll, onceEvent, warmedUpFdBaseline, withTimeout } from './async-helpers.js'
import { killDrivers, startDriver, type Driver } from './fixtures/driver.js'

/** The fixed seeds; a failure is replayed by running the driver with the same one. */
const SEED = { async: 60601, fdsocket: 60602, blocking: 60603 }
const ROUNDS = 2000
/** Flood rounds send between MAX_FLOOD/2 and MAX_FLOOD messages of 253 fds each. */
const MAX_FLOOD = 12
/** maxQueuedFds on our side, far below a flood. */
const LIMIT = 256
/** What the process may hold beyond maxQueuedFds + one message of 253 (e.g. a dequeued fd being read). */
const SLACK = 16
const FLOOD = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures', 'message-flood.mjs')

let baseline = 0
test.before(async () => {
  baseline = await warmedUpFdBaseline()
})
test.afterEach.always(() => killDrivers())
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})

/** Byte `pos` of connection `conn` (the driver's pattern()). */
function pattern(conn: number, pos: number): number {
  return ((Math.imul(pos, 0x9e3779b1) >>> 24) ^ (conn & 0xff)) & 0xff
}

const contentBuf = Buffer.alloc(64)

/** Checks one connection's bytes and fds as they are consumed. */
class Connection {
  bytes = 0
  fds = 0
  badBytes = 0
  badFds = 0
  firstBad = ''
  end = ''
  constructor(readonly id: number) {}
  chunk(data: Buffer): void {
    for (let i = 0; i < data.length; i++, this.bytes++) {
      if (data[i] !== pattern(this.id, this.bytes)) {
        if (!this.firstBad) this.firstBad = `byte ${this.bytes}`
        this.badBytes++
      }
    }
  }
  /** Fd number `this.fds` of this connection must read "<id>:<index>"; closes it. */
  fd(fd: number): void {
    const n = fs.readSync(fd, contentBuf, 0, contentBuf.length, 0)
    const content = contentBuf.toString('latin1', 0, n)
    if (content !== `${this.id}:${this.fds}`) {
      if (!this.firstBad) this.firstBad = `fd ${this.fds} read '${content}'`
      this.badFds++
    }
    fs.closeSync(fd)
    this.fds++
  }
}

/**
 * The most fds this process held beyond `base` per connection, sampled by `sample()`:
 * with `live` connections open, each may hold its own maxQueuedFds + 253.
 */
class Watermark {
  max = 0
  samples = 0
  constructor(private base: number) {}
  sample(live = 1): void {
    this.samples++
    this.max = Math.max(this.max, openFds() - this.base - (live - 1) * (LIMIT + 253))
  }
}

interface Run {
  driver: Driver
  connections: Connection[]
  watermark: Watermark
  /** Largest number of fds dequeued at once: shows the inbound queue reached its bound. */
  largestBacklog: number
}

/** Compares what each connection got with what the driver says it sent. */
async function verify(t: any, run: Run, seed: number, exact: (c: Connection, how: string) => boolean) {
  const result = await run.driver.waitFor((l) => l.result === 'done', 60_000)
  const exit = await withTimeout(run.driver.exited, 10_000, 'driver exit')
  t.is(exit.code, 0, exit.stderr)
  t.log(`seed ${seed}: ${result.rounds} rounds over ${result.connections} connections, ${result.fds} fds`)
  t.log(`layouts: ${JSON.stringify(result.layouts)}`)
  t.log(
    `most fds held at once, per live connection, ${run.watermark.max} (bound ${LIMIT} + 253 + ${SLACK}, ${run.watermark.samples} samples); largest backlog dequeued at once ${run.largestBacklog}`,
  )
  t.is(result.rounds, ROUNDS)
  t.is(run.connections.length, result.connections, 'every connection was served')
  for (const layout of Object.keys(result.layouts)) t.true(result.layouts[layout] > 0, `layout ${layout} was played`)
  let fds = 0
  let resets = 0
  let closedUndequeued = 0
  for (const conn of run.connections) {
    const ended = run.driver.lines.find((l) => l.ended === conn.id)
    t.truthy(ended, `connection ${conn.id} ended`)
    t.is(conn.badBytes + conn.badFds, 0, `connection ${conn.id}: first bad ${conn.firstBad}`)
    t.is(conn.bytes, ended.bytes, `connection ${conn.id}: every byte arrived (${ended.how}, we saw ${conn.end})`)
    if (exact(conn, ended.how)) t.is(conn.fds, ended.fds, `connection ${conn.id}: every fd arrived exactly once`)
    else {
      t.true(conn.fds <= ended.fds)
      closedUndequeued += ended.fds - conn.fds
    }
    if (ended.how === 'rst') {
      resets++
      t.true(['ECONNRESET', 'eof'].includes(conn.end), `connection ${conn.id} ended with ${conn.end}`)
    } else t.is(conn.end, 'eof', `connection ${conn.id}`)
    fds += conn.fds
  }
  t.true(resets > 0, 'some connections were reset mid-message')
  t.true(run.watermark.max <= LIMIT + 253 + SLACK, `held ${run.watermark.max} fds`)
  t.true(run.largestBacklog >= LIMIT, 'the inbound queue filled up to maxQueuedFds while we did not dequeue')
  t.log(
    `${fds} fds delivered in order, checked and closed; ${closedUndequeued} arrived on reset connections that had not dequeued them yet and were closed by destroy (counted by the baseline check); 0 lost, 0 duplicated`,
  )
}

function startHostile(sock: string, seed: number): Driver {
  return startDriver(['hostile', sock, seed, ROUNDS, MAX_FLOOD], { timeoutMs: 100_000 })
}

/** Accepts connections until the driver is done and all of them were taken. */
async function acceptAll(
  accept: () => Promise<unknown>,
  driver: Driver,
  serve: (accepted: unknown, id: number) => Promise<void>,
): Promise<void> {
  const done = driver.waitFor((l) => l.result === 'done', 90_000)
  for (let id = 0; ; id++) {
    const next = accept()
    const first = await Promise.race([next.then((s) => ({ s })), done.then((r) => ({ r }))])
    if ('r' in first && id >= first.r.connections) {
      next.catch(() => {})
      return
    }
    await serve('s' in first ? first.s : await next, id)
  }
}

test.serial(`hostile peer vs AsyncUnixStream: ${ROUNDS} rounds, bounded, nothing lost or leaked`, async (t) => {
  const seed = SEED.async
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  const driver = startHostile(sock, seed)
  const run: Run = { driver, connections: [], watermark: new Watermark(openFds()), largestBacklog: 0 }
  await acceptAll(
    () => withTimeout(listener.accept(), 30_000, 'accept'),
    driver,
    async (accepted, id) => {
      const stream = accepted as AsyncUnixStream
      const conn = new Connection(id)
      run.connections.push(conn)
      stream.maxQueuedFds = LIMIT
      await stream.write('x')
      // Dequeue lazily, every 5 ms: in between, reading must pause at maxQueuedFds.
      const drain = () => {
        run.watermark.sample()
        const fds = dequeueAll(stream)
        run.largestBacklog = Math.max(run.largestBacklog, fds.length)
        for (const fd of fds) conn.fd(fd)
      }
      const timer = setInterval(drain, 5)
      try {
        for (;;) {
          let data: Buffer
          try {
            data = await withTimeout(stream.read(), 20_000, `read on connection ${id}`)
          } catch (error) {
            if (codeOf(error) !== 'ECONNRESET') throw error
            conn.end = 'ECONNRESET'
            continue
          }
          if (data.length === 0) break
          conn.chunk(data)
        }
      } finally {
        clearInterval(timer)
      }
      drain()
      if (!conn.end) conn.end = 'eof'
      stream.close()
    },
  )
  listener.close()
  await verify(t, run, seed, () => true)
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(`hostile peer vs FdSocket: ${ROUNDS} rounds, bounded, nothing lost or leaked`, async (t) => {
  const seed = SEED.fdsocket
  const sock = tmpSocketPath()
  const server = createServer({ maxQueuedFds: LIMIT })
  server.listen(sock)
  await onceEvent(server, 'listening')
  const driver = startHostile(sock, seed)
  const run: Run = { driver, connections: [], watermark: new Watermark(openFds()), largestBacklog: 0 }
  // The server hands over (and starts reading) the next connection while we still serve
  // the current one, so two connections can be live, each within its own bound.
  const sockets: FdSocket[] = []
  let live = 0
  server.on('connection', (socket: FdSocket) => {
    sockets.push(socket)
    live++
    socket.on('close', () => live--)
  })
  let waiting: (() => void) | null = null
  server.on('connection', () => waiting?.())
  await acceptAll(
    async () => {
      while (sockets.length === 0) await new Promise<void>((resolve) => (waiting = resolve))
      return sockets.shift()
    },
    driver,
    (accepted, id) =>
      new Promise<void>((resolve, reject) => {
        const socket = accepted as FdSocket
        const conn = new Connection(id)
        run.connections.push(conn)
        t.is(socket.maxQueuedFds, LIMIT)
        socket.write('x')
        // Even connections dequeue in every 'data' (the fds are dequeue-able by then); odd
        // ones only every 5 ms, so reading must pause at maxQueuedFds in between.
        const eager = id % 2 === 0
        const drain = () => {
          if (socket.destroyed) return
          run.watermark.sample(live)
          run.largestBacklog = Math.max(run.largestBacklog, socket.queuedInboundFds)
          for (const fd of dequeueAll(socket)) conn.fd(fd)
        }
        const timer = eager ? undefined : setInterval(drain, 5)
        const giveUp = setTimeout(() => reject(new Error(`connection ${id} did not end`)), scaled(30_000))
        socket.on('data', (data: Buffer) => {
          if (eager) drain()
          conn.chunk(data)
        })
        socket.on('end', () => {
          drain()
          conn.end = 'eof'
        })
        socket.on('error', (error) => {
          conn.end = String(codeOf(error))
        })
        socket.on('close', () => {
          clearInterval(timer)
          clearTimeout(giveUp)
          resolve()
        })
      }),
  )
  server.close()
  // a lazy connection that was reset loses the fds it had not dequeued yet: destroy closed them
  await verify(t, run, seed, (conn, how) => conn.id % 2 === 0 || how !== 'rst')
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(`hostile peer vs blocking UnixStream: ${ROUNDS} rounds, bounded, nothing lost or leaked`, async (t) => {
  const seed = SEED.blocking
  const sock = tmpSocketPath()
  const listener = UnixListener.bind(sock)
  const driver = startHostile(sock, seed)
  const run: Run = { driver, connections: [], watermark: new Watermark(openFds()), largestBacklog: 0 }
  const buf = Buffer.alloc(65536)
  await acceptAll(
    async () => {
      // accept() blocks: wait (without blocking) until the driver's connect returned
      await driver.waitFor((l) => l.connected === run.connections.length, 30_000)
      return listener.accept()
    },
    driver,
    async (accepted, id) => {
      const stream = accepted as UnixStream
      const conn = new Connection(id)
      run.connections.push(conn)
      stream.maxQueuedFds = LIMIT
      stream.setReadTimeout(20_000)
      stream.write('x')
      // Dequeue only when read refuses (the inbound queue is at maxQueuedFds) and at the end.
      const drain = () => {
        run.watermark.sample()
        const fds = dequeueAll(stream)
        run.largestBacklog = Math.max(run.largestBacklog, fds.length)
        for (const fd of fds) conn.fd(fd)
      }
      for (;;) {
        let n: number
        try {
          n = stream.read(buf)
        } catch (error) {
          if (error instanceof QueueFullError) {
            drain()
            continue
          }
          if (codeOf(error) !== 'ECONNRESET') throw error
          conn.end = 'ECONNRESET'
          continue
        }
        if (n === 0) break
        conn.chunk(buf.subarray(0, n))
      }
      drain()
      if (!conn.end) conn.end = 'eof'
      stream.close()
    },
  )
  listener.close()
  await verify(t, run, seed, () => true)
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(
  "hostile peer vs an FdSocket whose 'fds' listener's consumer waits on read(n): destroyed with ERR_FD_QUEUE_FULL, the fds held bounded",
  async (t) => {
    // A length-prefixed parser (as dbus-native reads a body) asks for more bytes than have
    // come; the peer sends 1-byte chunks with 10 fds each for as long as it can. The fds
    // of those chunks wait with them for their 'data': reading may not go on for good.
    const bound = 20
    const [ours, theirs] = FdSocket.pair({ maxQueuedFds: bound })
    const peer = spawn(
      'python3',
      [
        '-c',
        `
import os, socket
s = socket.socket(fileno=3)
f = os.open('/dev/null', os.O_RDONLY)
try:
    for _ in range(5000):
        socket.send_fds(s, [b'x'], [f] * 10)
except OSError:
    pass
`,
      ],
      { stdio: ['ignore', 'ignore', 'inherit', theirs.fd] },
    )
    theirs.destroy()
    const exited = onceEvent(peer, 'exit', scaled(30_000))
    const watermark = new Watermark(openFds())
    let handed = 0
    ours.on('fds', (fds: number[]) => {
      handed += fds.length
      for (const fd of fds) fs.closeSync(fd)
    })
    ours.on('readable', () => {
      watermark.sample(1)
      ours.read(1 << 20)
    })
    const error = await withTimeout(onceEvent(ours, 'error', scaled(30_000)), scaled(30_000), 'the error')
    watermark.sample(1)
    t.is(codeOf(error[0]), 'ERR_FD_QUEUE_FULL')
    t.is(handed, 0, 'no chunk was emitted: the read never had its bytes')
    t.log(`held at most ${watermark.max} fds beyond the start (bound ${bound}, ${watermark.samples} samples)`)
    // The chunks waiting for the read hold at most maxQueuedFds + 253; the reader has at
    // most maxQueuedFds + one message more on their way to JS.
    t.true(watermark.max <= 2 * (bound + 253) + SLACK, `held ${watermark.max}`)
    await exited
    t.is(await settledOpenFds(baseline), baseline)
  },
)

// A receiver that expects no fds does not read `fds`; a peer that sends them anyway, as
// fast as it can, must not fill its fd table: at maxQueuedFds unread, receives wait for
// the collector to release the messages dropped (cutting a message's fds only when that
// takes too long).
for (const [kind, per, count, limit] of [
  ['seqpacket', 10, 3000, 'default'],
  ['dgram', 253, 400, 'default'],
  ['dgram', 10, 1000, '64'],
] as const) {
  const bound = limit === 'default' ? 1024 : Number(limit)
  const flood = (mode: 'ignore' | 'read') =>
    runProcess(
      'sh',
      [
        '-c',
        'ulimit -n 4096 && exec "$0" "$@"',
        process.execPath,
        '--expose-gc',
        FLOOD,
        kind,
        `${per}`,
        `${count}`,
        limit,
        mode,
      ],
      { timeoutMs: 120_000 },
    )
  linuxTest(
    `hostile Python peer floods a ${kind} receiver (maxQueuedFds ${limit}) with ${count} messages of ${per} fds: unread, at most maxQueuedFds + 253 held, the collector keeps up; read, every fd arrives`,
    async (t) => {
      const ignored = await flood('ignore')
      t.is(ignored.status, 0, ignored.stderr)
      const report = JSON.parse(ignored.stdout.trim())
      t.log(`unread: ${report.truncated} of ${count} messages truncated, at most ${report.maxHeld} fds held`)
      t.like(report, { received: count, inOrder: true, peerExit: 0 })
      // Every fd open at the end was open before the flood (none is left), and every one
      // open before still is (none was closed by what did not own it).
      t.deepEqual({ left: report.left, gone: report.gone }, { left: [], gone: [] })
      t.true(report.truncated <= count / 2, `the collector freed the dropped messages: ${report.truncated} cut`)
      // One message may go past the bound; 4096 would be the fd table.
      t.true(report.maxHeld <= bound + 253 + SLACK, `held ${report.maxHeld}`)
      const read = await flood('read')
      t.is(read.status, 0, read.stderr)
      t.like(JSON.parse(read.stdout.trim()), {
        received: count,
        inOrder: true,
        fdsRead: count * per,
        truncated: 0,
        left: [],
        gone: [],
      })
    },
  )
}
