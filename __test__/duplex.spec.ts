/**
 * The stream classes: FdSocket (a stream.Duplex) / FdServer, connect() and createServer().
 * Fds go through real sockets and are checked by reading the file through them; ordering
 * is checked byte-exactly where the receiver is an AsyncUnixStream reading the first byte
 * of each chunk on its own.
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync, spawn } from 'node:child_process'
import * as crypto from 'node:crypto'
import { EventEmitter } from 'node:events'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Duplex, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import * as v8 from 'node:v8'
import * as vm from 'node:vm'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect,
  createServer,
  FdServer,
  FdSocket,
  QueueFullError,
  runtimeInfo,
  type FdsArrived,
  type FdSocketOptions,
} from '../index.js'
import {
  closeAll,
  fdFlags,
  fdIdentity,
  lastJson,
  openFdNumbers,
  O_CLOEXEC,
  makeFifo,
  pathIdentity,
  readAt,
  ROOT,
  runFixture,
  settledOpenFds,
  tmpDir,
  tmpFile,
  tmpSocketPath,
  type Fifo,
} from './helpers.js'
import {
  checkNoFdLeaked,
  codeOf,
  dequeueAll,
  enqueueFile,
  fileSet,
  onceEvent,
  readExactly,
  readToEnd,
  sleep,
  syncThrow,
  withTimeout,
} from './async-helpers.js'

const ERRNO = os.constants.errno
const T = 10_000

checkNoFdLeaked()

/** Destroys the sockets (and closes the servers) when the test ends. */
function cleanup(t: ExecutionContext, ...things: Array<FdSocket | FdServer | AsyncUnixStream | AsyncUnixListener>) {
  t.teardown(() => {
    for (const thing of things) {
      if (thing instanceof FdSocket) thing.destroy()
      else if (thing instanceof FdServer) {
        if (thing.listening) thing.close()
      } else thing.close()
    }
  })
}

/** An FdSocket wrapping one end of an AsyncUnixStream pair, and the other end to read it with. */
function socketAndPeer(t: ExecutionContext): { socket: FdSocket; peer: AsyncUnixStream } {
  const [a, peer] = AsyncUnixStream.pair()
  cleanup(t, peer)
  const socket = FdSocket.from(a)
  cleanup(t, socket)
  return { socket, peer }
}

/** Two connected FdSockets and an fd of /dev/null to enqueue, all closed at the test's end. */
function pairWithDevnull(t: ExecutionContext): { a: FdSocket; b: FdSocket; devnull: number } {
  const [a, b] = FdSocket.pair()
  cleanup(t, a, b)
  const devnull = fs.openSync('/dev/null', 'r')
  t.teardown(() => fs.closeSync(devnull))
  return { a, b, devnull }
}

/** `fdIdentity(fd)`, or `null` for an fd closed meanwhile. */
function fdIdentityOrNull(fd: number): string | null {
  try {
    return fdIdentity(fd)
  } catch {
    return null
  }
}

/** An AsyncUnixStream pair whose first stream an FdSocket wraps; all closed when the test ends. */
function wrappedPair(
  t: ExecutionContext,
  options?: FdSocketOptions,
): { raw: AsyncUnixStream; peer: AsyncUnixStream; socket: FdSocket } {
  const [raw, peer] = AsyncUnixStream.pair()
  const socket = FdSocket.from(raw, options)
  cleanup(t, socket, peer)
  return { raw, peer, socket }
}

/** A file of the test's own, open, and how many fds of this process point at it now. */
function trackedFile(t: ExecutionContext, prefix: string): { file: number; copies: () => number } {
  const set = fileSet(1, prefix)
  t.teardown(set.remove)
  const file = fs.openSync(set.files[0], 'r')
  t.teardown(() => fs.closeSync(file))
  const identity = fdIdentity(file)
  return { file, copies: () => openFdNumbers().filter((fd) => fdIdentityOrNull(fd) === identity).length }
}

/** Resolves once `condition()` holds, checking every 5 ms (wrap it in withTimeout). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await sleep(5)
}

function closed(socket: FdSocket): Promise<void> {
  if (socket.closed) return Promise.resolve()
  return withTimeout(new Promise<void>((resolve) => socket.once('close', () => resolve())), T, 'socket close')
}

function read(stream: AsyncUnixStream, size?: number): Promise<Buffer> {
  return withTimeout(stream.read(size), T, `read(${size ?? ''})`)
}

function takeFds(t: ExecutionContext, stream: { dequeue(): number | null }): number[] {
  const fds = dequeueAll(stream)
  t.teardown(() => closeAll(fds))
  return fds
}

/** A FIFO whose write end goes into `socket`'s outbound queue; our own copy is closed at once. */
function enqueueFifo(t: ExecutionContext, socket: { enqueue(fd: number): void }): Fifo {
  const fifo = makeFifo()
  t.teardown(() => fifo.close())
  socket.enqueue(fifo.writeFd)
  fs.closeSync(fifo.writeFd)
  fifo.writeFd = -1
  return fifo
}

/**
 * Reads `chunks` from `stream` one chunk at a time, taking the first byte of each on its
 * own: the fds that come with that byte are exactly the ones the chunk carried, and none
 * may come with the rest of it. `fdContents.get(i)` lists the file contents chunk i carries.
 */
async function readChunksByteExact(
  t: ExecutionContext,
  stream: AsyncUnixStream,
  chunks: Buffer[],
  fdContents: Map<number, string[]>,
): Promise<void> {
  const problems: string[] = []
  for (const [i, chunk] of chunks.entries()) {
    if (chunk.length === 0) continue
    const first = await read(stream, 1)
    if (first[0] !== chunk[0]) problems.push(`chunk ${i}: first byte ${first[0]} != ${chunk[0]}`)
    const got = takeFds(t, stream).map((fd) => readAt(fd))
    const want = fdContents.get(i) ?? []
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      problems.push(`chunk ${i}: fds with its first byte ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`)
    }
    if (chunk.length > 1) {
      const rest = await readExactly(stream, chunk.length - 1)
      if (!rest.equals(chunk.subarray(1))) problems.push(`chunk ${i}: bytes differ`)
      const stray = takeFds(t, stream)
      if (stray.length > 0) problems.push(`chunk ${i}: ${stray.length} fds came after its first byte`)
    }
  }
  t.deepEqual(problems, [])
}

test.serial(
  'pipe: a 64 MiB file through FdSocket.pair arrives whole (sha256) with bounded buffers and memory',
  async (t) => {
    const dir = tmpDir('fdq-big-')
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const file = path.join(dir, 'big.bin')
    const SIZE = 64 << 20
    const expected = crypto.createHash('sha256')
    const out = fs.openSync(file, 'w')
    for (let written = 0; written < SIZE; written += 1 << 20) {
      const block = crypto.randomBytes(1 << 20)
      expected.update(block)
      fs.writeSync(out, block)
    }
    fs.closeSync(out)

    // Sample live memory: collect garbage before each sample, so that what is measured is
    // what the streams hold, not Buffers nobody references any more.
    v8.setFlagsFromString('--expose-gc')
    const gc = vm.runInNewContext('gc') as () => void
    gc()
    await sleep(50)
    gc()
    const base = process.memoryUsage().rss
    const [a, b] = FdSocket.pair()
    cleanup(t, a, b)
    let peak = base
    let maxWritable = 0
    let maxReadable = 0
    // One sample per MiB received, at the end of the consumer's pause (when the buffers are
    // fullest), not one per 40 ms: a full gc() on a clock takes the whole CPU of a slow
    // machine and starved the transfer (it timed out at about 10x slower).
    const sample = () => {
      gc()
      peak = Math.max(peak, process.memoryUsage().rss)
      maxWritable = Math.max(maxWritable, a.writableLength)
      maxReadable = Math.max(maxReadable, b.readableLength)
    }
    // A consumer slower than the file: without backpressure the file would pile up in memory.
    const hash = crypto.createHash('sha256')
    let received = 0
    const slow = new Writable({
      write(chunk: Buffer, _encoding, cb) {
        hash.update(chunk)
        const before = received
        received += chunk.length
        if (Math.floor(received / (1 << 20)) !== Math.floor(before / (1 << 20))) {
          setTimeout(() => {
            sample()
            cb()
          }, 4)
        } else cb()
      },
    })
    await withTimeout(
      Promise.all([pipeline(fs.createReadStream(file), a), pipeline(b, slow)]),
      60_000,
      '64 MiB transfer',
    )
    t.is(received, SIZE)
    t.is(hash.digest('hex'), expected.digest('hex'))
    const growth = (peak - base) / 2 ** 20
    t.log(
      `peak RSS growth ${growth.toFixed(1)} MiB, max writableLength ${maxWritable}, max readableLength ${maxReadable}`,
    )
    t.true(growth < 32, `peak live RSS growth ${growth.toFixed(1)} MiB must stay well under the 64 MiB file`)
    t.true(maxWritable <= 1 << 20, `writable buffer stayed bounded (${maxWritable})`)
    t.true(maxReadable <= 1 << 20, `readable buffer stayed bounded (${maxReadable})`)
  },
)

test.serial(
  'many connections receiving at once: the event loop still turns between reads (at most a few MiB between two immediates), and every byte arrives',
  async (t) => {
    // Each connection's peer keeps writing as fast as it can. A push reader that read again
    // within one loop callback for as long as data came held that callback, and the
    // process's timers and immediates, for seconds (hundreds of MiB between two immediates).
    const CONNS = 20
    const EACH = 16 << 20
    // The JS-thread runtime reads at most 2 MiB per loop callback, and four kinds of its
    // callbacks may come in one turn of the loop (reactor, next turn, timer, wake-up); the
    // threaded one hands batches over through a threadsafe function, whose calls Node
    // makes up to 1,000 at a time (64 KiB each at most).
    const MOST = runtimeInfo().driver === 'libuv' ? 8 << 20 : 64 << 20
    const before = await settledOpenFds()
    const where = tmpSocketPath()
    let received = 0
    let sinceImmediate = 0
    let most = 0
    let ended = 0
    let ticking = true
    const tick = () => {
      most = Math.max(most, sinceImmediate)
      sinceImmediate = 0
      if (ticking) setImmediate(tick)
    }
    setImmediate(tick)
    const server = createServer()
    t.teardown(() => {
      if (server.listening) server.close()
    })
    const allEnded = new Promise<void>((resolve, reject) => {
      server.on('connection', (socket: FdSocket) => {
        socket.on('error', reject)
        socket.on('data', (chunk: Buffer) => {
          received += chunk.length
          sinceImmediate += chunk.length
        })
        socket.on('end', () => {
          socket.end()
          if (++ended === CONNS) resolve()
        })
      })
    })
    await new Promise<void>((resolve) => server.listen(where, resolve))
    const writer = spawn(
      'python3',
      [path.join(ROOT, '__test__', 'fixtures', 'fan-in-writer.py'), where, String(CONNS), String(EACH)],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    )
    const exited = new Promise<number | null>((resolve) => writer.on('close', resolve))
    t.teardown(() => writer.kill())
    try {
      await withTimeout(allEnded, 120_000, `${CONNS} connections of ${EACH >> 20} MiB`)
    } finally {
      ticking = false
    }
    t.is(await withTimeout(exited, 20_000, 'the writer'), 0)
    t.is(received, CONNS * EACH)
    t.log(`at most ${(most / 2 ** 20).toFixed(1)} MiB between two immediates`)
    t.true(most <= MOST, `${(most / 2 ** 20).toFixed(1)} MiB arrived between two immediates`)
    await new Promise<void>((resolve) => server.close(() => resolve()))
    t.is(await settledOpenFds(before), before)
  },
)

test.serial(
  'received chunks that JS keeps are never written over: a read buffer serves again only once its Buffer was collected',
  async (t) => {
    // Bulk chunks are lent out as external Buffers whose memory later reads reuse once the
    // garbage collector has freed them. Every third chunk is kept, with a copy taken on
    // arrival (the chunk itself, or only a view of its memory: a subarray, or a Uint8Array
    // over its ArrayBuffer); the others are dropped, and collections are forced all along. A
    // buffer reused too early would change a kept chunk.
    v8.setFlagsFromString('--expose-gc')
    const gc = vm.runInNewContext('gc') as () => void
    const BLOCKS = 384
    const check = async (
      label: string,
      transfer: (nextBlock: () => Buffer, onChunk: (chunk: Buffer) => void) => Promise<void>,
    ) => {
      const sent = crypto.createHash('sha256')
      const got = crypto.createHash('sha256')
      const kept: Array<[Uint8Array, Buffer]> = []
      let chunks = 0
      let large = 0
      let received = 0
      const nextBlock = () => {
        const block = crypto.randomBytes(1 << 16)
        sent.update(block)
        return block
      }
      await withTimeout(
        transfer(nextBlock, (chunk) => {
          got.update(chunk)
          received += chunk.length
          if (chunk.length > 32 * 1024) large++
          const keep = chunks++ % 9
          if (keep === 0) kept.push([chunk, Buffer.from(chunk)])
          else if (keep === 3) kept.push([chunk.subarray(1), Buffer.from(chunk.subarray(1))])
          else if (keep === 6) {
            const view = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length)
            kept.push([view, Buffer.from(view)])
          }
          if (chunks % 40 === 0) gc()
        }),
        60_000,
        `${label}: 24 MiB transfer`,
      )
      gc()
      await sleep(20)
      gc()
      t.is(received, BLOCKS << 16, label)
      t.is(got.digest('hex'), sent.digest('hex'), label)
      t.true(large > 0, `${label}: some chunks were lent-out read buffers (over 32 KiB)`)
      const changed = kept.filter(([chunk, copy]) => !copy.equals(chunk)).length
      t.is(changed, 0, `${label}: ${changed} of ${kept.length} kept chunks were written over`)
    }

    const [a, b] = FdSocket.pair()
    cleanup(t, a, b)
    await check('FdSocket', async (nextBlock, onChunk) => {
      b.on('data', onChunk)
      const ended = onceEvent(b, 'end', 60_000)
      for (let i = 0; i < BLOCKS; i++) if (!a.write(nextBlock())) await onceEvent(a, 'drain')
      a.end()
      await ended
    })

    // Each read starts before its block is written, so that it waits and reads in a task:
    // without a signal it starts with the next event, with one it waits for readiness.
    for (const signal of [undefined, new AbortController().signal]) {
      const [c, d] = AsyncUnixStream.pair()
      cleanup(t, c, d)
      await check(`AsyncUnixStream${signal ? ' with a signal' : ''}`, async (nextBlock, onChunk) => {
        for (let i = 0; i < BLOCKS; i++) {
          const reading = d.read(65536, { signal })
          await c.write(nextBlock())
          let missing = 1 << 16
          for (let chunk = await reading; ; chunk = await d.read(missing, { signal })) {
            onChunk(chunk)
            missing -= chunk.length
            if (chunk.length === 0 || missing === 0) break
          }
        }
      })
    }
  },
)

/** Chunks `[i]` + filler, with some fds enqueued before some chunks. */
function orderingPlan(count: number, size: (i: number) => number) {
  const set = fileSet(count, 'chunk-')
  const extra = fileSet(count, 'extra-')
  const chunks: Buffer[] = []
  const fdContents = new Map<number, string[]>()
  for (let i = 0; i < count; i++) {
    const head = Buffer.from(`[${i}]`)
    chunks.push(Buffer.concat([head, Buffer.alloc(Math.max(0, size(i) - head.length), 0x61 + (i % 26))]))
    const carries: string[] = []
    if (i % 5 === 2) carries.push(set.contents[i])
    if (i % 11 === 0) carries.push(set.contents[i], extra.contents[i])
    if (carries.length) fdContents.set(i, carries)
  }
  /** Enqueues the files chunk i carries (before writing it). */
  function enqueueFor(socket: FdSocket, i: number) {
    for (const content of fdContents.get(i) ?? []) {
      const [kind, n] = content.split('-')
      enqueueFile(socket, (kind === 'chunk' ? set : extra).files[Number(n)])
    }
  }
  return {
    chunks,
    fdContents,
    enqueueFor,
    remove() {
      set.remove()
      extra.remove()
    },
  }
}

/** Calls `action` with `Buffer.concat` counting its calls; the count. */
function concatCalls(action: () => void): number {
  const concat = Buffer.concat
  let calls = 0
  Buffer.concat = ((...args: Parameters<typeof Buffer.concat>) => {
    calls++
    return concat(...args)
  }) as typeof Buffer.concat
  try {
    action()
  } finally {
    Buffer.concat = concat
  }
  return calls
}

test.serial(
  'a batch of 1,500 chunks, more than one sendmsg takes and than the socket holds, goes out as it is (never joined): every chunk byte-exact with its fds',
  async (t) => {
    const { socket, peer } = socketAndPeer(t)
    const set = fileSet(16, 'batch-')
    t.teardown(set.remove)
    const chunks: Buffer[] = []
    const fdContents = new Map<number, string[]>()
    // 1,500 chunks (sendmsg takes at most 1,024 slices), 15 of them of 300 KB (more than
    // the socket's buffers: the rest waits, lent from the chunks themselves).
    for (let i = 0; i < 1500; i++) {
      const head = Buffer.from(`<${i}>`)
      const size = i % 100 === 50 ? 300_000 : 8 + ((i * 37) % 90)
      chunks.push(Buffer.concat([head, Buffer.alloc(Math.max(0, size - head.length), 0x61 + (i % 26))]))
      if (i % 97 === 3) fdContents.set(i, [set.contents[fdContents.size]])
    }
    socket.cork()
    for (const [i, chunk] of chunks.entries()) {
      for (const content of fdContents.get(i) ?? []) enqueueFile(socket, set.files[Number(content.split('-')[1])])
      socket.write(chunk)
    }
    const written = onceEvent(socket, 'drain')
    t.is(
      concatCalls(() => socket.uncork()),
      0,
      'the batch reached native code without a Buffer.concat',
    )
    await readChunksByteExact(t, peer, chunks, fdContents)
    await withTimeout(written, T, 'drain')
    t.is(socket.queuedOutboundFds, 0)
  },
)

test.serial(
  'a chunk of a waiting batch detached before its turn: the write fails with ERR_INVALID_STATE on the JS-thread runtime (copied and sent whole under threads), and only real bytes go out',
  async (t) => {
    const { socket, peer } = socketAndPeer(t)
    const size = 4 << 20
    const first = Buffer.alloc(size, 0x31)
    const second = Buffer.alloc(size, 0x32)
    const failed = new Promise<string>((resolve) => {
      socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? String(error)))
      socket.on('finish', () => resolve('finished'))
    })
    socket.cork()
    socket.write(first)
    socket.write(second)
    socket.uncork()
    socket.end()
    // The batch waits for room: its second chunk goes away meanwhile.
    structuredClone(second.buffer, { transfer: [second.buffer as ArrayBuffer] })
    const { data: received, fds } = await readToEnd(peer)
    closeAll(fds)
    const outcome = await withTimeout(failed, T, 'error or finish')
    t.true(
      received.subarray(0, size).every((byte) => byte === 0x31),
      'the first chunk comes first, as it was',
    )
    if (runtimeInfo().driver === 'threads') {
      t.is(outcome, 'finished')
      t.is(received.length, 2 * size)
      t.true(received.subarray(size).every((byte) => byte === 0x32))
    } else {
      // All of the first chunk, which is still there, and nothing after it.
      t.is(outcome, 'ERR_INVALID_STATE')
      t.is(received.length, size)
    }
  },
)

test('createServer({ pauseOnConnect: true }): an accepted socket reads nothing until resume(), so it is handed over with its bytes and fds', async (t) => {
  const sock = tmpSocketPath()
  const accepted: FdSocket[] = []
  const arrived = new EventEmitter()
  const server = createServer({ pauseOnConnect: true }, (socket) => {
    accepted.push(socket)
    arrived.emit('socket')
  })
  cleanup(t, server)
  server.listen(sock)
  await withTimeout(onceEvent(server, 'listening'), T, 'listening')
  const file = tmpFile('rides with the handed-over connection')
  const next = async (): Promise<FdSocket> => {
    if (accepted.length === 0) await withTimeout(onceEvent(arrived, 'socket'), T, 'a connection')
    return accepted.shift()!
  }

  // 1. Bytes and an fd sent before the server touches the connection stay in it.
  const client = connect(sock)
  cleanup(t, client)
  await withTimeout(onceEvent(client, 'connect'), T, 'connect')
  enqueueFile(client, file)
  await withTimeout(new Promise<void>((resolve) => client.write('hello', () => resolve())), T, 'write')
  const paused = await next()
  cleanup(t, paused)
  t.true(paused.isPaused())
  t.is(paused.readableFlowing, false)
  // Time in which a socket that reads ahead reads (as one made without the option does).
  await sleep(100)
  t.is(paused.bytesRead, 0, 'nothing read')
  t.is(paused.readableLength, 0)
  // Handed over (a duplicate rides on a write), then closed here: the new owner reads
  // all of it.
  const [here, there] = AsyncUnixStream.pair()
  cleanup(t, here, there)
  here.enqueue(paused)
  await here.write('h')
  paused.destroy()
  await withTimeout(there.read(), T, 'the hand-over')
  const [fd] = takeFds(t, there)
  const adopted = new FdSocket({ fd })
  cleanup(t, adopted)
  const handed: number[] = []
  adopted.on('fds', (fds: FdsArrived) => handed.push(...fds))
  t.is((await withTimeout(onceEvent(adopted, 'data'), T, 'the adopted socket reads'))[0].toString(), 'hello')
  t.is(handed.length, 1)
  t.is(fdIdentity(handed[0]), pathIdentity(file))
  closeAll(handed)

  // 2. resume() starts reading, as net's does.
  const second = connect(sock)
  cleanup(t, second)
  await withTimeout(onceEvent(second, 'connect'), T, 'connect')
  second.write('hi')
  const resumed = await next()
  cleanup(t, resumed)
  const data = onceEvent(resumed, 'data')
  resumed.resume()
  t.is((await withTimeout(data, T, 'data after resume()'))[0].toString(), 'hi')
})

test("connect({ path, ...options }, cb) and socket.connect({ path }, cb), net's options form, connect and carry an fd", async (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  cleanup(t, listener)
  const file = tmpFile('over an options-form connect')
  const made = [
    (cb: () => void) => connect({ path: sock, maxQueuedFds: 5 }, cb),
    (cb: () => void) => new FdSocket({ maxQueuedFds: 5 }).connect({ path: sock }, cb),
  ]
  for (const make of made) {
    let socket!: FdSocket
    const connected = new Promise<void>((resolve) => (socket = make(resolve)))
    cleanup(t, socket)
    t.is(socket.maxQueuedFds, 5)
    const stream = await withTimeout(listener.accept(), T, 'accept')
    cleanup(t, stream)
    await withTimeout(connected, T, 'the connect callback')
    enqueueFile(socket, file)
    socket.write('hi')
    t.is((await read(stream)).toString(), 'hi')
    const fds = takeFds(t, stream)
    t.is(fdIdentity(fds[0]), pathIdentity(file))
  }
  t.is(codeOf(syncThrow(() => connect({} as any))), 'ERR_INVALID_ARG_TYPE', 'no path')
  t.is(
    codeOf(syncThrow(() => connect({ path: sock }, {} as any))),
    'ERR_INVALID_ARG_TYPE',
    'a callback that is not one',
  )
  t.is(codeOf(syncThrow(() => new FdSocket().connect({ path: 3 } as any))), 'ERR_INVALID_ARG_TYPE')
})

test.serial(
  'ordering: 150 chunks and fds written before connect; each fd rides on the chunk after its enqueue',
  async (t) => {
    const sock = tmpSocketPath()
    const listener = AsyncUnixListener.bind(sock)
    cleanup(t, listener)
    const plan = orderingPlan(150, (i) => 8 + ((i * 37) % 200))
    t.teardown(plan.remove)
    // An fd enqueued before an empty write rides on the next non-empty chunk.
    const emptyBefore = 60
    const fdContents = new Map(plan.fdContents)
    fdContents.set(emptyBefore, ['before-empty', ...(plan.fdContents.get(emptyBefore) ?? [])])
    const beforeEmpty = tmpFile('before-empty')
    const events: string[] = []
    const socket = connect(sock, () => events.push('connect'))
    cleanup(t, socket)
    t.true(socket.pending)
    for (const [i, chunk] of plan.chunks.entries()) {
      if (i === emptyBefore) {
        enqueueFile(socket, beforeEmpty)
        socket.write(Buffer.alloc(0))
      }
      plan.enqueueFor(socket, i)
      socket.write(chunk)
    }
    // end() before connect too: the half-close waits for every chunk.
    socket.end()
    t.deepEqual(events, [], "everything was written (and ended) before 'connect'")
    t.true(socket.pending)
    const stream = await withTimeout(listener.accept(), T, 'accept')
    cleanup(t, stream)
    await readChunksByteExact(t, stream, plan.chunks, fdContents)
    t.is((await read(stream)).length, 0, 'end of stream right after the last chunk')
    t.deepEqual(events, ['connect'])
  },
)

test.serial(
  'ordering: fds enqueued while 100+ earlier chunks are still buffered ride on the chunk after them',
  async (t) => {
    const { socket, peer: b } = socketAndPeer(t)
    const SIZE = 32 * 1024
    const plan = orderingPlan(150, () => SIZE)
    t.teardown(plan.remove)
    let bufferedAtLateEnqueue = 0
    for (const [i, chunk] of plan.chunks.entries()) {
      if (i === 140) bufferedAtLateEnqueue = socket.writableLength
      plan.enqueueFor(socket, i)
      socket.write(chunk)
    }
    t.true(bufferedAtLateEnqueue >= 120 * SIZE, `chunks buffered before the late enqueues: ${bufferedAtLateEnqueue}`)
    await withTimeout(readChunksByteExact(t, b, plan.chunks, plan.fdContents), 30_000, 'reading 150 chunks')
    socket.end()
    t.is((await read(b)).length, 0)
  },
)

test.serial(
  'ordering: a burst of 400 small chunks, fds and empty writes on a connected socket goes out in batches, each fd on its chunk',
  async (t) => {
    const { socket, peer: b } = socketAndPeer(t)
    const plan = orderingPlan(400, (i) => 5 + (i % 8))
    t.teardown(plan.remove)
    const emptyBefore = new Set([7, 123, 311])
    const fdContents = new Map(plan.fdContents)
    const extra = new Map<number, string>()
    for (const i of emptyBefore) {
      extra.set(i, tmpFile(`empty-${i}`))
      fdContents.set(i, [`empty-${i}`, ...(plan.fdContents.get(i) ?? [])])
    }
    t.teardown(() => {
      for (const file of extra.values()) fs.rmSync(path.dirname(file), { recursive: true, force: true })
    })
    // All in one tick: the first chunk goes out at once, the rest wait in the Writable's
    // buffer and reach the native side together, as one write with many fd boundaries.
    for (const [i, chunk] of plan.chunks.entries()) {
      if (emptyBefore.has(i)) {
        enqueueFile(socket, extra.get(i)!)
        socket.write(Buffer.alloc(0))
      }
      plan.enqueueFor(socket, i)
      socket.write(chunk)
    }
    t.true(socket.writableLength > 1000, `chunks buffered behind the first: ${socket.writableLength} bytes`)
    await withTimeout(readChunksByteExact(t, b, plan.chunks, fdContents), 30_000, 'reading 400 chunks')
    t.is(socket.queuedOutboundFds, 0)
  },
)

test.serial(
  "reading side: an 'fds' event hands its listener the fds of the chunk whose 'data' follows, in order; none are queued",
  async (t) => {
    const sock = tmpSocketPath()
    const plan = orderingPlan(150, (i) => 8 + ((i * 13) % 300))
    t.teardown(plan.remove)
    const deliveries: { start: number; end: number; fds: string[] }[] = []
    let text = ''
    let handed: number[] | null = null
    const problems: string[] = []
    const done = new Promise<void>((resolve, reject) => {
      const server = createServer((socket) => {
        socket.on('fds', (fds: FdsArrived) => {
          if (handed !== null) problems.push(`two 'fds' events before one chunk`)
          if (fds.truncated !== false) problems.push(`truncated is ${fds.truncated}`)
          if (fds.length === 0) problems.push(`an 'fds' event with no fds`)
          handed = [...fds]
        })
        socket.on('data', (chunk: Buffer) => {
          if (socket.queuedInboundFds !== 0) problems.push(`${socket.queuedInboundFds} fds queued as well`)
          const fds = handed ?? []
          handed = null
          const contents = fds.map((fd) => readAt(fd))
          closeAll(fds)
          deliveries.push({ start: text.length, end: text.length + chunk.length, fds: contents })
          text += chunk.toString('latin1')
        })
        socket.on('end', resolve)
        socket.on('error', reject)
      })
      cleanup(t, server)
      server.listen(sock, () => {
        const client = connect(sock)
        cleanup(t, client)
        for (const [i, chunk] of plan.chunks.entries()) {
          plan.enqueueFor(client, i)
          client.write(chunk)
        }
        client.end()
      })
    })
    await withTimeout(done, T, 'server side end')
    const all = Buffer.concat(plan.chunks).toString('latin1')
    t.is(text, all)
    t.deepEqual(problems, [])
    // Every fd came with the delivery that holds the first byte of its chunk, in order.
    let offset = 0
    const starts = plan.chunks.map((c) => {
      const s = offset
      offset += c.length
      return s
    })
    for (const d of deliveries) {
      const expected = plan.chunks
        .map((_, i) => i)
        .filter((i) => starts[i] >= d.start && starts[i] < d.end)
        .flatMap((i) => plan.fdContents.get(i) ?? [])
      t.deepEqual(d.fds, expected, `fds of delivery [${d.start}, ${d.end})`)
    }
    t.is(
      deliveries.reduce((n, d) => n + d.fds.length, 0),
      [...plan.fdContents.values()].flat().length,
    )
  },
)

test.serial(
  '200 concurrent clients pass 3 fds each to one server, which reads every file through its fd',
  async (t) => {
    const before = await settledOpenFds()
    const CLIENTS = 200
    const set = fileSet(CLIENTS * 3, 'f-')
    t.teardown(set.remove)
    const content = (c: number, j: number) => `client-${c}-fd-${j}`
    for (let c = 0; c < CLIENTS; c++) for (let j = 0; j < 3; j++) fs.writeFileSync(set.files[c * 3 + j], content(c, j))
    const sock = tmpSocketPath()
    const verified = new Map<number, string[]>()
    const problems: string[] = []
    const serverSides: FdSocket[] = []
    const server = createServer((socket) => {
      serverSides.push(socket)
      let data = ''
      const got: number[] = []
      socket.on('data', (chunk: Buffer) => {
        data += chunk.toString()
        got.push(...dequeueAll(socket))
      })
      socket.on('end', () => {
        const c = Number(/^client-(\d+)$/.exec(data)?.[1])
        const contents = got.map((fd) => readAt(fd))
        const same = got.every((fd, j) => fdIdentity(fd) === pathIdentity(set.files[c * 3 + j]))
        closeAll(got)
        if (!same) problems.push(`client ${c}: an fd is not the file sent`)
        verified.set(c, contents)
      })
    })
    cleanup(t, server)
    await withTimeout(new Promise<void>((resolve) => server.listen(sock, resolve)), T, 'listening')
    const clients = Array.from({ length: CLIENTS }, (_, c) => {
      const client = connect(sock)
      for (let j = 0; j < 3; j++) enqueueFile(client, set.files[c * 3 + j])
      client.end(`client-${c}`)
      client.resume()
      return client
    })
    await withTimeout(Promise.all(clients.map((c) => closed(c))), 30_000, 'every client closed')
    await withTimeout(Promise.all(serverSides.map((s) => closed(s))), T, 'every server-side socket closed')
    t.is(serverSides.length, CLIENTS)
    t.deepEqual(problems, [])
    t.is(verified.size, CLIENTS)
    for (let c = 0; c < CLIENTS; c++) {
      t.deepEqual(verified.get(c), [content(c, 0), content(c, 1), content(c, 2)], `client ${c}`)
    }
    await withTimeout(new Promise<void>((resolve) => server.close(() => resolve())), T, 'server close')
    t.is(await settledOpenFds(before), before, 'every socket and fd closed again')
  },
)

test.serial("write() returns the real backpressure flag, and 'drain' follows", async (t) => {
  const HWM = 16 * 1024
  const [a, b] = FdSocket.pair({ writableHighWaterMark: HWM })
  cleanup(t, a, b)
  const chunk = Buffer.alloc(4096, 0x42)
  // Like net.Socket, a write the kernel takes at once completes at once, so the flag only
  // turns false once the socket buffer is full and chunks pile up in the write buffer.
  const flags: boolean[] = []
  for (let i = 0; i < 4096 && flags.at(-1) !== false; i++) {
    const ok = a.write(chunk)
    flags.push(ok)
    t.is(ok, a.writableLength < HWM, `write ${i}: flag matches writableLength ${a.writableLength}`)
  }
  t.is(flags.at(-1), false, 'write() turned false once the buffer was full')
  t.true(flags.slice(0, -1).every(Boolean))
  const first = flags.length * chunk.length
  const received: Buffer[] = []
  const collect = (c: Buffer) => received.push(c)
  b.on('data', collect)
  await onceEvent(a, 'drain', T)
  b.pause()
  b.off('data', collect)

  // Real backpressure through the socket: b does not consume, so the kernel buffer and b's
  // readable buffer fill, write() stays false and no 'drain' comes until b reads.
  const block = crypto.randomBytes(64 * 1024)
  const sent: Buffer[] = []
  let total = 0
  let stuck = false
  while (total < 32 << 20) {
    const ok = a.write(block)
    sent.push(block)
    total += block.length
    if (ok) continue
    const drained = await Promise.race([onceEvent(a, 'drain', T).then(() => true), sleep(300).then(() => false)])
    if (!drained) {
      stuck = true
      break
    }
  }
  t.true(stuck, "write() turned false and no 'drain' came while the peer does not read")
  t.true(total < 4 << 20, `write() held back after ${total} bytes (kernel buffer + the peer's readable buffer)`)
  let got = received.reduce((n, c) => n + c.length, 0)
  const all = new Promise<void>((resolve) => {
    b.on('data', (c: Buffer) => {
      received.push(c)
      got += c.length
      if (got >= first + total) resolve()
    })
  })
  b.resume() // it was paused explicitly above, so a new listener alone does not resume it
  await withTimeout(onceEvent(a, 'drain', T), T, 'drain after the peer reads')
  await withTimeout(all, T, 'every byte')
  const data = Buffer.concat(received)
  t.true(data.subarray(0, first).equals(Buffer.alloc(first, 0x42)))
  t.true(data.subarray(first).equals(Buffer.concat(sent)))
})

test.serial(
  'a write of the highWaterMark or more that the kernel takes at once returns true, as net.Socket’s',
  async (t) => {
    // 4 KiB: an empty Unix socket takes that at once everywhere (macOS's send space is 8 KiB).
    const HWM = 4096
    const [a, b] = FdSocket.pair({ writableHighWaterMark: HWM })
    cleanup(t, a, b)
    const chunk = crypto.randomBytes(HWM)
    t.true(a.write(chunk), 'no drain to wait for')
    t.is(a.writableLength, 0)
    const got: Buffer[] = []
    let length = 0
    await withTimeout(
      new Promise<void>((resolve) =>
        b.on('data', (c: Buffer) => {
          got.push(c)
          length += c.length
          if (length === chunk.length) resolve()
        }),
      ),
      T,
      'the chunk',
    )
    t.true(Buffer.concat(got).equals(chunk))
  },
)

test.serial("a large write made before connect calls back after 'connect', as net.Socket's", async (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  cleanup(t, listener)
  const events: string[] = []
  const socket = connect(sock, { writableHighWaterMark: 4096 }, () => events.push('connect'))
  cleanup(t, socket)
  const done = new Promise<void>((resolve) =>
    socket.write(Buffer.alloc(4096, 0x62), () => {
      events.push('write callback')
      resolve()
    }),
  )
  await withTimeout(done, T, 'write callback')
  t.deepEqual(events, ['connect', 'write callback'])
  const stream = await withTimeout(listener.accept(), T, 'accept')
  cleanup(t, stream)
  t.true((await readExactly(stream, 4096)).equals(Buffer.alloc(4096, 0x62)))
})

test.serial('300 writeWithFds() calls that each go out at once carry their fd each; none is refused', async (t) => {
  const HWM = 4096
  const [a, b] = FdSocket.pair({ writableHighWaterMark: HWM })
  cleanup(t, a, b)
  const file = tmpFile('x')
  const fd = fs.openSync(file, 'r')
  t.teardown(() => fs.closeSync(fd))
  let bytes = 0
  const arrived: number[] = []
  b.on('fds', (fds: FdsArrived) => arrived.push(...fds))
  b.on('data', (c: Buffer) => (bytes += c.length))
  const chunk = Buffer.alloc(HWM, 0x61)
  for (let i = 1; i <= 300; i++) {
    // Each call's fd rides on its own chunk: the count of fds staged for the next chunk must
    // go back to 0 even when the chunk completed within write() (the 254th would be refused).
    a.writeWithFds(chunk, [fd])
    await withTimeout(
      until(() => bytes === i * HWM),
      T,
      `chunk ${i}`,
    )
  }
  t.is(arrived.length, 300)
  for (const got of arrived) t.deepEqual(fdIdentity(got), fdIdentity(fd))
  closeAll(arrived)
})

/**
 * A listener, `files` temp files and a socket connecting to the listener with
 * `maxQueuedFds`, whose `events` (of `logged`) are recorded in order; all undone at the end.
 */
function fdBoundSetup(t: ExecutionContext, files: number, maxQueuedFds: number, logged: string[]) {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  cleanup(t, listener)
  const set = fileSet(files, 'bound-fd-')
  t.teardown(set.remove)
  const events: string[] = []
  const socket = connect(sock, { maxQueuedFds })
  cleanup(t, socket)
  for (const event of logged) socket.on(event, () => events.push(event))
  return { listener, set, socket, events }
}

test.serial(
  "write() turns false once maxQueuedFds fds wait in the write buffer; 'drain' comes after connect",
  async (t) => {
    const { listener, set, socket, events } = fdBoundSetup(t, 6, 5, ['connect', 'drain'])
    t.is(socket.maxQueuedFds, 5)
    const flags: boolean[] = []
    const chunks: Buffer[] = []
    for (let i = 0; i < 5; i++) {
      enqueueFile(socket, set.files[i])
      chunks.push(Buffer.from(`c${i};`))
      flags.push(socket.write(chunks[i]))
    }
    t.deepEqual(flags, [true, true, true, true, false])
    t.true(socket.writableLength < socket.writableHighWaterMark, 'the bytes alone would not have said false')
    t.true(socket.writableNeedDrain, 'as write() said, until the drain')
    t.true(socket.pending)
    await withTimeout(new Promise<void>((resolve) => socket.once('drain', () => resolve())), T, 'drain')
    t.deepEqual(events, ['connect', 'drain'])
    t.false(socket.writableNeedDrain)
    // Once drained, writing fds goes on as normal.
    enqueueFile(socket, set.files[5])
    chunks.push(Buffer.from('c5;'))
    t.true(socket.write(chunks[5]))
    const stream = await withTimeout(listener.accept(), T, 'accept')
    cleanup(t, stream)
    await readChunksByteExact(t, stream, chunks, new Map(set.contents.map((c, i) => [i, [c]])))
  },
)

test.serial(
  "a socket that owed a 'drain' for its fds and then ended: writableNeedDrain false, no 'drain' before 'finish', as net's",
  async (t) => {
    const { listener, set, socket, events } = fdBoundSetup(t, 2, 2, ['drain', 'finish'])
    const flags: boolean[] = []
    for (let i = 0; i < 2; i++) {
      enqueueFile(socket, set.files[i])
      flags.push(socket.write(`c${i};`))
    }
    t.deepEqual(flags, [true, false])
    t.true(socket.writableNeedDrain)
    socket.end()
    t.false(socket.writableNeedDrain, 'ending: nothing more to write')
    const stream = await withTimeout(listener.accept(), T, 'accept')
    cleanup(t, stream)
    const { data, fds } = await readToEnd(stream)
    t.is(data.toString(), 'c0;c1;')
    t.is(fds.length, 2)
    closeAll(fds)
    if (!events.includes('finish')) await withTimeout(onceEvent(socket, 'finish'), T, 'finish')
    t.deepEqual(events, ['finish'])
  },
)

test.serial('end() half-closes only after every buffered write went out; the other direction stays open', async (t) => {
  const [a, b] = AsyncUnixStream.pair()
  cleanup(t, b)
  const socket = FdSocket.from(a)
  cleanup(t, socket)
  const blocks = Array.from({ length: 100 }, () => crypto.randomBytes(64 * 1024))
  const file = tmpFile('rides-on-the-last-chunk')
  let finished = false
  socket.on('finish', () => (finished = true))
  blocks.forEach((block, i) => {
    if (i === 99) enqueueFile(socket, file)
    socket.write(block)
  })
  socket.end()
  t.false(finished)
  const { data, fds } = await withTimeout(readToEnd(b), 30_000, 'read to end')
  t.teardown(() => closeAll(fds))
  t.true(data.equals(Buffer.concat(blocks)), 'every byte, in order, before end of stream')
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['rides-on-the-last-chunk'],
  )
  await withTimeout(
    (async () => {
      while (!finished) await sleep(5)
    })(),
    T,
    'finish',
  )
  // Only the write side is shut: the peer can still send to us.
  t.false(socket.destroyed)
  const reply = onceEvent(socket, 'data')
  await b.write('reply')
  t.is(String((await reply)[0]), 'reply')
  b.close()
  await closed(socket)
})

test.serial('allowHalfOpen false (default): when the peer ends, the socket ends its side too and closes', async (t) => {
  const [a, b] = FdSocket.pair()
  cleanup(t, a, b)
  t.false(a.allowHalfOpen)
  const events: string[] = []
  for (const name of ['end', 'finish', 'close']) a.on(name, () => events.push(`a:${name}`))
  for (const name of ['end', 'finish', 'close']) b.on(name, () => events.push(`b:${name}`))
  a.resume()
  b.resume()
  b.end()
  await Promise.all([closed(a), closed(b)])
  t.true(a.writableEnded, 'a ended its side by itself')
  for (const e of ['a:end', 'a:finish', 'a:close', 'b:end', 'b:finish', 'b:close']) t.true(events.includes(e), e)
  t.true(events.indexOf('a:end') < events.indexOf('a:close'))
})

test.serial('allowHalfOpen true: after the peer ended, the socket can still write, fds too', async (t) => {
  const [a, b] = FdSocket.pair({ allowHalfOpen: true })
  cleanup(t, a, b)
  t.true(a.allowHalfOpen)
  a.resume()
  b.end()
  await onceEvent(a, 'end', T)
  await sleep(50)
  t.true(a.writable, 'still writable after the peer ended')
  t.false(a.writableEnded)
  t.false(a.destroyed)
  const file = tmpFile('half-open')
  enqueueFile(a, file)
  const got = onceEvent(b, 'data')
  a.write('after-end')
  const [chunk] = await got
  t.is(String(chunk), 'after-end')
  const fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['half-open'],
  )
  b.resume()
  a.end()
  await Promise.all([closed(a), closed(b)])
})

test.serial('destroy() is idempotent and closes everything: the socket, unsent fds and undequeued fds', async (t) => {
  const before = await settledOpenFds()
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  cleanup(t, listener)

  const [a, b] = FdSocket.pair()
  const [c, d] = FdSocket.pair()
  cleanup(t, a, b, c, d)
  // 1. Received by b, never dequeued.
  const undequeued = enqueueFifo(t, a)
  a.write('x')
  await onceEvent(b, 'data', T)
  t.is(b.queuedInboundFds, 1)
  // 2. Connected, fd enqueued, never written.
  const unsent = enqueueFifo(t, a)
  t.true(unsent.isWriterOpen(), 'the queue holds a duplicate')
  // 4. Behind a big write the peer does not read: chunk and fd buffered.
  d.pause()
  c.write(Buffer.alloc(4 << 20))
  const behind = enqueueFifo(t, c)
  c.write('behind')

  // 3. Before connect: fd staged with a buffered chunk. Made right before the destroy, with
  // no await in between, so the connect cannot have completed (else the chunk would have
  // gone out with the fd, which then sits in the unaccepted connection, not in our queue).
  const early = connect(sock)
  cleanup(t, early)
  const staged = enqueueFifo(t, early)
  early.write('never sent')

  let closes = 0
  for (const s of [a, b, early, c, d]) s.on('close', () => closes++)
  const errors: unknown[] = []
  for (const s of [a, b, early, c, d]) s.on('error', (e) => errors.push(e))
  for (const s of [a, b, early, c, d]) {
    s.destroy()
    s.destroy()
  }
  t.notThrows(() => a.destroy())
  await Promise.all([a, b, early, c, d].map((s) => closed(s)))
  await sleep(50)
  t.is(closes, 5, "exactly one 'close' each")
  t.deepEqual(errors, [])
  t.false(unsent.isWriterOpen(), 'fd enqueued and never written is closed')
  t.false(undequeued.isWriterOpen(), 'fd received and never dequeued is closed')
  t.false(staged.isWriterOpen(), 'fd staged before connect is closed')
  t.false(behind.isWriterOpen(), 'fd buffered behind a pending write is closed')
  for (const s of [a, b, early, c, d]) {
    t.is(s.fd, -1)
    t.is(syncThrow(() => s.dequeue()).code, 'ERR_SOCKET_CLOSED')
    t.is(syncThrow(() => s.enqueue(0)).code, 'ERR_SOCKET_CLOSED')
  }
  listener.close()
  for (const fifo of [unsent, undequeued, staged, behind]) fifo.close()
  t.is(await settledOpenFds(before), before, 'fd count back to where it was')
})

test.serial(
  "without an 'fds' listener, the fds of a chunk wait in the queue, dequeue-able in its 'data' handler (pair)",
  async (t) => {
    const [a, b] = FdSocket.pair()
    cleanup(t, a, b)
    const set = fileSet(2, 'in-handler-')
    t.teardown(set.remove)
    const fds: number[] = []
    t.teardown(() => closeAll(fds))
    const got = new Promise<string>((resolve) =>
      b.once('data', (chunk: Buffer) => {
        fds.push(...dequeueAll(b))
        resolve(chunk.toString())
      }),
    )
    enqueueFile(a, set.files[0])
    enqueueFile(a, set.files[1])
    a.write('two')
    t.is(await withTimeout(got, T, 'data'), 'two')
    t.deepEqual(
      fds.map((fd) => readAt(fd)),
      set.contents,
    )
    t.deepEqual(
      fds.map((fd) => fdIdentity(fd)),
      set.files.map(pathIdentity),
    )
  },
)

test.serial(
  "'fds' listeners own what they are handed; once the last is removed, fds queue for dequeue() again (pair)",
  async (t) => {
    const [a, b] = FdSocket.pair()
    cleanup(t, a, b)
    const set = fileSet(3, 'handed-')
    t.teardown(set.remove)
    const order: string[] = []
    const owned: number[] = []
    t.teardown(() => closeAll(owned))
    const onFds = (fds: FdsArrived) => {
      order.push(`fds:${fds.length}:${b.queuedInboundFds}:${fds.truncated}`)
      owned.push(...fds)
    }
    b.on('fds', onFds)
    const first = new Promise<string>((resolve) =>
      b.once('data', (chunk: Buffer) => {
        order.push(`data:${b.dequeue()}`)
        resolve(chunk.toString())
      }),
    )
    enqueueFile(a, set.files[0])
    enqueueFile(a, set.files[1])
    a.write('two')
    t.is(await withTimeout(first, T, 'data'), 'two')
    t.deepEqual(order, ['fds:2:0:false', 'data:null'], 'handed to the listener, nothing queued')
    t.deepEqual(
      owned.map((fd) => fdIdentity(fd)),
      set.files.slice(0, 2).map(pathIdentity),
    )
    t.true(
      owned.every((fd) => (fdFlags(fd) & O_CLOEXEC) !== 0),
      'close-on-exec',
    )
    b.off('fds', onFds)
    const second = new Promise<number | null>((resolve) => b.once('data', () => resolve(b.dequeue())))
    enqueueFile(a, set.files[2])
    a.write('one')
    const queued = await withTimeout(second, T, 'data')
    t.not(queued, null)
    owned.push(queued!)
    t.is(fdIdentity(queued!), pathIdentity(set.files[2]))
  },
)

test.serial(
  "a once('fds') listener: the fds of chunks that waited unread when it went away queue for dequeue(), in order",
  async (t) => {
    const [a, b] = FdSocket.pair()
    cleanup(t, a, b)
    const set = fileSet(3, 'once-')
    t.teardown(set.remove)
    const owned: number[] = []
    t.teardown(() => closeAll(owned))
    const handed: number[][] = []
    b.once('fds', (fds: FdsArrived) => {
      handed.push([...fds])
      owned.push(...fds)
    })
    // Three chunks, each with its fd, waiting unread (handed over for the listener).
    b.pause()
    for (let i = 0; i < 3; i++) {
      enqueueFile(a, set.files[i])
      a.write(String(i))
      await withTimeout(
        until(() => b.readableLength === i + 1),
        T,
        `chunk ${i} buffered`,
      )
    }
    const dequeued: Array<number | null> = []
    const all = new Promise<void>((resolve) =>
      b.on('data', (chunk: Buffer) => {
        const fd = b.dequeue()
        dequeued.push(fd)
        if (fd !== null) owned.push(fd)
        if (chunk.toString().endsWith('2')) resolve()
      }),
    )
    b.resume()
    await withTimeout(all, T, 'the three chunks')
    t.deepEqual(
      handed.map((fds) => fds.map(fdIdentity)),
      [[pathIdentity(set.files[0])]],
      'the listener got the first chunk',
    )
    // The rest went to the inbound queue when it was removed (right before the first
    // chunk's 'data'): dequeue-able in order, none lost.
    t.deepEqual(
      dequeued.filter((fd) => fd !== null).map((fd) => fdIdentity(fd!)),
      [pathIdentity(set.files[1]), pathIdentity(set.files[2])],
    )
    t.is(b.dequeue(), null)
  },
)

test.serial(
  'FdSocket.from(stream) whose stream is closed directly while chunks wait with fds: the socket fails with ERR_SOCKET_CLOSED, not silently',
  async (t) => {
    const { raw, peer, socket } = wrappedPair(t)
    const devnull = fs.openSync('/dev/null', 'r')
    t.teardown(() => fs.closeSync(devnull))
    let handed = 0
    socket.on('fds', (fds: FdsArrived) => {
      handed += fds.length
      closeAll(fds)
    })
    socket.pause()
    peer.enqueue(devnull)
    await peer.write('x')
    await withTimeout(
      until(() => socket.readableLength === 1),
      T,
      'the chunk buffered',
    )
    // Misuse (the socket owns the stream now): its held fds are closed with it.
    raw.close()
    const failed = new Promise<string | undefined>((resolve) =>
      socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code)),
    )
    socket.resume()
    t.is(await withTimeout(failed, T, "'error'"), 'ERR_SOCKET_CLOSED')
    t.is(handed, 0)
  },
)

test.serial(
  'FdSocket.from(stream) whose stream is closed directly, then written with an fd: the write fails with ERR_SOCKET_CLOSED and no copy of the fd staged for it is left',
  async (t) => {
    const { raw, peer, socket } = wrappedPair(t)
    const { file, copies } = trackedFile(t, 'refused-write-')
    // Misuse (the socket owns the stream now): the native side refuses the write itself.
    raw.close()
    socket.enqueue(file)
    t.is(copies(), 2)
    const failed = new Promise<NodeJS.ErrnoException>((resolve) => socket.on('error', resolve))
    const written = new Promise<Error | null | undefined>((resolve) => socket.write('x', resolve))
    const error = await withTimeout(failed, T, "'error'")
    t.is(error.code, 'ERR_SOCKET_CLOSED')
    t.is((await withTimeout(written, T, 'the write callback'))?.message, error.message)
    t.is(copies(), 1)
  },
)

test.serial(
  "setEncoding(): 'fds' still comes right before the 'data' of its chunk, set before the chunks or while they wait",
  async (t) => {
    const devnull = fs.openSync('/dev/null', 'r')
    t.teardown(() => fs.closeSync(devnull))
    const run = async (encoding: BufferEncoding, setBefore: boolean) => {
      const [a, b] = FdSocket.pair()
      cleanup(t, a, b)
      const log: string[] = []
      b.on('fds', (fds: FdsArrived) => {
        log.push(`fds:${fds.length}`)
        closeAll(fds)
      })
      if (setBefore) b.setEncoding(encoding)
      b.pause()
      // Two chunks, read one by one: four bytes that decode to more or fewer characters
      // than they are long, then two with an fd.
      a.write(Buffer.from([0xe9, 0xe9, 0xe9, 0xe9]))
      await withTimeout(
        until(() => b.readableLength > 0),
        T,
        'the first chunk',
      )
      const first = b.readableLength
      a.writeWithFds(Buffer.from([0x41, 0x00]), [devnull])
      await withTimeout(
        until(() => b.readableLength > first),
        T,
        'the second chunk',
      )
      if (!setBefore) b.setEncoding(encoding)
      const all = new Promise<void>((resolve) =>
        b.on('data', (data: string) => {
          log.push(`data:${Buffer.from(data, encoding).toString('hex')}`)
          if (log.join().endsWith('4100')) resolve()
        }),
      )
      b.resume()
      await withTimeout(all, T, `${encoding}: ${log.join(' ')}`)
      return log
    }
    for (const encoding of ['hex', 'latin1', 'utf16le'] as BufferEncoding[]) {
      t.deepEqual(await run(encoding, true), ['data:e9e9e9e9', 'fds:1', 'data:4100'], `${encoding}, set before`)
    }
    // Base64 decodes three bytes at a time: the fourth goes with the second chunk's.
    t.deepEqual(await run('base64', true), ['data:e9e9e9', 'fds:1', 'data:e94100'], 'base64, set before')
    // Set while both wait: Readable decodes them into one string, which the fds come before.
    t.deepEqual(await run('hex', false), ['fds:1', 'data:e9e9e9e94100'], 'hex, set while they wait')
  },
)

test.serial(
  "setEncoding('utf16le'): the fds of a last odd byte, which the decoder drops, go to the 'fds' listener before 'end'",
  async (t) => {
    const { a, b, devnull } = pairWithDevnull(t)
    const file = tmpFile('odd byte')
    const sent = fs.openSync(file, 'r')
    t.teardown(() => fs.closeSync(sent))
    b.setEncoding('utf16le')
    const log: string[] = []
    const received: number[] = []
    t.teardown(() => closeAll(received))
    b.on('fds', (fds: FdsArrived) => {
      log.push(`fds:${fds.length}`)
      received.push(...fds)
    })
    b.on('data', (text: string) => log.push(`data:${text}`))
    const ended = onceEvent(b, 'end', T).then(() => log.push('end'))
    a.writeWithFds(Buffer.from([0x61, 0x00]), [devnull])
    await withTimeout(
      until(() => log.includes('data:a')),
      T,
      `the first chunk (${log.join(' ')})`,
    )
    // A lone byte: half a UTF-16 unit, which the decoder drops at the end of the stream.
    a.writeWithFds(Buffer.from([0x62]), [sent])
    a.end()
    await ended
    t.deepEqual(log, ['fds:1', 'data:a', 'fds:1', 'end'])
    t.is(fdIdentity(received[1]), pathIdentity(file), "the odd byte's fd is the file sent with it")
  },
)

test("a lone fd received as number 0 reaches the 'fds' listener like any other", async (t) => {
  const file = tmpFile('through fd zero')
  const report = lastJson(await runFixture('fd-zero', [file]))
  t.is(report.events.length, 2, JSON.stringify(report))
  t.deepEqual(report.events[1], [0])
  t.is(report.content, 'through fd zero')
})

test("an FdSocket chunk that brings more fds than the scratch area holds (16,192 of them) hands them all to the 'fds' listener", async (t) => {
  // The child holds them all at once.
  const hard = execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim()
  if (hard !== 'unlimited' && Number(hard) < 17_000) {
    t.log(`not run: it needs 17,000 open fds, and the hard limit here is ${hard}`)
    t.pass()
    return
  }
  const report = lastJson(await runFixture('many-fds-chunk', [tmpFile('many')], { ulimit: 17_000, timeoutMs: 60_000 }))
  t.like(report, { same: 16_192, bytes: 64 })
  t.is(
    report.sizes.reduce((sum: number, size: number) => sum + size, 0),
    16_192,
  )
  // (The first message may come alone, as under the threads driver.)
  t.true(Math.max(...report.sizes) > 15_360, `one chunk held more than the scratch area: ${report.sizes}`)
})

test("an 'fds' listener that throws when handed the fds before 'end': the exception is uncaught, and both sockets still end and close", async (t) => {
  const report = lastJson(await runFixture('fds-at-end', []))
  t.deepEqual(report, {
    log: ['fds:1', 'data:a', 'fds:1', 'end'],
    caught: ['boom from the last fds'],
    destroyed: [true, true],
  })
})

test.serial(
  "'fds' listener and a small maxQueuedFds: a read(n) waiting for bytes still to come does not stop reading for good",
  async (t) => {
    const [a, b] = FdSocket.pair({ maxQueuedFds: 2 })
    cleanup(t, a, b)
    const devnull = fs.openSync('/dev/null', 'r')
    t.teardown(() => fs.closeSync(devnull))
    const log: string[] = []
    b.on('fds', (fds: FdsArrived) => {
      log.push(`fds:${fds.length}`)
      closeAll(fds)
    })
    b.on('readable', () => {
      let frame: Buffer | null
      while ((frame = b.read(4)) !== null) log.push(`frame:${frame.toString('hex')}`)
    })
    const ended = onceEvent(b, 'end', T)
    // One byte per chunk, each with an fd: the fds of unread chunks reach the bound while
    // the consumer waits for a 4-byte frame.
    for (let i = 0; i < 3; i++) {
      a.writeWithFds(Buffer.from([0x10 + i]), [devnull])
      await withTimeout(
        until(() => b.readableLength === i + 1),
        T,
        `chunk ${i} (${log.join(' ')})`,
      )
    }
    a.end(Buffer.from([0x13]))
    await withTimeout(ended, T, `'end' (${log.join(' ')})`)
    t.deepEqual(log, ['fds:1', 'fds:1', 'fds:1', 'frame:10111213'])
  },
)

test.serial(
  "'fds' listener and a small maxQueuedFds: a consumer that checks readableLength for a whole frame gets it, or ERR_FD_QUEUE_FULL past 253 fds more, never waits for good",
  async (t) => {
    for (const [pieces, fdsEach, outcome] of [
      [10, 1, 'frame'],
      [30, 10, 'ERR_FD_QUEUE_FULL'],
    ] as const) {
      const [a, b] = FdSocket.pair({ maxQueuedFds: 4 })
      cleanup(t, a, b)
      const { file, copies } = trackedFile(t, 'peek-')
      // One frame: a 4-byte length, then its body in `pieces` writes with fds each.
      const body = Buffer.alloc(pieces * 10, 7)
      const header = Buffer.alloc(4)
      header.writeUInt32BE(body.length)
      a.write(header)
      for (let i = 0; i < pieces; i++) a.writeWithFds(body.subarray(i * 10, (i + 1) * 10), Array(fdsEach).fill(file))
      let handed = 0
      b.on('fds', (fds: FdsArrived) => {
        handed += fds.length
        closeAll(fds)
      })
      const got = new Promise<string>((resolve) => {
        b.on('error', (error) => resolve(String(codeOf(error))))
        let need: number | null = null
        b.on('readable', () => {
          if (need === null) {
            if (b.readableLength < 4) return
            need = (b.read(4) as Buffer).readUInt32BE(0)
          }
          if (b.readableLength < need) return // waits, taking nothing more
          t.is((b.read(need) as Buffer).length, body.length)
          resolve('frame')
        })
      })
      t.is(await withTimeout(got, T, `the frame of ${pieces} pieces`), outcome)
      if (outcome === 'frame') t.is(handed, pieces * fdsEach)
      b.destroy()
      a.destroy()
      await withTimeout(
        until(() => copies() === 1),
        T,
        'every fd closed',
      )
    }
  },
)

/**
 * Decodes b's data as UTF-8 and logs its 'fds' (their count; the fds are closed) and 'data'
 * events; `ended` resolves at 'end'.
 */
function logDecoded(b: FdSocket) {
  b.setEncoding('utf8')
  const log: string[] = []
  b.on('fds', (fds: FdsArrived) => {
    log.push(`fds:${fds.length}`)
    closeAll(fds)
  })
  b.on('data', (text: string) => log.push(`data:${text}`))
  return { log, ended: onceEvent(b, 'end', T) }
}

test.serial(
  "'fds' listener, setEncoding('utf8') and a small maxQueuedFds: a character split across fd-carrying chunks does not stop reading for good",
  async (t) => {
    const [a, b] = FdSocket.pair({ maxQueuedFds: 1 })
    cleanup(t, a, b)
    const { file, copies } = trackedFile(t, 'split-char-')
    const { log, ended } = logDecoded(b)
    const bytes = Buffer.from('\u{1F600}')
    // The first three bytes, each with an fd: held for the listener (the character is not
    // complete, so nothing is emitted) once the reader took them; then the last byte.
    for (let i = 0; i < 3; i++) a.writeWithFds(bytes.subarray(i, i + 1), [file])
    await withTimeout(
      until(() => copies() === 4),
      T,
      `three fds received (${copies() - 1})`,
    )
    a.end(bytes.subarray(3))
    await withTimeout(ended, T, `'end' (${log.join(' ')})`)
    t.is(log.at(-1), 'data:\u{1F600}')
    t.is(log.filter((entry) => entry.startsWith('data')).length, 1)
    t.is(
      log.filter((entry) => entry.startsWith('fds')).reduce((sum, entry) => sum + Number(entry.slice(4)), 0),
      3,
    )
  },
)

test.serial(
  "setEncoding('utf8') and read(5) over many small fd-carrying chunks (a small maxQueuedFds): every character once, in order, every fd handed",
  async (t) => {
    // Reading stops and starts at the bound, so many small decoded chunks wait together:
    // Node 20's Readable returned a whole chunk for read(n) when n matched their count,
    // then threw (nodejs/node#61884). The socket joins them first.
    const [a, b] = FdSocket.pair({ maxQueuedFds: 1 })
    cleanup(t, a, b)
    const { file, copies } = trackedFile(t, 'decoded-')
    const text = 'é名😀aß€'.repeat(400)
    const bytes = Buffer.from(text)
    let sent = 0
    for (let at = 0, i = 0; at < bytes.length; i++) {
      const part = bytes.subarray(at, at + 1 + ((i * 5) % 7))
      at += part.length
      if (i % 3 === 0) {
        a.writeWithFds(part, [file])
        sent++
      } else a.write(part)
    }
    a.end()
    b.setEncoding('utf8')
    let handed = 0
    b.on('fds', (fds: FdsArrived) => {
      handed += fds.length
      closeAll(fds)
    })
    let out = ''
    b.on('readable', () => {
      for (let piece: string | null; (piece = b.read(5)) !== null;) {
        t.true(piece.length <= 5, `read(5) gave ${piece.length} characters`)
        out += piece
      }
    })
    await withTimeout(onceEvent(b, 'end', T), T, `'end' after ${out.length} of ${text.length} characters`)
    t.is(out, text)
    t.is(handed, sent)
    await withTimeout(
      until(() => copies() === 1),
      T,
      'every handed fd closed',
    )
  },
)

test.serial(
  "an 'fds' listener removed behind the socket's back (EventEmitter's own removeListener): the fds queue for dequeue()",
  async (t) => {
    const { a, b, devnull } = pairWithDevnull(t)
    const onFds = (fds: FdsArrived) => closeAll(fds)
    b.on('fds', onFds)
    b.pause()
    a.writeWithFds('x', [devnull])
    await withTimeout(
      until(() => b.readableLength === 1),
      T,
      'the chunk',
    )
    EventEmitter.prototype.removeListener.call(b, 'fds', onFds)
    const dequeued = new Promise<number | null>((resolve) => b.once('data', () => resolve(b.dequeue())))
    b.resume()
    const fd = await withTimeout(dequeued, T, "'data'")
    t.not(fd, null)
    if (fd !== null) {
      t.is(fdIdentity(fd), fdIdentity(devnull))
      fs.closeSync(fd)
    }
  },
)

test.serial('writeWithFds(data, fds, cb): the fds ride on the first byte of data, all or none', async (t) => {
  const [a, b] = FdSocket.pair()
  cleanup(t, a, b)
  const set = fileSet(2, 'with-fds-')
  t.teardown(set.remove)
  const opened = set.files.map((f) => fs.openSync(f, 'r'))
  t.teardown(() => closeAll(opened))
  const handed: number[][] = []
  t.teardown(() => closeAll(handed.flat()))
  b.on('fds', (fds: FdsArrived) => handed.push([...fds]))
  const data: string[] = []
  b.on('data', (chunk: Buffer) => data.push(chunk.toString()))
  const written = new Promise<void>((resolve, reject) =>
    a.writeWithFds(Buffer.from('message one'), opened, (error) => (error ? reject(error) : resolve())),
  )
  t.is(typeof a.writeWithFds('message two', []), 'boolean')
  await withTimeout(written, T, 'the write callback')
  // Refused whole: nothing enqueued, nothing written.
  t.is(codeOf(syncThrow(() => a.writeWithFds('x', new Array(254).fill(opened[0])))), 'ERR_FD_QUEUE_FULL')
  t.is(codeOf(syncThrow(() => a.writeWithFds('', [opened[0]]))), 'ERR_FD_EMPTY_WRITE')
  t.is(codeOf(syncThrow(() => a.writeWithFds('x', [opened[0], 1e9]))), 'EBADF')
  t.is(codeOf(syncThrow(() => a.writeWithFds('x', opened[0] as any))), 'ERR_INVALID_ARG_TYPE')
  t.is(codeOf(syncThrow(() => a.writeWithFds(42 as any, [opened[0]]))), 'ERR_INVALID_ARG_TYPE')
  t.is(a.queuedOutboundFds, 0)
  a.end('end')
  await withTimeout(onceEvent(b, 'end', T), T, 'end')
  t.is(data.join(''), 'message onemessage twoend')
  t.is(handed.length, 1)
  t.deepEqual(
    handed[0].map((fd) => fdIdentity(fd)),
    set.files.map(pathIdentity),
  )
})

test('FdSocket.from(stream) keeps what the stream had: its pending read goes first, its queued fds (253 in all with the socket’s) and its bound stay', async (t) => {
  const [raw, peer] = AsyncUnixStream.pair()
  raw.maxQueuedFds = 7
  const file = tmpFile('queued on the stream before it was wrapped')
  enqueueFile(raw, file)
  // Called before the wrap: it gets the first bytes, and the socket what follows.
  const earlier = raw.read()
  const socket = FdSocket.from(raw)
  cleanup(t, socket, peer)
  t.is(socket.maxQueuedFds, 7, "the stream's bound stays")
  t.is(socket.queuedOutboundFds, 1, "the stream's queued fd counts")
  const [other, otherPeer] = AsyncUnixStream.pair()
  other.maxQueuedFds = 7
  const set = FdSocket.from(other, { maxQueuedFds: 3 })
  cleanup(t, set, otherPeer)
  t.is(set.maxQueuedFds, 3, 'unless the options set one')
  const chunks: string[] = []
  socket.on('data', (chunk) => chunks.push(String(chunk)))
  await peer.write('first')
  t.is(String(await withTimeout(earlier, T, 'the read called before the wrap')), 'first')
  const next = onceEvent(socket, 'data')
  await peer.write('second')
  await next
  t.deepEqual(chunks, ['second'], 'the socket read only what came after')
  // The fd queued on the stream rides on the socket's first write.
  socket.write('carrier')
  t.is((await read(peer)).toString(), 'carrier')
  const fds = takeFds(t, peer)
  t.is(fds.length, 1)
  t.is(fdIdentity(fds[0]), pathIdentity(file))
  t.is(socket.queuedOutboundFds, 0)

  // The stream's queued fds and the socket's ride on one write: 253 at most in all.
  const [full, fullPeer] = AsyncUnixStream.pair()
  const opened = fs.openSync(file, 'r')
  t.teardown(() => fs.closeSync(opened))
  for (let i = 0; i < 200; i++) full.enqueue(opened)
  const carrier = FdSocket.from(full)
  cleanup(t, carrier, fullPeer)
  for (let i = 0; i < 53; i++) carrier.enqueue(opened)
  t.is(codeOf(syncThrow(() => carrier.enqueue(opened))), 'ERR_FD_QUEUE_FULL', 'the 254th')
  t.is(carrier.queuedOutboundFds, 253, 'nothing changed')
  carrier.write('!')
  t.is((await read(fullPeer)).toString(), '!')
  const all = takeFds(t, fullPeer)
  t.is(all.length, 253)
  t.false(carrier.destroyed)
})

test.serial('FdSocket.from(asyncStream) wraps it; FdSocket.pair() gives two connected Duplexes', async (t) => {
  const { raw, peer, socket } = wrappedPair(t)
  t.true(socket instanceof Duplex)
  t.false(socket.pending)
  t.is(socket.fd, raw.fd)
  const file = tmpFile('from-async')
  enqueueFile(socket, file)
  socket.write('to-peer')
  t.is((await read(peer)).toString(), 'to-peer')
  const fds = takeFds(t, peer)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['from-async'],
  )
  enqueueFile(peer, file)
  const got = onceEvent(socket, 'data')
  await peer.write('to-socket')
  t.is(String((await got)[0]), 'to-socket')
  const back = takeFds(t, socket)
  t.is(fdIdentity(back[0]), pathIdentity(file))

  const [closedOne, other] = AsyncUnixStream.pair()
  closedOne.close()
  other.close()
  t.is(syncThrow(() => FdSocket.from(closedOne)).code, 'ERR_SOCKET_CLOSED')
  t.true(syncThrow(() => FdSocket.from({} as any)) instanceof TypeError)

  const [x, y] = FdSocket.pair()
  cleanup(t, x, y)
  t.true(x instanceof FdSocket && y instanceof FdSocket)
  t.true(fs.fstatSync(x.fd).isSocket())
  const toY = onceEvent(y, 'data')
  const toX = onceEvent(x, 'data')
  x.write('ping')
  y.write('pong')
  t.is(String((await toY)[0]), 'ping')
  t.is(String((await toX)[0]), 'pong')
})

test.serial(
  "server: address() is the path; close(cb) removes the file at once and emits 'close' after the connections close",
  async (t) => {
    const sock = tmpSocketPath()
    const serverSides: FdSocket[] = []
    const server = createServer((s) => {
      serverSides.push(s)
      s.resume()
    })
    cleanup(t, server)
    t.is(server.address(), null)
    let listening = false
    server.on('listening', () => (listening = true))
    await withTimeout(new Promise<void>((resolve) => server.listen(sock, resolve)), T, 'listen')
    t.true(listening)
    t.true(server.listening)
    t.is(server.address(), sock)
    t.true(fs.statSync(sock).isSocket())
    const client = connect(sock)
    cleanup(t, client)
    client.resume()
    await onceEvent(client, 'connect', T)
    await withTimeout(
      (async () => {
        while (serverSides.length === 0) await sleep(5)
      })(),
      T,
      'connection',
    )

    const order: string[] = []
    server.close((error) => order.push(`cb:${error ? codeOf(error) : 'ok'}`))
    server.on('close', () => order.push('close'))
    t.false(fs.existsSync(sock), 'the socket file is gone right away')
    t.is(server.address(), null)
    t.false(server.listening)
    const refused = connect(sock)
    cleanup(t, refused)
    t.is(codeOf((await onceEvent(refused, 'error', T).catch((e) => [e]))[0]), 'ENOENT')
    await sleep(200)
    t.deepEqual(order, [], "no 'close' while a connection is open")
    serverSides[0].on('close', () => order.push('connection closed'))
    client.end()
    await withTimeout(
      (async () => {
        while (order.length < 3) await sleep(5)
      })(),
      T,
      "server 'close'",
    )
    t.is(order[0], 'connection closed')
    t.true(order.includes('close') && order.includes('cb:ok'), order.join(','))

    // close() of a server that is not listening: the callback gets ERR_SERVER_NOT_RUNNING.
    const notRunning = await withTimeout(
      new Promise<Error | undefined>((resolve) => createServer().close(resolve)),
      T,
      'close of a stopped server',
    )
    t.is(codeOf(notRunning), 'ERR_SERVER_NOT_RUNNING')
  },
)

test.serial("listen on a path in use emits 'error' EADDRINUSE; the first server keeps working", async (t) => {
  const sock = tmpSocketPath()
  const first = createServer((s) => {
    s.resume()
    s.end('hello from the first')
  })
  cleanup(t, first)
  await withTimeout(new Promise<void>((resolve) => first.listen(sock, resolve)), T, 'listen')
  const second = new FdServer()
  cleanup(t, second)
  const [error] = await onceEvent(second.listen(sock), 'error', T).catch((e) => [e])
  t.true(error instanceof Error)
  t.is(error.code, 'EADDRINUSE')
  t.is(error.errno, -ERRNO.EADDRINUSE)
  t.is(error.syscall, 'bind')
  t.is(error.path, sock)
  t.false(second.listening)
  t.true(fs.existsSync(sock))
  const client = connect(sock)
  cleanup(t, client)
  const [data] = await onceEvent(client, 'data', T)
  t.is(String(data), 'hello from the first')
})

test.serial("connect to a missing path emits 'error' ENOENT, then 'close'; fds staged for it are closed", async (t) => {
  const missing = path.join(tmpDir(), 'missing.sock')
  const socket = connect(missing)
  cleanup(t, socket)
  const staged = enqueueFifo(t, socket)
  socket.write('never')
  const [error] = await onceEvent(socket, 'error', T).catch((e) => [e])
  t.true(error instanceof Error)
  t.is(error.code, 'ENOENT')
  t.is(error.errno, -ERRNO.ENOENT)
  t.is(error.syscall, 'connect')
  t.is(error.path, missing)
  await closed(socket)
  t.true(socket.destroyed)
  t.false(staged.isWriterOpen(), 'the fd staged for the failed connection is closed')
})

test.serial('ref()/unref() return this; an unref’d socket and server still work', async (t) => {
  const sock = tmpSocketPath()
  const server = createServer((s) => s.resume().end('served'))
  cleanup(t, server)
  t.is(server.unref(), server)
  t.is(server.ref(), server)
  t.is(server.unref(), server)
  await withTimeout(new Promise<void>((resolve) => server.listen(sock, resolve)), T, 'listen')
  const client = connect(sock)
  cleanup(t, client)
  t.is(client.unref(), client)
  const [data] = await onceEvent(client, 'data', T)
  t.is(String(data), 'served', 'an unref’d server accepts, an unref’d socket reads')
  const [a, b] = FdSocket.pair()
  cleanup(t, a, b)
  t.is(a.unref(), a)
  t.is(a.ref(), a)
  t.is(a.unref(), a)
  const file = tmpFile('unrefd')
  enqueueFile(b, file)
  b.write('u')
  const [u] = await onceEvent(a, 'data', T)
  t.is(String(u), 'u')
  t.deepEqual(
    takeFds(t, a).map((fd) => readAt(fd)),
    ['unrefd'],
  )
})

test.serial('a socket nobody reads still ends and closes once its peer is gone (like net.Socket)', async (t) => {
  // net.Socket pushes null and then calls read(0) on EOF, so an empty, unread socket still
  // emits 'end' and (allowHalfOpen false) closes. A server that only answers and never
  // reads must not keep one fd per finished client.
  const sock = tmpSocketPath()
  const sides: FdSocket[] = []
  const server = createServer((s) => {
    sides.push(s)
    s.end('hello')
  })
  cleanup(t, server)
  t.teardown(() => sides.forEach((s) => s.destroy()))
  await withTimeout(new Promise<void>((resolve) => server.listen(sock, resolve)), T, 'listen')
  const client = connect(sock)
  cleanup(t, client)
  const [data] = await onceEvent(client, 'data', T)
  t.is(String(data), 'hello')
  client.destroy()
  await withTimeout(closed(sides[0]), T, "the unread server-side socket's 'close'")
  t.is(sides[0].fd, -1)
})

test.serial(
  'FdSocket: 253 fds ride on one chunk; the 254th enqueue for that chunk throws QueueFullError',
  async (t) => {
    const { socket, peer } = socketAndPeer(t)
    const set = fileSet(254, 'fds253-')
    t.teardown(set.remove)
    for (let i = 0; i < 253; i++) enqueueFile(socket, set.files[i])
    const error = syncThrow(() => enqueueFile(socket, set.files[253]))
    t.true(error instanceof QueueFullError)
    t.is(error.code, 'ERR_FD_QUEUE_FULL')
    t.is(socket.queuedOutboundFds, 253, 'the failed enqueue changed nothing')
    socket.write('x')
    t.is((await read(peer)).toString(), 'x')
    const fds = takeFds(t, peer)
    t.deepEqual(
      fds.map((fd) => readAt(fd)),
      set.contents.slice(0, 253),
    )
    // The next chunk has room for 253 again.
    enqueueFile(socket, set.files[253])
    socket.write('y')
    t.is((await read(peer)).toString(), 'y')
    t.deepEqual(
      takeFds(t, peer).map((fd) => readAt(fd)),
      ['fds253-253'],
    )
  },
)

const emptyWrites: Array<[string, (socket: FdSocket) => void]> = [
  ['an empty Buffer', (socket) => socket.write(Buffer.alloc(0))],
  ['a string that decodes to no bytes', (socket) => socket.write('zz', 'hex')],
]
for (const [kind, writeEmpty] of emptyWrites) {
  test.serial(
    `FdSocket: fds carried over an empty write (${kind}) count toward the 253 of the chunk they ride on`,
    async (t) => {
      // SPEC 3: an fd rides on the first NON-EMPTY chunk written after enqueue; SPEC 5: one
      // write carries at most 253, and one more enqueue throws QueueFullError, changing nothing.
      const { socket, peer } = socketAndPeer(t)
      const errors: unknown[] = []
      socket.on('error', (e) => errors.push(e))
      const file = tmpFile('carried-over')
      for (let i = 0; i < 200; i++) enqueueFile(socket, file)
      writeEmpty(socket)
      let thrownAt = -1
      for (let i = 0; i < 100; i++) {
        try {
          enqueueFile(socket, file)
        } catch (error) {
          thrownAt = 200 + i
          t.is(codeOf(error), 'ERR_FD_QUEUE_FULL')
          break
        }
      }
      t.is(thrownAt, 253, 'the enqueue that would make 254 fds on the next chunk throws')
      socket.write('x')
      const got = await withTimeout(
        Promise.race([read(peer), onceEvent(socket, 'close', T).then(() => Buffer.from('<socket closed>'))]),
        T,
        'the chunk or the socket closing',
      )
      t.is(got.toString(), 'x')
      t.deepEqual(errors, [], 'the socket was not destroyed')
      const fds = takeFds(t, peer)
      t.is(fds.length, 253)
      t.true(fds.every((fd) => readAt(fd) === 'carried-over'))
    },
  )
}

test.serial(
  'write() of an empty chunk does not report fds that only a later chunk can carry; they go with it',
  async (t) => {
    const [a, b] = FdSocket.pair({ maxQueuedFds: 2 })
    cleanup(t, a, b)
    const got = new Promise<{ text: string; fds: number[] }>((resolve) =>
      b.once('data', (chunk: Buffer) => resolve({ text: chunk.toString(), fds: takeFds(t, b) })),
    )
    const file = tmpFile('rides later')
    enqueueFile(a, file)
    enqueueFile(a, file)
    t.true(a.write(Buffer.alloc(0)), 'nothing waits in the write buffer: no drain is owed')
    t.is(a.queuedOutboundFds, 2)
    a.write('x')
    const { text, fds } = await withTimeout(got, T, 'the chunk that carries them')
    t.is(text, 'x')
    t.is(fds.length, 2)
    t.true(fds.every((fd) => readAt(fd) === 'rides later'))
    t.is(a.queuedOutboundFds, 0)
  },
)

test.serial('FdSocket reading pauses at maxQueuedFds and resumes on dequeue; all 10 fds arrive', async (t) => {
  const { peer, socket } = wrappedPair(t, { maxQueuedFds: 3 })
  t.is(socket.maxQueuedFds, 3)
  const set = fileSet(10, 'spaused-')
  t.teardown(set.remove)
  let text = ''
  socket.on('data', (chunk: Buffer) => (text += chunk.toString()))
  const writes: Promise<number>[] = []
  for (let i = 0; i < 10; i++) {
    enqueueFile(peer, set.files[i])
    writes.push(peer.write(String(i)))
  }
  await withTimeout(Promise.all(writes), T, 'ten one-fd writes')
  await withTimeout(
    until(() => text.length >= 3),
    T,
    'the chunks up to the limit',
  )
  // Reading must stop here. A short wait cannot prove that it never goes on: on a slow
  // machine it can only miss a bug, never fail a good build.
  await sleep(300)
  t.is(socket.queuedInboundFds, 3, 'reading stopped with 3 fds waiting')
  t.is(text, '012', 'the chunks after the limit were not read yet')
  const received: number[] = []
  t.teardown(() => closeAll(received))
  await withTimeout(
    until(() => {
      received.push(...dequeueAll(socket))
      return received.length >= 10 && text.length >= 10
    }),
    T,
    'every chunk and fd, dequeueing as they come',
  )
  t.is(text, '0123456789')
  t.is(received.length, 10, 'none lost')
  t.deepEqual(
    received.map((fd) => readAt(fd)),
    set.contents,
  )
})

test.serial(
  'an FdSocket whose messages came one at a time gets the bursts that follow, every fd with its byte',
  async (t) => {
    const { peer, socket } = wrappedPair(t)
    const set = fileSet(16, 'sburst-')
    t.teardown(set.remove)
    const received: number[] = []
    t.teardown(() => closeAll(received))
    const send = (i: number) => {
      enqueueFile(peer, set.files[i])
      void peer.write(String.fromCharCode(97 + i))
    }
    let text = ''
    socket.on('fds', (fds: FdsArrived) => received.push(...fds))
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString()
      // The second burst comes from the code a chunk runs, before the event loop turns.
      if (text.length === 11) for (let i = 11; i < 16; i++) send(i)
    })
    const arrived = (n: number, what: string) =>
      withTimeout(
        until(() => text.length >= n),
        T,
        what,
      )
    // One at a time, each waited for: the reader finds the socket empty after each. (On the
    // JS-thread driver it then leaves out the read that would only find the socket empty,
    // and leaves what else comes to the reactor's next turn.)
    for (let i = 0; i < 4; i++) {
      send(i)
      await arrived(i + 1, `message ${i}`)
      await sleep(5)
    }
    // A burst while the reader waits: six messages at once, an fd each.
    for (let i = 4; i < 10; i++) send(i)
    await arrived(10, 'the first burst')
    await sleep(5)
    send(10)
    await arrived(16, 'the second burst')
    t.is(text, 'abcdefghijklmnop')
    t.is(received.length, 16, 'none lost')
    received.forEach((fd, i) => t.is(fdIdentity(fd), pathIdentity(set.files[i])))
  },
)

test.serial('fds enqueued after the last chunk are closed when the socket ends (no chunk carries them)', async (t) => {
  const [raw, peer] = AsyncUnixStream.pair()
  cleanup(t, peer)
  const socket = FdSocket.from(raw, { allowHalfOpen: true })
  cleanup(t, socket)
  socket.write('last')
  const orphan = enqueueFifo(t, socket)
  t.true(orphan.isWriterOpen())
  socket.end()
  await onceEvent(socket, 'finish', T)
  t.false(socket.destroyed, 'still open for reading (allowHalfOpen)')
  const { data, fds } = await readToEnd(peer)
  t.is(data.toString(), 'last')
  t.deepEqual(fds, [])
  t.false(orphan.isWriterOpen(), 'the fd no chunk carried was closed at end()')
})

test.serial('closeFds(fds): the transport hook closes each fd (all of them, then the first error)', async (t) => {
  const [a, b] = FdSocket.pair()
  cleanup(t, a, b)
  const fifo = makeFifo()
  t.teardown(() => fifo.close())
  const copies = [0, 1].map(() => fs.openSync(fifo.path, 'w'))
  fs.closeSync(fifo.writeFd)
  fifo.writeFd = -1
  t.true(fifo.isWriterOpen())
  b.closeFds(copies)
  t.false(fifo.isWriterOpen(), 'both copies closed')
  const file = fs.openSync(fifo.path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  const closed = fs.openSync(fifo.path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  fs.closeSync(closed)
  // One not open: the other is closed all the same, then EBADF.
  t.is(codeOf(syncThrow(() => b.closeFds([closed, file]))), 'EBADF')
  t.throws(() => fs.fstatSync(file), { code: 'EBADF' })
  t.is(codeOf(syncThrow(() => b.closeFds([-1]))), 'ERR_OUT_OF_RANGE')
  t.is(codeOf(syncThrow(() => b.closeFds(3 as any))), 'ERR_INVALID_ARG_TYPE')
})

test.serial(
  "'fds' listeners: fds handed over do not count against maxQueuedFds, so reading never stalls on them",
  async (t) => {
    // Far more fds than the bound (1024) arrive back to back from another process; the
    // listener closes each as it gets them.
    const total = 5000
    const sock = tmpSocketPath()
    let handed = 0
    let bytes = 0
    const done = new Promise<FdSocket>((resolve, reject) => {
      const server = createServer((socket) => {
        socket.on('fds', (fds: FdsArrived) => {
          for (const fd of fds) fs.closeSync(fd)
          handed += fds.length
        })
        socket.on('data', (chunk: Buffer) => (bytes += chunk.length))
        socket.on('end', () => resolve(socket))
        socket.on('error', reject)
        server.close()
      })
      cleanup(t, server)
      server.listen(sock, () => {
        const script = path.join(ROOT, '__test__', 'fixtures', 'fd-flood.mjs')
        const child = spawn(process.execPath, [script, sock, String(total)], { stdio: 'ignore' })
        child.on('error', reject)
      })
    })
    const socket = await withTimeout(done, T, `the end of ${total} bytes (${bytes} so far, ${handed} fds handed)`)
    t.is(bytes, total)
    t.is(handed, total)
    t.is(socket.queuedInboundFds, 0)
  },
)

// From a hostile review of the 'fds' event: each failed before its fix.

/**
 * A pair, and `n` files (file i holding `${prefix}${i}`) opened to send: b's 'fds' listener
 * logs the contents of the files it gets, and closes them.
 */
function pairLoggingFds(t: ExecutionContext, n: number, prefix: string) {
  const [a, b] = FdSocket.pair()
  cleanup(t, a, b)
  const set = fileSet(n, prefix)
  t.teardown(set.remove)
  const opened = set.files.map((f) => fs.openSync(f, 'r'))
  t.teardown(() => closeAll(opened))
  const log: string[] = []
  b.on('fds', (fds: FdsArrived) => {
    log.push(`fds:${fds.map((fd) => readAt(fd)).join(',')}`)
    closeAll(fds)
  })
  return { a, b, set, opened, log }
}

/**
 * A pair whose reading side, paused, holds three chunks `msg0;`, `msg1;`, `msg2;`, each
 * with an fd of its own file; the 'fds' listener logs the files' contents and closes them.
 */
async function threeWaitingChunks(t: ExecutionContext, prefix: string) {
  const { a, b, set, opened, log } = pairLoggingFds(t, 3, prefix)
  b.pause()
  for (let i = 0; i < 3; i++) {
    a.writeWithFds(`msg${i};`, [opened[i]])
    // Each chunk arrives and waits in the readable buffer, with its fds.
    await withTimeout(
      (async () => {
        while (b.readableLength < (i + 1) * 5) await sleep(5)
      })(),
      T,
      `chunk ${i} buffered`,
    )
  }
  t.deepEqual(log, [], 'nothing handed over before its data')
  /** Resumes reading and resolves once 'data' brought everything up to `msg2;`. */
  const flow = (onData: (chunk: Buffer) => void = () => {}) => {
    const done = new Promise<void>((resolve) =>
      b.on('data', (chunk: Buffer) => {
        log.push(`data:${chunk}`)
        onData(chunk)
        if (
          log
            .filter((l) => l.startsWith('data'))
            .join('')
            .endsWith('msg2;')
        )
          resolve()
      }),
    )
    b.resume()
    return withTimeout(done, T, 'the data')
  }
  return { b, set, log, flow }
}

test.serial(
  "'fds' comes right before the 'data' of its chunk even when the chunk waited (paused, pipe backpressure)",
  async (t) => {
    const { set, log, flow } = await threeWaitingChunks(t, 'paused-')
    await flow()
    t.is(
      log
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5))
        .join(''),
      'msg0;msg1;msg2;',
    )
    // Each fds entry comes before the data event that holds its chunk's first byte.
    const order = log.map((l) => (l.startsWith('fds') ? l : 'data'))
    t.is(order[0], `fds:${set.contents[0]}`)
    let seen = ''
    for (const entry of log) {
      if (entry.startsWith('data:')) seen += entry.slice(5)
      else {
        const i = set.contents.indexOf(entry.slice(4))
        t.false(seen.includes(`msg${i};`), `fds of msg${i} before its data`)
      }
    }
  },
)

test.serial("unshift(): the 'fds' of the chunks behind what went back come no earlier than their 'data'", async (t) => {
  const { b, set, log, flow } = await threeWaitingChunks(t, 'unshift-')
  let once = true
  // A parser that puts its first chunk back once (it wanted more), as net users do.
  await flow((chunk) => {
    if (once) b.unshift(chunk)
    once = false
  })
  const [c0, c1, c2] = set.contents
  t.deepEqual(log, [`fds:${c0}`, 'data:msg0;', 'data:msg0;', `fds:${c1}`, 'data:msg1;', `fds:${c2}`, 'data:msg2;'])
})

test.serial(
  "unshift() from an 'fds' listener: the fds of the rest of the data being read still come before it",
  async (t) => {
    const { b, set, log } = await threeWaitingChunks(t, 'unshift-fds-')
    let once = true
    b.on('fds', () => {
      if (once) b.unshift('U'.repeat(20))
      once = false
    })
    // One read() takes the three chunks: all their fds come before it returns.
    log.push(`read:${b.read()}`)
    log.push(`read:${b.read()}`)
    const [c0, c1, c2] = set.contents
    t.deepEqual(log, [`fds:${c0}`, `fds:${c1}`, `fds:${c2}`, 'read:msg0;msg1;msg2;', `read:${'U'.repeat(20)}`])
  },
)

for (const encoding of [null, 'utf8'] as const) {
  test.serial(
    `nested unshift() in 'data' listeners (flowing, encoding ${encoding}): each later chunk's fds come right before its data`,
    async (t) => {
      const { a, b, set, opened, log } = pairLoggingFds(t, 3, 'nested-unshift-')
      if (encoding) b.setEncoding(encoding)
      let events = 0
      b.on('data', (data: Buffer | string) => {
        log.push(`data:${data}`)
        // The first chunk's listener puts back 'x', emitted at once (the buffer is empty);
        // the listener of that 'x' puts back 'y', emitted at once too.
        const i = events++
        if (i === 0) b.unshift('x')
        if (i === 1) b.unshift('y')
      })
      for (const [i, text] of ['aaaa', 'b', 'c'].entries()) {
        const seen = events
        a.writeWithFds(text, [opened[i]])
        await withTimeout(
          until(() => events > seen),
          T,
          `the data of ${text}`,
        )
      }
      const [c0, c1, c2] = set.contents
      t.deepEqual(log, [`fds:${c0}`, 'data:aaaa', 'data:x', 'data:y', `fds:${c1}`, 'data:b', `fds:${c2}`, 'data:c'])
    },
  )
}

test.serial('unshift(Buffer) with setEncoding(): it goes back as text, and later fds keep their place', async (t) => {
  const { a, b, set, opened, log } = pairLoggingFds(t, 2, 'unshift-buffer-')
  b.setEncoding('utf8')
  b.pause()
  // Two bytes that are one character: Readable would count 2 and hand out 1.
  b.unshift(Buffer.from('\u00e9'))
  t.is(b.readableLength, 1)
  log.push(`read:${b.read()}`)
  for (const [i, text] of ['b', 'c'].entries()) {
    a.writeWithFds(text, [opened[i]])
    await withTimeout(
      until(() => b.readableLength > 0),
      T,
      `chunk ${text}`,
    )
    log.push(`read:${b.read()}`)
  }
  const [c0, c1] = set.contents
  t.deepEqual(log, ['read:\u00e9', `fds:${c0}`, 'read:b', `fds:${c1}`, 'read:c'])
})

test.serial(
  "unshift() into an empty flowing buffer while a chunk's bytes wait in the string decoder: its fds stay for that chunk's 'data'",
  async (t) => {
    const { a, b, devnull } = pairWithDevnull(t)
    const { log, ended } = logDecoded(b)
    const bytes = Buffer.from('\u00e9')
    // The first byte of 'é' with an fd: pushed, held by the decoder, nothing emitted.
    a.writeWithFds(bytes.subarray(0, 1), [devnull])
    const decoder = (b as unknown as { _readableState: { decoder: { lastNeed: number } } })._readableState.decoder
    await withTimeout(
      until(() => decoder.lastNeed === 1),
      T,
      'the first byte pushed',
    )
    // Emitted at once (the buffer is empty and flowing): the fds are not its.
    b.unshift('zz')
    a.end(bytes.subarray(1))
    await withTimeout(ended, T, `'end' (${log.join(' ')})`)
    t.deepEqual(log, ['data:zz', 'fds:1', 'data:\u00e9'])
  },
)

/** A pair whose reading side is paused and hands its fds to an 'fds' listener that closes them. */
function pausedWithFdsListener(t: ExecutionContext, options: { maxQueuedFds: number; readableHighWaterMark?: number }) {
  const [a, b] = FdSocket.pair(options)
  cleanup(t, a, b)
  const devnull = fs.openSync('/dev/null', 'r')
  t.teardown(() => fs.closeSync(devnull))
  const fds = { handed: 0 }
  b.on('fds', (arrived: FdsArrived) => {
    fds.handed += arrived.length
    closeAll(arrived)
  })
  b.pause()
  return { a, b, devnull, fds }
}

test.serial(
  "'fds' listeners and a paused socket: fds waiting with their chunks stop reading at maxQueuedFds",
  async (t) => {
    const { a, b, devnull, fds } = pausedWithFdsListener(t, { maxQueuedFds: 64 })
    const base = await settledOpenFds()
    for (let i = 0; i < 400; i++) a.writeWithFds('x', [devnull])
    // Reading stops once the fds of unread chunks reach the bound (and one batch more).
    const held = (await settledOpenFds()) - base
    t.true(held <= 64 + 253 + 16, `held ${held} fds while paused`)
    t.is(fds.handed, 0)
    let bytes = 0
    const all = new Promise<void>((resolve) =>
      b.on('data', (chunk: Buffer) => {
        bytes += chunk.length
        if (bytes === 400) resolve()
      }),
    )
    b.resume()
    await withTimeout(all, T, `400 bytes (${bytes} so far)`)
    t.is(fds.handed, 400)
  },
)

test.serial(
  "'fds' listeners: a chunk that both fills the readable buffer and reaches maxQueuedFds does not stop reading for good",
  async (t) => {
    const { a, b, devnull, fds } = pausedWithFdsListener(t, { maxQueuedFds: 1, readableHighWaterMark: 16 * 1024 })
    // One push fills the readable buffer and brings the fds waiting with it to the bound.
    a.writeWithFds(Buffer.alloc(20_000, 'a'), [devnull])
    while (b.readableLength < 20_000) await sleep(5)
    // The batch a pausing reader may still deliver...
    a.write(Buffer.alloc(1_000, 'b'))
    while (b.readableLength < 21_000) await sleep(5)
    // ...and what only a resumed reader gets.
    a.end(Buffer.alloc(1_000, 'c'))
    let bytes = 0
    b.on('data', (chunk: Buffer) => (bytes += chunk.length))
    const ended = onceEvent(b, 'end', T)
    b.resume()
    await ended
    t.is(bytes, 22_000)
    t.is(fds.handed, 1)
  },
)

test.serial(
  'writes waiting for a connection that never comes fail with ERR_SOCKET_CLOSED_BEFORE_CONNECTION (no hang)',
  async (t) => {
    const socket = new FdSocket()
    socket.on('error', () => {})
    const callbacks = [0, 1, 2].map(
      (i) =>
        new Promise<unknown>((resolve) =>
          i === 1 ? socket.writeWithFds('b', [0], resolve) : socket.write(`${i}`, resolve),
        ),
    )
    socket.destroy()
    const errors = await withTimeout(Promise.all(callbacks), T, 'the write callbacks')
    t.deepEqual(
      errors.map((e) => codeOf(e)),
      [
        'ERR_SOCKET_CLOSED_BEFORE_CONNECTION',
        'ERR_SOCKET_CLOSED_BEFORE_CONNECTION',
        'ERR_SOCKET_CLOSED_BEFORE_CONNECTION',
      ],
    )
  },
)

test.serial(
  'closeFds() closes every valid fd even when others are invalid; removeAllListeners(undefined) removes nothing else; holes in fds are typed errors',
  (t) => {
    const [a, b] = FdSocket.pair()
    cleanup(t, a, b)
    const fifo = makeFifo()
    t.teardown(() => fifo.close())
    const copy = fs.openSync(fifo.path, 'w')
    fs.closeSync(fifo.writeFd)
    fifo.writeFd = -1
    t.is(codeOf(syncThrow(() => b.closeFds([copy, -1]))), 'ERR_OUT_OF_RANGE')
    t.false(fifo.isWriterOpen(), 'the valid fd was closed all the same')
    const onError = () => {}
    b.on('error', onError)
    b.removeAllListeners(undefined)
    t.is(b.listenerCount('error'), 1, 'an explicit undefined names the event undefined, as for any emitter')
    // eslint-disable-next-line no-sparse-arrays
    const error = syncThrow(() => a.writeWithFds('x', [0, , 0] as any))
    t.is(codeOf(error), 'ERR_INVALID_ARG_TYPE')
    t.regex(String(error.message), /fds\[1\]/)
    t.is(a.queuedOutboundFds, 0)
  },
)
