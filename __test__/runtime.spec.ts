/**
 * Where the async work runs (issue 13): on Linux under Node each JS thread drives its own
 * tokio runtime from its libuv loop; `FD_QUEUE_DRIVER=threads` (and hosts without libuv)
 * fall back to a tokio worker thread. Both must deliver every event, however many become
 * ready at once, on the main thread and in workers.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import { promisify } from 'node:util'
import { Worker } from 'node:worker_threads'
import { AsyncUnixStream, connect, FdSocket, runtimeInfo } from '../index.js'
import {
  fdIdentity,
  lastJson,
  openFds,
  pathIdentity,
  ROOT,
  runFixture,
  scaled,
  settledOpenFds,
  startFixture,
  tmpFile,
  tmpSocketPath,
} from './helpers.js'
import { withTimeout } from './async-helpers.js'
import { linuxTest } from './platform.js'

const T = 30_000
const expected = process.env.FD_QUEUE_DRIVER === 'threads' ? 'threads' : 'libuv'

let baseline = 0
test.before(async () => {
  const [a, b] = AsyncUnixStream.pair()
  await a.write('warm')
  await b.read()
  a.close()
  b.close()
  baseline = await settledOpenFds()
})
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})

// The threaded driver reads ahead on its worker thread: batches (and their fds) wait for
// the JS thread. destroy() closes them at once; the JS thread is kept busy here, so any fd
// left for a batch's later delivery would stay open and fail the test.
;(expected === 'threads' ? test.serial : test.serial.skip)(
  'threaded driver: destroy() closes the fds of batches read ahead and not yet delivered, without the JS thread',
  async (t) => {
    // The sender sends at once (each write is one sendmsg now, its fd duplicate closed right
    // after it), so the only fds that appear are the ones the worker thread receives.
    const [a, peer] = AsyncUnixStream.pair()
    const b = FdSocket.from(peer)
    b.on('data', () => t.fail('nothing is delivered: the JS thread stays busy until destroy()'))
    await new Promise((resolve) => setImmediate(resolve)) // b starts reading
    const devnull = fs.openSync('/dev/null', 'r')
    const before = openFds()
    const COUNT = 50
    const writes: Array<Promise<number>> = []
    for (let i = 0; i < COUNT; i++) {
      a.enqueue(devnull)
      writes.push(a.write('x'))
    }
    // Busy from here on, without yielding to the event loop.
    const spin = (until: () => boolean) => {
      const deadline = Date.now() + scaled(10_000)
      while (!until() && Date.now() < deadline);
      return until()
    }
    // The worker thread reads ahead as far as its batches in flight go (how far depends
    // on timing); this waits until fds stop arriving for a moment.
    t.true(
      spin(() => openFds() > before),
      'the worker thread read ahead',
    )
    let seen = openFds()
    let quietSince = Date.now()
    spin(() => {
      const now = openFds()
      if (now !== seen) [seen, quietSince] = [now, Date.now()]
      return Date.now() - quietSince > 20
    })
    t.log(`${seen - before} fds read ahead`)
    b.destroy()
    t.true(
      spin(() => openFds() === before - 1), // b's own socket is closed too
      `${openFds() - (before - 1)} fds still open after destroy()`,
    )
    t.deepEqual(await Promise.all(writes), new Array(COUNT).fill(1))
    a.close()
    fs.closeSync(devnull)
  },
)

test('runtimeInfo(): the JS-thread driver on Linux, the threaded one when FD_QUEUE_DRIVER=threads asks', async (t) => {
  const here = runtimeInfo()
  t.is(here.driver, expected)
  t.true(here.reason.length > 0)
  const probe = `const { runtimeInfo } = require(${JSON.stringify(ROOT)}); console.log(JSON.stringify(runtimeInfo()))`
  for (const [driver, env] of [
    ['threads', { FD_QUEUE_DRIVER: 'threads' }],
    ['libuv', { FD_QUEUE_DRIVER: '' }],
  ] as const) {
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', probe], {
      env: { ...process.env, ...env },
      timeout: T,
    })
    t.is(JSON.parse(stdout.trim()).driver, driver)
  }
})

/** `n` pairs, each with a read waiting, then every peer writes in one JS turn. */
async function manyReadyAtOnce(n: number, file: string): Promise<number> {
  const fd = fs.openSync(file, 'r')
  const pairs = Array.from({ length: n }, () => AsyncUnixStream.pair())
  try {
    const reads = pairs.map(([, b]) => b.read())
    // Every socket becomes readable before the runtime runs again: one reactor turn finds
    // them all, more than tokio runs in one round.
    const writes = pairs.map(([a]) => {
      a.enqueue(fd)
      return a.write('x')
    })
    await withTimeout(Promise.all(writes), T, 'writes')
    const chunks = await withTimeout(Promise.all(reads), T, `${n} reads`)
    let good = 0
    for (const [i, chunk] of chunks.entries()) {
      const received = pairs[i][1].dequeue()
      if (chunk.toString() === 'x' && received !== null && fdIdentity(received) === pathIdentity(file)) good++
      if (received !== null) fs.closeSync(received)
    }
    return good
  } finally {
    fs.closeSync(fd)
    for (const [a, b] of pairs) {
      a.close()
      b.close()
    }
  }
}

test('AsyncUnixStream: 600 reads that become ready in the same instant all resolve, each with its fd', async (t) => {
  const file = tmpFile('many')
  t.is(await manyReadyAtOnce(600, file), 600)
})

test('FdSocket: 600 sockets that become readable in the same instant all deliver their chunk and fd', async (t) => {
  const file = tmpFile('many-duplex')
  const fd = fs.openSync(file, 'r')
  const pairs = Array.from({ length: 600 }, () => FdSocket.pair())
  try {
    const arrived = pairs.map(
      ([, b]) =>
        new Promise<boolean>((resolve, reject) => {
          b.once('data', (chunk: Buffer) => {
            const received = b.dequeue()
            const same = received !== null && fdIdentity(received) === pathIdentity(file)
            if (received !== null) fs.closeSync(received)
            resolve(chunk.toString() === 'y' && same)
          })
          b.once('error', reject)
        }),
    )
    for (const [a] of pairs) {
      a.enqueue(fd)
      a.write('y')
    }
    const results = await withTimeout(Promise.all(arrived), T, '600 chunks')
    t.is(results.filter(Boolean).length, 600)
  } finally {
    fs.closeSync(fd)
    await Promise.all(
      pairs.flat().map(
        (s) =>
          new Promise((resolve) => {
            s.once('close', resolve)
            s.destroy()
          }),
      ),
    )
  }
})

test('a worker thread drives its own runtime: its streams work, and so do ours meanwhile', async (t) => {
  const file = tmpFile('worker')
  const worker = new Worker(
    `
    const { parentPort } = require('node:worker_threads')
    const fs = require('node:fs')
    const { AsyncUnixStream, closeFd, runtimeInfo } = require(${JSON.stringify(ROOT)})
    ;(async () => {
      const fd = fs.openSync(${JSON.stringify(file)}, 'r')
      const [a, b] = AsyncUnixStream.pair()
      const read = b.read()
      a.enqueue(fd)
      await a.write('w')
      await read
      const got = b.dequeue()
      const st = fs.fstatSync(got)
      closeFd(got) // not fs.closeSync: this worker did not open it through fs
      fs.closeSync(fd)
      a.close()
      b.close()
      parentPort.postMessage({ info: runtimeInfo(), ino: st.ino, dev: st.dev })
    })().catch((e) => parentPort.postMessage({ error: String(e && e.stack) }))
    `,
    { eval: true },
  )
  const [a, b] = AsyncUnixStream.pair()
  try {
    const ours = b.read()
    const message = await withTimeout(
      new Promise<any>((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
      }),
      T,
      'the worker',
    )
    t.falsy(message.error, message.error)
    t.is(message.info.driver, expected)
    const st = fs.statSync(file)
    t.is(`${message.dev}:${message.ino}`, `${st.dev}:${st.ino}`)
    await a.write('main')
    t.is((await withTimeout(ours, T, 'our read')).toString(), 'main')
  } finally {
    a.close()
    b.close()
    await worker.terminate()
  }
})

test('1000 FdSocket connections to an FdServer in another process: 25 acked messages with 4 fds each, none stalls', async (t) => {
  // Every ack makes its socket readable at about the same time: most reactor turns wake
  // hundreds of tasks, and every one of them must run without a further event.
  const conns = 1000
  const rounds = 25
  const size = 16
  const socketPath = tmpSocketPath()
  const server = startFixture('ack-server', [socketPath, String(conns), String(size)], { timeoutMs: 120_000 })
  const devnull = fs.openSync('/dev/null', 'r')
  const sockets: FdSocket[] = []
  try {
    await server.waitForLine(/^listening$/)
    let next = 0
    await withTimeout(
      Promise.all(
        Array.from({ length: 32 }, async () => {
          while (next < conns) {
            next++
            for (;;) {
              const socket = connect(socketPath)
              try {
                await once(socket, 'connect')
                sockets.push(socket)
                break
              } catch (error) {
                // The server's backlog is full (it is busy accepting): EAGAIN, as with
                // net. Try again once it has had a moment.
                if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error
                await new Promise((resolve) => setTimeout(resolve, 5))
              }
            }
          }
        }),
      ),
      T,
      'connecting',
    )
    const message = Buffer.alloc(size, 'm')
    const stalled = new Set(sockets)
    await withTimeout(
      Promise.all(
        sockets.map(
          (socket) =>
            new Promise<void>((resolve, reject) => {
              let sent = 0
              let acked = 0
              const send = () => {
                while (sent < rounds && sent - acked < 2) {
                  for (let i = 0; i < 4; i++) socket.enqueue(devnull)
                  socket.write(message)
                  sent++
                }
              }
              socket.on('data', (chunk: Buffer) => {
                acked += chunk.length
                if (acked < rounds) return send()
                stalled.delete(socket)
                resolve()
              })
              socket.on('error', reject)
              send()
            }),
        ),
      ),
      T,
      'the acks',
    ).catch((error) => {
      throw new Error(`${error.message}; ${stalled.size} connections stalled`)
    })
    await Promise.all(
      sockets.map((socket) => {
        const closed = once(socket, 'close')
        socket.end()
        return closed
      }),
    )
    const result = await server.done
    t.deepEqual(JSON.parse(result.stdout.trim().split('\n').pop()!), {
      accepted: conns,
      bytes: conns * rounds * size,
      fds: conns * rounds * 4,
    })
  } finally {
    fs.closeSync(devnull)
    for (const socket of sockets) socket.destroy()
    server.child.kill()
  }
})

for (const variant of ['js', 'addon-too'] as const) {
  test(`two copies of the package on one thread (a test runner's fresh registry${variant === 'js' ? '' : ', addon included'}): each settles its own operations`, async (t) => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [`${ROOT}/__test__/fixtures/two-copies.cjs`, variant],
      {
        timeout: T,
      },
    )
    t.deepEqual(JSON.parse(stdout.trim().split('\n').pop()!), {
      reads: ['one', 'two'],
      closes: ['ERR_SOCKET_CLOSED', 'ERR_SOCKET_CLOSED'],
    })
  })
}

for (const mode of ['stream', 'seqpacket']) {
  test(`operations that complete at once, awaited in a loop (a ${mode} writer and reader in one thread), let a timer fire`, async (t) => {
    const result = await runFixture('busy-loops', [mode])
    t.false(result.timedOut, 'the timer never fired: the loops held the event loop')
    const report = lastJson(result)
    t.like(report, { driver: expected, mode })
    t.true(report.writes > 0 && report.reads > 0)
  })
}

linuxTest(
  "the runtime's epoll fd closed under it (by code closing numbers it does not own): no abort, no panic message",
  async (t) => {
    const result = await runFixture('reactor-closed', [])
    t.false(result.timedOut, result.stderr)
    t.is(result.code, 0, result.stderr)
    t.is(result.stderr, '', 'nothing printed')
    const report = lastJson(result)
    t.true(report.closed > 0, 'the package made an epoll fd')
    // The JS-thread runtime's close() settles the read; the threads driver's runtime
    // thread ended with the panic.
    t.like(report, {
      driver: expected,
      outcome: expected === 'libuv' ? 'ERR_SOCKET_CLOSED' : 'not awaited',
      echo: 'echo:hi',
    })
  },
)

for (const kind of ['stream', 'seqpacket', 'fdsocket']) {
  test(`a loop that retries a ${kind} connect that fails at once lets a timer bind the listener it waits for`, async (t) => {
    const result = await runFixture('busy-loops', [`connect-${kind}`])
    t.false(result.timedOut, 'the timer never fired: the failing connects held the event loop')
    const report = lastJson(result)
    t.like(report, { driver: expected, bound: true })
    t.true(report.failures > 0)
  })
}

test('2,000 reads that each find data, awaited one after another, let a timer due at once fire before they end', async (t) => {
  const report = lastJson(await runFixture('busy-loops', ['backlog']))
  t.like(report, { driver: expected, reads: 2000 })
  t.true(report.firedAt >= 0 && report.firedAt < report.reads, `the timer fired after read ${report.firedAt}`)
})

// The budget of operations that complete at once is per turn of the loop, not per outcome
// delivered: one loop callback that delivers the deferred reads of many busy streams lets
// the code of the first run on one budget, and the others wait for the next turn. Before
// the first setImmediate: the budget the test starts in, and one for each of the
// runtime's callbacks in that iteration (at most four; here one, the idle one that runs
// the deferred reads). (Ended by every outcome instead, each stream's chain got a budget
// of its own, and 20 of them ran all 40,960 reads they had data for before it.)
test.serial(
  'reads that complete at once on 20 streams share one budget per loop callback: the first setImmediate comes within five budgets',
  async (t) => {
    const pairs = Array.from({ length: 20 }, () => AsyncUnixStream.pair())
    for (const [, b] of pairs) await b.write(Buffer.alloc(2048, 1))
    let reads = 0
    let stop = false
    const loops = pairs.map(async ([a]) => {
      while (!stop) {
        await a.read(1)
        reads++
      }
    })
    const beforeCheck = await new Promise<number>((resolve) => setImmediate(() => resolve(reads)))
    stop = true
    // A byte more for each: a loop that read everything waits for one.
    for (const [, b] of pairs) await b.write('x')
    await withTimeout(Promise.all(loops), T, 'the last reads')
    for (const [a, b] of pairs) {
      a.close()
      b.close()
    }
    t.true(beforeCheck > 0)
    t.true(beforeCheck <= 5 * 1024 + 2 * pairs.length, `${beforeCheck} reads before the first setImmediate`)
  },
)

// A read whose result JS gets before the reactor collects the event that brought it (see
// "Where the async work runs" in the README): the next read, made in the code after its
// `await`, finds the socket empty, and its bytes and fd arrive before that collection.
// The event they raise is then taken with the one already served: the read must still
// see them. Serial: another test's loop callback would try the read too, and hide a miss.
test.serial(
  'a read made after an await of a read, whose data arrive before the loop callback ends, resolves with them and their fd',
  async (t) => {
    const file = tmpFile('after the await')
    const [a, b] = AsyncUnixStream.pair()
    const rounds = 300
    for (let i = 0; i < rounds; i++) {
      const first = a.read(1)
      // From another loop callback: `first` waits for an event.
      setImmediate(() => void b.write('x'))
      t.is((await withTimeout(first, T, `read ${i}`)).toString(), 'x')
      const second = a.read(1)
      const fd = fs.openSync(file, 'r')
      b.enqueue(fd)
      fs.closeSync(fd)
      void b.write('y')
      t.is((await withTimeout(second, T, `read ${i} after the await`)).toString(), 'y')
      const received = a.dequeue()
      t.not(received, null)
      t.is(fdIdentity(received!), pathIdentity(file))
      fs.closeSync(received!)
    }
    a.close()
    b.close()
  },
)

// The same for an FdSocket, whose reader, after a chunk, waits for the next with no task:
// its peer's answer to that chunk, written by the 'data' listener, comes before the loop
// callback that delivered the chunk turns the reactor.
test.serial(
  "an FdSocket chunk written back from a 'data' listener, before the loop callback ends, is delivered with its fd",
  async (t) => {
    const file = tmpFile('written back')
    const [a, b] = FdSocket.pair()
    const rounds = 300
    let got = ''
    let received: number[] = []
    let waiter: (() => void) | null = null
    a.on('data', (chunk: Buffer) => {
      got += chunk.toString()
      for (let fd; (fd = a.dequeue()) !== null;) received.push(fd)
      if (chunk.toString() === 'x') {
        const fd = fs.openSync(file, 'r')
        b.enqueue(fd)
        fs.closeSync(fd)
        b.write('y')
      }
      waiter?.()
    })
    const until = (text: string, what: string) =>
      withTimeout(
        new Promise<void>((resolve) => {
          waiter = () => got.endsWith(text) && resolve()
          waiter()
        }),
        T,
        what,
      )
    for (let i = 0; i < rounds; i++) {
      got = ''
      // From another loop callback: the chunk comes with an event.
      setImmediate(() => b.write('x'))
      await until('xy', `round ${i}`)
      t.is(got, 'xy')
      t.is(received.length, 1)
      t.is(fdIdentity(received[0]!), pathIdentity(file))
      fs.closeSync(received[0]!)
      received = []
    }
    a.destroy()
    b.destroy()
  },
)
