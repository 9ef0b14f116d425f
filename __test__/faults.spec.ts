/**
 * Faults (issue #6): no fd is lost or leaked when the peer is SIGKILLed mid-stream in
 * either direction, when a write with fds queued meets EPIPE/ECONNRESET, under EAGAIN
 * backpressure with a tiny SO_SNDBUF (100k messages, every fd checked in order), under a
 * signal storm (EINTR), at the receiver's open-file limit, and on socket-path faults
 * (permission denied, a stale socket file, a path longer than sun_path).
 *
 * The raw peer is fd-driver.c. Exactness comes from two checks that fd-number reuse cannot
 * fool: message i carries FILE[i % K] (compared by st_dev/st_ino, in order, with i in the
 * bytes), and a FIFO's write end rides along where "every copy was closed" must be proven
 * (its read end sees EOF only then).
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect,
  createServer,
  FdSocket,
  type FdServer,
  UnixListener,
  UnixStream,
} from '../index.js'
import {
  fdIdentity,
  lastJson,
  makeFifo,
  openFds,
  pathIdentity,
  ROOT,
  scaled,
  settledOpenFds,
  startFixture,
  thrown,
  tmpDir,
  tmpFile,
  tmpSocketPath,
  type Fifo,
} from './helpers.js'
import {
  codeOf,
  dequeueAll,
  onceEvent,
  readToEnd,
  rejection,
  sleep,
  warmedUpFdBaseline,
  withTimeout,
} from './async-helpers.js'
import { killDrivers, setSocketBuffers, startAsUser, startDriver, type Driver } from './fixtures/driver.js'

const ERRNO = os.constants.errno
/** Messages per backpressure run (each carries one fd). */
const MESSAGES = 100_000

let baseline = 0
test.before(async () => {
  baseline = await warmedUpFdBaseline()
})
test.after.always('every driver is killed', () => killDrivers())
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})
/** FIFOs of the running test, closed after it whatever happened (assertions throw in ava 7). */
const fifos: Fifo[] = []
test.afterEach.always(async () => {
  await killDrivers()
  for (const fifo of fifos.splice(0)) fifo.close()
})

/** K files whose identities the sequence checks compare against. */
function seqFiles(k = 5): { files: string[]; identities: string[]; fds: number[]; close(): void } {
  const dir = tmpDir('fdq-seq-')
  const files = Array.from({ length: k }, (_, i) => tmpFile(`seq file ${i}`, dir, `s${i}`))
  const fds = files.map((f) => fs.openSync(f, 'r'))
  return {
    files,
    identities: files.map(pathIdentity),
    fds,
    close: () => fds.forEach((fd) => fs.closeSync(fd)),
  }
}

function u32(i: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(i >>> 0)
  return b
}

/**
 * Checks a received byte stream of 4-byte little-endian sequence numbers and the fds that
 * came with it: fd j must be identities[j % K], and it must have arrived with the first
 * byte of message j (so after each chunk, fds === ceil(bytes / 4)).
 */
class SeqChecker {
  bytes = 0
  fds = 0
  badBytes = 0
  badFds = 0
  lateFds = 0
  constructor(private identities: string[]) {}
  chunk(data: Buffer): void {
    for (let i = 0; i < data.length; i++, this.bytes++) {
      const seq = Math.floor(this.bytes / 4)
      if (data[i] !== ((seq >>> (8 * (this.bytes % 4))) & 0xff)) this.badBytes++
    }
  }
  /** Checks fd j, then closes it. */
  fd(fd: number): void {
    if (fdIdentity(fd) !== this.identities[this.fds % this.identities.length]) this.badFds++
    fs.closeSync(fd)
    this.fds++
  }
  /** After a chunk and its fds: every message begun has brought its fd. */
  settle(): void {
    if (this.fds !== Math.ceil(this.bytes / 4)) this.lateFds++
  }
}

/** FIFO whose write end only the peer (or a queue) holds: `closeOurWriteEnd` drops ours. */
function watchedFifo(): Fifo & { closeOurWriteEnd(): void } {
  const fifo = makeFifo()
  fifos.push(fifo)
  return Object.assign(fifo, {
    closeOurWriteEnd() {
      if (fifo.writeFd >= 0) fs.closeSync(fifo.writeFd)
      fifo.writeFd = -1
    },
  })
}

/** Polls until every write end of the FIFO is closed (the kernel releases in-flight fds at once, but give it 10 s, scaled). */
async function writerGone(fifo: Fifo): Promise<boolean> {
  for (const deadline = Date.now() + scaled(10_000); Date.now() < deadline;) {
    if (!fifo.isWriterOpen()) return true
    await sleep(10)
  }
  return !fifo.isWriterOpen()
}

function assertSystemError(t: any, error: any, codes: string[], syscall: string | string[], label: string) {
  t.true(error instanceof Error, `${label}: ${error}`)
  t.true(codes.includes(error.code), `${label}: code ${error.code}, expected ${codes.join(' or ')}`)
  t.is(error.errno, -ERRNO[error.code as keyof typeof ERRNO], `${label}: errno`)
  t.true([syscall].flat().includes(error.syscall), `${label}: syscall ${error.syscall}`)
}

// ---- the peer is SIGKILLed while it sends fds ------------------------------------------

/**
 * fd-driver send-forever sends message after message, each carrying its fd 3: the write
 * end of our FIFO, whose own copy we close at once. We read until 2000 messages came,
 * SIGKILL it and read on to the end: every fd that arrived must be the FIFO (one per
 * message, with the message's first byte), and once we closed them all, no write end may
 * be left anywhere.
 */
function startSendForever(sock: string, fifo: Fifo): Driver {
  const driver = startDriver(['send-forever', sock], { stdio: ['ignore', 'pipe', 'pipe', fifo.writeFd] })
  return driver
}

async function afterKill(t: any, fifo: Fifo & { closeOurWriteEnd(): void }, checker: SeqChecker, driver: Driver) {
  const exit = await withTimeout(driver.exited, 10_000, 'driver exit')
  t.is(exit.signal, 'SIGKILL')
  t.true(checker.fds >= 2000, `${checker.fds} fds received`)
  t.is(checker.bytes % 4, 0, 'whole messages only')
  t.is(checker.fds, checker.bytes / 4, 'exactly one fd per message received')
  t.is(checker.badBytes, 0)
  t.is(checker.badFds, 0, 'every fd was the FIFO write end')
  t.is(checker.lateFds, 0, 'each fd came with its message')
  t.true(await writerGone(fifo), 'no copy of the FIFO write end is left: every fd received was closed')
  fifo.close()
  t.is(await settledOpenFds(baseline), baseline, 'fd count back to baseline')
  t.log(`${checker.fds} fds received before and after the SIGKILL, all closed`)
}

test.serial(
  'SIGKILL of a peer sending fds: AsyncUnixStream sees the end, every fd accounted for and closed',
  async (t) => {
    const sock = tmpSocketPath()
    const fifo = watchedFifo()
    const checker = new SeqChecker([pathIdentity(fifo.path)])
    const listener = AsyncUnixListener.bind(sock)
    const driver = startSendForever(sock, fifo)
    fifo.closeOurWriteEnd()
    const stream = await withTimeout(listener.accept(), 10_000, 'accept')
    listener.close()
    let killed = false
    let end = 'eof'
    for (;;) {
      let data: Buffer
      try {
        data = await withTimeout(stream.read(), 10_000, 'read')
      } catch (error) {
        end = codeOf(error) as string
        t.true(['ECONNRESET', 'EPIPE'].includes(end), String(error))
        for (const fd of dequeueAll(stream)) checker.fd(fd)
        continue // the next read reports the end of stream
      }
      for (const fd of dequeueAll(stream)) checker.fd(fd)
      if (data.length === 0) break
      checker.chunk(data)
      checker.settle()
      if (!killed && checker.fds >= 2000) {
        killed = true
        driver.kill()
      }
    }
    t.log(`ended with ${end}`)
    stream.close()
    await afterKill(t, fifo, checker, driver)
  },
)

test.serial(
  'a peer that closes with our byte unread while its fds wait for us: FdSocket delivers every byte and fd first, then ECONNRESET',
  async (t) => {
    const file = tmpFile('sent before the reset')
    const fd = fs.openSync(file, 'r')
    const [peer, ours] = AsyncUnixStream.pair()
    // A byte the peer never reads: its close then resets our side (ECONNRESET), with its
    // messages still queued for us. Two carry fds, so the reader takes a run of them.
    await ours.write('!')
    for (const text of ['x', 'y']) {
      peer.enqueue(fd)
      await peer.write(text)
    }
    await peer.write('zzz')
    peer.close()
    fs.closeSync(fd)
    const socket = FdSocket.from(ours)
    const fds: number[] = []
    let data = ''
    socket.on('fds', (arrived: number[]) => fds.push(...arrived))
    socket.on('data', (chunk: Buffer) => (data += chunk.toString('latin1')))
    const how = await withTimeout(
      new Promise<string>((resolve) => {
        socket.on('end', () => resolve('end'))
        socket.on('error', (error) => resolve(String(codeOf(error))))
      }),
      10_000,
      'the end of the FdSocket',
    )
    try {
      t.is(data, 'xyzzz', 'every byte first')
      t.is(fds.length, 2, 'and both fds')
      for (const got of fds) t.is(fdIdentity(got), pathIdentity(file))
      t.is(how, 'ECONNRESET', 'then the reset, as recvmsg reports it (not a clean end)')
    } finally {
      for (const got of fds) fs.closeSync(got)
      socket.destroy()
    }
  },
)

test.serial('SIGKILL of a peer sending fds: FdSocket ends, every fd accounted for and closed', async (t) => {
  const sock = tmpSocketPath()
  const fifo = watchedFifo()
  const checker = new SeqChecker([pathIdentity(fifo.path)])
  const server = createServer()
  server.listen(sock)
  await onceEvent(server, 'listening')
  const driver = startSendForever(sock, fifo)
  fifo.closeOurWriteEnd()
  const [socket] = (await onceEvent(server, 'connection')) as [FdSocket]
  server.close()
  let killed = false
  const ended = new Promise<string>((resolve) => {
    socket.on('data', (data: Buffer) => {
      for (const fd of dequeueAll(socket)) checker.fd(fd)
      checker.chunk(data)
      checker.settle()
      if (!killed && checker.fds >= 2000) {
        killed = true
        driver.kill()
      }
    })
    socket.on('end', () => resolve('end'))
    socket.on('error', (error) => resolve(String(codeOf(error))))
  })
  const how = await withTimeout(ended, 15_000, 'end of the FdSocket')
  t.true(['end', 'ECONNRESET'].includes(how), how)
  socket.destroy()
  await onceEvent(socket, 'close').catch(() => {})
  await afterKill(t, fifo, checker, driver)
})

test.serial(
  'SIGKILL of a peer sending fds: blocking UnixStream reads to the end, every fd accounted for',
  async (t) => {
    const sock = tmpSocketPath()
    const fifo = watchedFifo()
    const checker = new SeqChecker([pathIdentity(fifo.path)])
    const listener = UnixListener.bind(sock)
    const driver = startSendForever(sock, fifo)
    fifo.closeOurWriteEnd()
    await driver.waitFor((l) => l.connected !== undefined)
    const stream = listener.accept()
    listener.close()
    stream.setReadTimeout(10_000)
    const buf = Buffer.alloc(4096)
    let killed = false
    for (;;) {
      let n: number
      try {
        n = stream.read(buf)
      } catch (error) {
        t.true(['ECONNRESET', 'EPIPE'].includes(codeOf(error) as string), String(error))
        continue
      }
      for (const fd of dequeueAll(stream)) checker.fd(fd)
      if (n === 0) break
      checker.chunk(buf.subarray(0, n))
      checker.settle()
      if (!killed && checker.fds >= 2000) {
        killed = true
        driver.kill()
        // let the kill land while fds are still in flight to us
        await sleep(20)
      }
    }
    stream.close()
    await afterKill(t, fifo, checker, driver)
  },
)

test.serial(
  'SIGKILL of a peer sending fds, then close without reading the rest: the kernel drops the fds in flight',
  async (t) => {
    const sock = tmpSocketPath()
    const fifo = watchedFifo()
    const listener = AsyncUnixListener.bind(sock)
    const driver = startSendForever(sock, fifo)
    fifo.closeOurWriteEnd()
    const stream = await withTimeout(listener.accept(), 10_000, 'accept')
    listener.close()
    const first = await withTimeout(stream.read(4), 10_000, 'first message')
    t.deepEqual(first, u32(0))
    const [fd] = dequeueAll(stream)
    t.is(fdIdentity(fd), pathIdentity(fifo.path))
    fs.closeSync(fd)
    // let the driver put more fd-carrying messages into the socket buffer, then kill it
    await driver.waitFor((l) => l.sent !== undefined)
    driver.kill()
    await driver.exited
    t.true(fifo.isWriterOpen(), 'fds are in flight in our receive queue')
    stream.close()
    t.true(await writerGone(fifo), 'closing the stream released every fd in flight')
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

// ---- we send fds and the peer is SIGKILLed --------------------------------------------

function startRecvNone(sock: string): Driver {
  return startDriver(['recv-none', sock])
}

test.serial(
  'SIGKILL of a peer we stream fds to: AsyncUnixStream writes fail with EPIPE/ECONNRESET, duplicates closed',
  async (t) => {
    const sock = tmpSocketPath()
    const fifo = watchedFifo()
    const listener = AsyncUnixListener.bind(sock)
    const driver = startRecvNone(sock)
    const stream = await withTimeout(listener.accept(), 10_000, 'accept')
    listener.close()
    // A minimal send buffer holds a few messages: the 64 writes before the first check cannot
    // all fit, so a write still pending there is pending for good (however slow we are).
    await setSocketBuffers(stream.fd, 1, 0)
    // Stream fd-carrying writes until one stays pending (the socket buffer is full).
    const outcomes: Array<Promise<{ ok: boolean; error?: any }>> = []
    let stalled = false
    for (let i = 0; i < 200_000 && !stalled; i++) {
      stream.enqueue(fifo.writeFd)
      const write = stream.write(u32(i)).then(
        () => ({ ok: true }),
        (error) => ({ ok: false, error }),
      )
      outcomes.push(write)
      if (i % 64 === 63) {
        stalled = (await Promise.race([write.then(() => false), sleep(200).then(() => true)])) as boolean
      }
    }
    t.true(stalled, 'the peer stopped taking data')
    // fds are now in flight (in the peer's receive queue) and queued in pending writes
    stream.enqueue(fifo.writeFd)
    driver.kill()
    await driver.exited
    const results = await withTimeout(Promise.all(outcomes), 10_000, 'pending writes settle')
    const failed = results.filter((r) => !r.ok)
    t.true(failed.length >= 1, 'the pending writes failed')
    for (const { error } of failed) assertSystemError(t, error, ['EPIPE', 'ECONNRESET'], 'sendmsg', 'pending write')
    t.log(`${results.length - failed.length} writes went out, ${failed.length} failed with ${failed[0].error.code}`)
    // a write after the failure fails too, and closes the fd queued for it
    const after = await rejection(stream.write('after'))
    assertSystemError(t, after, ['EPIPE', 'ECONNRESET'], 'sendmsg', 'write after the kill')
    fifo.closeOurWriteEnd()
    t.true(await writerGone(fifo), 'every duplicate (queued, in a failed write, in flight) is closed before close()')
    stream.close()
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  'SIGKILL of a peer we stream fds to: blocking UnixStream write fails with EPIPE/ECONNRESET, queue closed',
  async (t) => {
    const sock = tmpSocketPath()
    const fifo = watchedFifo()
    const listener = UnixListener.bind(sock)
    const driver = startRecvNone(sock)
    await driver.waitFor((l) => l.connected !== undefined)
    const stream = listener.accept()
    listener.close()
    stream.setWriteTimeout(100)
    let writes = 0
    let timedOut: any
    for (let i = 0; i < 200_000; i++) {
      stream.enqueue(fifo.writeFd)
      try {
        stream.write(u32(i))
        writes++
      } catch (error) {
        timedOut = error
        break
      }
    }
    t.is(timedOut?.code, 'ETIMEDOUT', 'the peer stopped taking data')
    // the fd of the timed-out write is still queued (SPEC: EAGAIN keeps them queued)
    driver.kill()
    await driver.exited
    const error = thrown(() => stream.write('after the kill'))
    assertSystemError(t, error, ['EPIPE', 'ECONNRESET'], 'sendmsg', 'blocking write after the kill')
    t.log(`${writes} writes went out before the buffer filled; then ${error.code}`)
    fifo.closeOurWriteEnd()
    t.true(
      await writerGone(fifo),
      'the queued duplicate was closed by the failed write, and the fds in flight by the kernel',
    )
    stream.close()
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  "SIGKILL of a peer we stream fds to: FdSocket emits 'error' EPIPE/ECONNRESET, duplicates closed",
  async (t) => {
    const sock = tmpSocketPath()
    const fifo = watchedFifo()
    const server = createServer()
    server.listen(sock)
    await onceEvent(server, 'listening')
    const driver = startRecvNone(sock)
    const [socket] = (await onceEvent(server, 'connection')) as [FdSocket]
    server.close()
    const errored = onceEvent(socket, 'error', 15_000).then(
      ([error]) => error,
      (error) => error,
    )
    let i = 0
    for (;;) {
      socket.enqueue(fifo.writeFd)
      if (!socket.write(u32(i++))) {
        const drained = await Promise.race([onceEvent(socket, 'drain').then(() => true), sleep(200).then(() => false)])
        if (!drained) break
      }
    }
    t.true(socket.queuedOutboundFds > 0 || socket.writableLength > 0, 'writes and fds are buffered')
    driver.kill()
    await driver.exited
    const error = await errored
    // the write meets EPIPE, or the reader meets ECONNRESET first (the peer died with our bytes unread)
    assertSystemError(t, error, ['EPIPE', 'ECONNRESET'], ['sendmsg', 'recvmsg'], "FdSocket 'error'")
    t.true(socket.destroyed)
    t.log(`${i} chunks written or buffered; then ${error.code}`)
    fifo.closeOurWriteEnd()
    t.true(await writerGone(fifo), 'no duplicate survives')
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

// ---- EPIPE / ECONNRESET on a write with fds queued ---------------------------------------

// On Linux a write to a peer that closed answers EPIPE; ECONNRESET is what a read answers
// when the peer closed with our bytes unread. Both must leave nothing behind.

test.serial('EPIPE on a blocking write with fds queued: typed error, the duplicates are closed at once', async (t) => {
  const fifo = watchedFifo()
  const [a, b] = UnixStream.pair()
  b.close()
  a.enqueue(fifo.writeFd)
  a.enqueue(fifo.writeFd)
  fifo.closeOurWriteEnd()
  t.true(fifo.isWriterOpen(), 'the queue holds duplicates')
  const error = thrown(() => a.write('carrier'))
  assertSystemError(t, error, ['EPIPE'], 'sendmsg', 'blocking write')
  t.false(fifo.isWriterOpen(), 'the failed write closed the duplicates, before close()')
  t.is(a.dequeue(), null)
  a.close()
  fifo.close()
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(
  'EPIPE on an async write with fds queued: typed rejection, the duplicates are closed at once',
  async (t) => {
    const fifo = watchedFifo()
    const [a, b] = AsyncUnixStream.pair()
    b.close()
    a.enqueue(fifo.writeFd)
    a.enqueue(fifo.writeFd)
    fifo.closeOurWriteEnd()
    t.true(fifo.isWriterOpen())
    const error = await rejection(a.write('carrier'))
    assertSystemError(t, error, ['EPIPE'], 'sendmsg', 'async write')
    t.false(fifo.isWriterOpen(), 'the failed write closed the duplicates, before close()')
    a.close()
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  "EPIPE on an FdSocket write with fds queued: 'error' with the code, the duplicates are closed",
  async (t) => {
    const fifo = watchedFifo()
    // allowHalfOpen keeps a writing after the peer's end arrives, so the write meets EPIPE
    const [a, b] = FdSocket.pair({ allowHalfOpen: true })
    b.destroy()
    await onceEvent(b, 'close')
    a.enqueue(fifo.writeFd)
    a.enqueue(fifo.writeFd)
    fifo.closeOurWriteEnd()
    t.true(fifo.isWriterOpen())
    const errored = onceEvent(a, 'error').then(
      ([e]) => e,
      (e) => e,
    )
    a.write('carrier')
    const error = await errored
    assertSystemError(t, error, ['EPIPE'], 'sendmsg', "FdSocket 'error'")
    t.true(a.destroyed)
    t.false(fifo.isWriterOpen(), 'the duplicates are closed')
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  'ECONNRESET (peer closed with our bytes unread) with fds queued: blocking read fails, then the write, nothing leaks',
  async (t) => {
    const fifo = watchedFifo()
    const [a, b] = UnixStream.pair()
    a.write('never read')
    b.close()
    a.enqueue(fifo.writeFd)
    fifo.closeOurWriteEnd()
    a.setReadTimeout(2000)
    const reset = thrown(() => a.read(Buffer.alloc(16)))
    assertSystemError(t, reset, ['ECONNRESET'], 'recvmsg', 'blocking read')
    t.true(fifo.isWriterOpen(), 'a failed read leaves the outbound queue alone')
    const error = thrown(() => a.write('carrier'))
    assertSystemError(t, error, ['EPIPE'], 'sendmsg', 'blocking write')
    t.false(fifo.isWriterOpen(), 'the failed write closed the duplicate')
    t.is(a.read(Buffer.alloc(16)), 0, 'then end of stream')
    a.close()
    fifo.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial('ECONNRESET with fds queued: async read rejects, the write fails, nothing leaks', async (t) => {
  const fifo = watchedFifo()
  const [a, b] = AsyncUnixStream.pair()
  await a.write('never read')
  b.close()
  a.enqueue(fifo.writeFd)
  fifo.closeOurWriteEnd()
  const reset = await rejection(a.read())
  assertSystemError(t, reset, ['ECONNRESET'], 'recvmsg', 'async read')
  t.true(fifo.isWriterOpen())
  const error = await rejection(a.write('carrier'))
  assertSystemError(t, error, ['EPIPE'], 'sendmsg', 'async write')
  t.false(fifo.isWriterOpen(), 'the failed write closed the duplicate')
  t.is((await a.read()).length, 0, 'then end of stream')
  a.close()
  fifo.close()
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial("ECONNRESET with fds staged: FdSocket emits 'error' ECONNRESET and closes the staged fds", async (t) => {
  const fifo = watchedFifo()
  // The peer is a blocking UnixStream that never reads and closes with our bytes unread
  // (an async stream shuts down before closing, which the peer sees as a clean end).
  const sock = tmpSocketPath()
  const server = createServer()
  server.listen(sock)
  await onceEvent(server, 'listening')
  const peer = UnixStream.connect(sock)
  const [a] = (await onceEvent(server, 'connection')) as [FdSocket]
  server.close()
  await new Promise<void>((resolve) => a.write('never read', () => resolve()))
  a.enqueue(fifo.writeFd)
  a.enqueue(fifo.writeFd)
  fifo.closeOurWriteEnd()
  t.is(a.queuedOutboundFds, 2)
  const errored = onceEvent(a, 'error').then(
    ([e]) => e,
    (e) => e,
  )
  peer.close()
  const error = await errored
  assertSystemError(t, error, ['ECONNRESET'], 'recvmsg', "FdSocket 'error'")
  t.true(a.destroyed)
  t.false(fifo.isWriterOpen(), 'the staged duplicates are closed')
  fifo.close()
  t.is(await settledOpenFds(baseline), baseline)
})

// ---- EAGAIN under backpressure: 100k messages, every fd checked -------------------------

/**
 * Our side sends MESSAGES messages, message i carrying seq file i % K, through a socket
 * whose SO_SNDBUF is the minimum; the C receiver stops reading for 150 ms every 25k
 * messages and checks every byte and every fd in order. The write that waited longest
 * shows the sends really met a full buffer (EAGAIN) and were retried.
 */
test.serial(
  `EAGAIN with a tiny SO_SNDBUF: AsyncUnixStream sends ${MESSAGES} fds, none lost or duplicated`,
  async (t) => {
    const seq = seqFiles()
    const sock = tmpSocketPath()
    const listener = AsyncUnixListener.bind(sock)
    const driver = startDriver(['recv-seq', sock, MESSAGES, 4096, 25_000, 150, ...seq.files], { timeoutMs: 60_000 })
    const stream = await withTimeout(listener.accept(), 10_000, 'accept')
    listener.close()
    const buffers = await setSocketBuffers(stream.fd, 1, 0)
    t.log(`our SO_SNDBUF is now ${buffers.sndbuf} bytes`)
    t.true(buffers.sndbuf <= 8192)
    const longestWait = await sendSequenceAsync(stream, seq.fds, MESSAGES)
    stream.close()
    const result = await driver.waitFor((l) => l.result === 'received', 20_000)
    t.log(`receiver: ${JSON.stringify(result)}; longest write ${longestWait.toFixed(0)} ms`)
    t.is(result.messages, MESSAGES)
    t.is(result.fds, MESSAGES, 'every fd arrived exactly once')
    t.is(result.badBytes, 0)
    t.is(result.badFds, 0, 'in order, each with its own message')
    t.is(result.truncated, 0)
    t.true(result.pauses >= 3)
    t.true(longestWait >= 100, 'writes waited for the paused receiver: the sends met EAGAIN and were retried')
    seq.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(`EAGAIN with a tiny SO_SNDBUF: FdSocket sends ${MESSAGES} fds, none lost or duplicated`, async (t) => {
  const seq = seqFiles()
  const sock = tmpSocketPath()
  const server = createServer()
  server.listen(sock)
  await onceEvent(server, 'listening')
  const driver = startDriver(['recv-seq', sock, MESSAGES, 4096, 25_000, 150, ...seq.files], { timeoutMs: 60_000 })
  const [socket] = (await onceEvent(server, 'connection')) as [FdSocket]
  server.close()
  const buffers = await setSocketBuffers(socket.fd, 1, 0)
  t.true(buffers.sndbuf <= 8192)
  let falses = 0
  let longestDrain = 0
  for (let i = 0; i < MESSAGES; i++) {
    socket.enqueue(seq.fds[i % seq.fds.length])
    if (!socket.write(u32(i))) {
      falses++
      const started = performance.now()
      await onceEvent(socket, 'drain', 20_000)
      longestDrain = Math.max(longestDrain, performance.now() - started)
    }
  }
  socket.end()
  await onceEvent(socket, 'finish', 20_000)
  const result = await driver.waitFor((l) => l.result === 'received', 20_000)
  t.log(
    `receiver: ${JSON.stringify(result)}; write() returned false ${falses} times, longest drain ${longestDrain.toFixed(0)} ms`,
  )
  t.is(result.messages, MESSAGES)
  t.is(result.fds, MESSAGES)
  t.is(result.badBytes, 0)
  t.is(result.badFds, 0)
  t.is(result.truncated, 0)
  t.true(falses > 0, 'backpressure reached write()')
  t.true(longestDrain >= 100, 'the sends waited for the paused receiver (EAGAIN)')
  socket.destroy()
  seq.close()
  t.is(await settledOpenFds(baseline), baseline)
})

/** Consumes the connection the driver makes, checking every byte and fd with `checker`. */
type Consume = (checker: SeqChecker, driver: Driver) => Promise<void>

/**
 * The C peer sends `messages` messages through its own minimal SO_SNDBUF, pausing
 * `pauseUs` every `pauseEvery`; `listen` binds the path and returns how to consume the
 * connection. Every fd must arrive once, in order, with its message.
 */
async function receiveSequence(
  t: any,
  messages: number,
  pauseEvery: number,
  pauseUs: number,
  listen: (sock: string) => Promise<Consume>,
): Promise<SeqChecker> {
  const seq = seqFiles()
  seq.close()
  const sock = tmpSocketPath()
  const checker = new SeqChecker(seq.identities)
  const consume = await listen(sock)
  const driver = startDriver(['send-seq', sock, messages, 1, pauseEvery, pauseUs, ...seq.files], {
    timeoutMs: 60_000,
  })
  await consume(checker, driver)
  const result = await driver.waitFor((l) => l.result === 'sent', 20_000)
  const sndbuf = driver.lines.find((l) => l.connected !== undefined)?.sndbuf
  t.true(sndbuf <= 8192, `driver SO_SNDBUF ${sndbuf}`)
  t.is(result.messages, messages)
  t.is(checker.bytes, messages * 4)
  t.is(checker.fds, messages, 'every fd arrived exactly once')
  t.is(checker.badBytes, 0)
  t.is(checker.badFds, 0, 'in order')
  t.is(checker.lateFds, 0, 'each fd dequeue-able with its message')
  return checker
}

async function listenAsync(sock: string): Promise<Consume> {
  const listener = AsyncUnixListener.bind(sock)
  return async (checker) => {
    const stream = await withTimeout(listener.accept(), 10_000, 'accept')
    listener.close()
    for (;;) {
      const data = await withTimeout(stream.read(), 10_000, 'read')
      for (const fd of dequeueAll(stream)) checker.fd(fd)
      if (data.length === 0) break
      checker.chunk(data)
      checker.settle()
    }
    stream.close()
  }
}

async function listenFdSocket(sock: string): Promise<Consume> {
  const server = createServer()
  server.listen(sock)
  await onceEvent(server, 'listening')
  return (checker) =>
    withTimeout(
      new Promise<void>((resolve, reject) => {
        server.once('connection', (socket: FdSocket) => {
          server.close()
          socket.on('data', (data: Buffer) => {
            for (const fd of dequeueAll(socket)) checker.fd(fd)
            checker.chunk(data)
            checker.settle()
          })
          socket.on('error', reject)
          socket.on('close', () => resolve())
        })
      }),
      30_000,
      'FdSocket to the end',
    )
}

/** Blocking reads with a read timeout (so a signal makes recvmsg fail with EINTR rather than restart). */
async function listenBlocking(sock: string): Promise<Consume> {
  const listener = UnixListener.bind(sock)
  return async (checker, driver) => {
    await driver.waitFor((l) => l.connected !== undefined)
    const stream = listener.accept()
    listener.close()
    stream.setReadTimeout(10_000)
    const buf = Buffer.alloc(4096)
    for (;;) {
      const n = stream.read(buf)
      for (const fd of dequeueAll(stream)) checker.fd(fd)
      if (n === 0) break
      checker.chunk(buf.subarray(0, n))
      checker.settle()
    }
    stream.close()
  }
}

test.serial(`a peer sending through a tiny SO_SNDBUF: AsyncUnixStream receives ${MESSAGES} fds in order`, async (t) => {
  await receiveSequence(t, MESSAGES, 10_000, 20_000, listenAsync)
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(`a peer sending through a tiny SO_SNDBUF: FdSocket receives ${MESSAGES} fds in order`, async (t) => {
  await receiveSequence(t, MESSAGES, 10_000, 20_000, listenFdSocket)
  t.is(await settledOpenFds(baseline), baseline)
})

// ---- EINTR: a signal storm at the receiving process --------------------------------------

const STORM_MESSAGES = 20_000

/** Runs `body` while a child sends SIGUSR2 to this process every 100 µs. */
async function underSignalStorm(t: any, body: () => Promise<void>) {
  let handled = 0
  const onSignal = () => {
    handled++
  }
  process.on('SIGUSR2', onSignal)
  const storm = startDriver(['signals', process.pid, 100])
  try {
    await storm.waitFor((l) => l.signalling !== undefined)
    await body()
  } finally {
    storm.kill()
    await storm.exited
    // let the last signals reach the handler before it goes
    await sleep(50)
    process.off('SIGUSR2', onSignal)
  }
  t.log(`${handled} SIGUSR2 handled by JS during the run (the kernel merges pending ones)`)
  t.true(handled > 10, 'signals really arrived')
}

for (const [name, listen] of [
  ['AsyncUnixStream', listenAsync],
  ['FdSocket', listenFdSocket],
  ['blocking UnixStream (read timeout set: recvmsg returns EINTR)', listenBlocking],
] as const) {
  test.serial(`EINTR: ${name} receives every fd in order while signals hammer the process`, async (t) => {
    // The sender pauses 2 ms every 200 messages so the reader often waits in the kernel.
    await underSignalStorm(t, async () => {
      await receiveSequence(t, STORM_MESSAGES, 200, 2000, listen)
    })
    t.is(await settledOpenFds(baseline), baseline)
  })
}

/** Sends `messages` fd-carrying messages (i carries seq file i % K) with up to 128 writes in flight. */
async function sendSequenceAsync(stream: AsyncUnixStream, fds: number[], messages: number): Promise<number> {
  let longestWait = 0
  const window: Array<Promise<void>> = []
  for (let i = 0; i < messages; i++) {
    stream.enqueue(fds[i % fds.length])
    const started = performance.now()
    window.push(
      stream.write(u32(i)).then((n) => {
        if (n !== 4) throw new Error(`write ${i} wrote ${n} bytes`)
        longestWait = Math.max(longestWait, performance.now() - started)
      }),
    )
    if (window.length >= 128) await window.shift()
  }
  await withTimeout(Promise.all(window), 20_000, 'last writes')
  return longestWait
}

function checkReceived(t: any, result: any, messages: number) {
  t.is(result.messages, messages)
  t.is(result.fds, messages, 'every fd arrived exactly once')
  t.is(result.badBytes, 0)
  t.is(result.badFds, 0, 'in order, each with its own message')
  t.is(result.truncated, 0)
}

test.serial(
  'EINTR: fds sent by AsyncUnixStream and blocking UnixStream under a signal storm all arrive in order',
  async (t) => {
    const seq = seqFiles()
    await underSignalStorm(t, async () => {
      const sock = tmpSocketPath()
      const listener = AsyncUnixListener.bind(sock)
      const driver = startDriver(['recv-seq', sock, STORM_MESSAGES, 4096, 5000, 20, ...seq.files])
      const stream = await withTimeout(listener.accept(), 10_000, 'accept')
      listener.close()
      await setSocketBuffers(stream.fd, 1, 0)
      await sendSequenceAsync(stream, seq.fds, STORM_MESSAGES)
      stream.close()
      checkReceived(t, await driver.waitFor((l) => l.result === 'received'), STORM_MESSAGES)

      const sock2 = tmpSocketPath()
      const blockingListener = UnixListener.bind(sock2)
      const driver2 = startDriver(['recv-seq', sock2, STORM_MESSAGES, 4096, 5000, 20, ...seq.files])
      await driver2.waitFor((l) => l.connected !== undefined)
      const blocking = blockingListener.accept()
      blockingListener.close()
      await setSocketBuffers(blocking.fd, 1, 0)
      // with a timeout set, an interrupted sendmsg is not restarted by the kernel: EINTR
      blocking.setWriteTimeout(10_000)
      for (let i = 0; i < STORM_MESSAGES; i++) {
        blocking.enqueue(seq.fds[i % seq.fds.length])
        const bytes = u32(i)
        for (let sent = 0; sent < 4;) sent += blocking.write(bytes.subarray(sent))
      }
      blocking.close()
      checkReceived(t, await driver2.waitFor((l) => l.result === 'received'), STORM_MESSAGES)
    })
    seq.close()
    t.is(await settledOpenFds(baseline), baseline)
  },
)

// ---- a receiver at its open-file limit ----------------------------------------------------

for (const mode of ['async', 'fdsocket', 'fdsocket-fds', 'fdsocket-fds-none', 'fdsocket-requeue'] as const) {
  const name = {
    async: 'AsyncUnixStream',
    fdsocket: 'FdSocket',
    'fdsocket-fds': "FdSocket with an 'fds' listener",
    'fdsocket-fds-none': "FdSocket with an 'fds' listener, with no fd slot left",
    'fdsocket-requeue': "FdSocket whose 'fds' listener goes before the chunk is read",
  }[mode]
  const listened = mode === 'fdsocket-fds' || mode === 'fdsocket-fds-none'
  const truncation = listened ? 'fds.truncated' : 'ERR_FD_TRUNCATED once'
  test.serial(
    `${name} at its open-file limit: ${truncation}, bytes intact, recovery once fds are closed`,
    async (t) => {
      const dir = tmpDir()
      const big = tmpFile('one of 253', dir, 'big')
      const later = ['later a', 'later b', 'later c'].map((c, i) => tmpFile(c, dir, `later${i}`))
      const sock = tmpSocketPath()
      const listener = AsyncUnixListener.bind(sock)
      // node needs about 30 fds to start; 64 leaves a few dozen, far fewer than 253
      const child = startFixture('fd-limit', [mode, sock], { ulimit: 64 })
      try {
        const stream = await withTimeout(listener.accept(), 15_000, 'accept')
        listener.close()
        await child.waitForLine(/"filled"/)
        const fd = fs.openSync(big, 'r')
        for (let i = 0; i < 253; i++) stream.enqueue(fd)
        fs.closeSync(fd)
        await stream.write('first message')
        await child.waitForLine(/"recovered"/)
        for (const file of later) {
          const lfd = fs.openSync(file, 'r')
          stream.enqueue(lfd)
          fs.closeSync(lfd)
        }
        await stream.write('second message')
        await stream.shutdown('write')
        const result = await withTimeout(child.done, 15_000, 'child exit')
        stream.close()
        t.is(result.code, 0, result.stderr)
        const report = lastJson(result)
        t.log(
          `${mode}: ${report.first.contents.length} of 253 fds fitted; errors ${JSON.stringify(report.first.errors)}`,
        )
        t.true(report.tableFull, 'the fd table really was full')
        t.is(report.firstData, 'first message', 'the bytes are delivered whole')
        const arrived = report.first.contents.length
        // 3 slots were freed (none with no slot left); the runtime may have closed a few of
        // its own fds since
        t.true(arrived < 16, `${arrived} fds arrived`)
        // An 'fds' event with nothing in it: none of them arrived.
        if (mode === 'fdsocket-fds-none') t.is(arrived, 0)
        t.true(report.first.contents.every((c: string) => c === 'one of 253'))
        t.deepEqual(report.first.errors, ['ERR_FD_TRUNCATED'], 'reported exactly once')
        t.deepEqual(report.first.errorsAt, [arrived], 'after the fds that did arrive')
        t.is(report.secondData, 'second message')
        t.deepEqual(report.second.errors, [], 'recovered: nothing lost once fds were closed')
        t.deepEqual(report.second.contents, ['later a', 'later b', 'later c'])
        if (listened) {
          t.deepEqual(report.fdsEvents, [
            { count: arrived, truncated: true },
            { count: 3, truncated: false },
          ])
          t.is(report.queuedAfterFirst, 0, 'handed to the listener, none queued')
        }
        if (mode === 'fdsocket-requeue') t.is(report.fdsEvents, undefined, "no 'fds' event once it went")
        t.is(report.eof, 0)
      } finally {
        child.child.kill('SIGKILL')
        listener.close()
      }
      t.is(await settledOpenFds(baseline), baseline)
    },
  )
}

// ---- a writer at its open-file limit -------------------------------------------------------

for (const mode of ['async', 'fdsocket'] as const) {
  test.serial(
    `${mode === 'async' ? 'AsyncUnixStream' : 'FdSocket'} with a full fd table: a write that must wait for the reader still completes, every byte in order`,
    async (t) => {
      const SIZE = 4 << 20
      const sock = tmpSocketPath()
      const listener = AsyncUnixListener.bind(sock)
      const child = startFixture('full-table-writer', [mode, sock, String(SIZE)], { ulimit: 64 })
      try {
        const stream = await withTimeout(listener.accept(), 15_000, 'accept')
        listener.close()
        await child.waitForLine(/"filled"/)
        // Let the write fill the socket and wait, with no fd left to wait with.
        await sleep(200)
        const { data: got } = await withTimeout(readToEnd(stream), 30_000, 'reading the write')
        stream.close()
        const result = await withTimeout(child.done, 15_000, 'child exit')
        t.is(result.code, 0, result.stderr + result.stdout)
        const report = lastJson(result)
        t.true(report.tableFull, 'the fd table really was full')
        t.is(report.written, SIZE)
        t.is(got.length, SIZE)
        let wrong = 0
        for (let i = 0; i < got.length; i++) if (got[i] !== i % 251) wrong++
        t.is(wrong, 0, 'every byte in order')
      } finally {
        child.child.kill('SIGKILL')
        listener.close()
      }
      t.is(await settledOpenFds(baseline), baseline)
    },
  )
}

// ---- socket-path faults --------------------------------------------------------------------

const NOBODY = 65534

/** Runs as-user.cjs (as `uid` when given) to its end and returns its JSON lines. */
async function runAsUser(args: string[], uid?: number): Promise<any[]> {
  const child = startAsUser(args, { uid, gid: uid })
  const exit = await child.exited
  if (exit.code !== 0) throw new Error(`as-user.cjs exit ${exit.code}: ${exit.stderr}`)
  return child.lines
}

/** A directory (and its parents) that uid 65534 can enter. */
function publicDir(): string {
  const dir = tmpDir('fdq-pub-')
  fs.chmodSync(dir, 0o777)
  return dir
}

test.serial(
  'permission denied: a user who cannot reach or write the socket gets EACCES with the path, for every API',
  async (t) => {
    // 1. the socket sits in a directory the user cannot search
    const privateDir = tmpDir('fdq-priv-')
    fs.chmodSync(privateDir, 0o700)
    const hidden = path.join(privateDir, 's')
    // 2. the socket file itself is not writable by the user (connect needs write permission)
    const open = publicDir()
    const readOnly = path.join(open, 's')
    const listeners = [UnixListener.bind(hidden), UnixListener.bind(readOnly)]
    fs.chmodSync(readOnly, 0o755)
    let cases = 0
    try {
      for (const target of [hidden, readOnly]) {
        for (const api of ['blocking', 'async', 'fdsocket']) {
          const [result] = await runAsUser(['connect', api, target], NOBODY)
          t.like(
            result,
            { ok: false, code: 'EACCES', errno: -ERRNO.EACCES, syscall: 'connect', path: target },
            `${api} → ${target}`,
          )
          cases++
        }
      }
      // 3. binding where the user may not create files
      for (const api of ['blocking', 'async', 'fdserver']) {
        const target = path.join(privateDir, `b-${api}`)
        const [result] = await runAsUser(['bind', api, target], NOBODY)
        t.like(
          result,
          { ok: false, code: 'EACCES', errno: -ERRNO.EACCES, syscall: 'bind', path: target },
          `bind ${api}`,
        )
        t.false(fs.existsSync(target))
        cases++
      }
      // control: root (this process) may connect to both, and nobody may once the mode allows it
      fs.chmodSync(readOnly, 0o777)
      const [allowed] = await runAsUser(['connect', 'blocking', readOnly], NOBODY)
      t.deepEqual(allowed, { ok: true })
    } finally {
      for (const listener of listeners) listener.close()
    }
    t.log(`${cases} permission faults, all EACCES with syscall and path`)
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  'stale socket file of a SIGKILLed listener: bind gives EADDRINUSE, connect ECONNREFUSED, for every API',
  async (t) => {
    const sock = tmpSocketPath()
    const dead = spawn(
      process.execPath,
      [
        '-e',
        `require(${JSON.stringify(path.join(ROOT, 'index.js'))}).UnixListener.bind(${JSON.stringify(sock)}); process.kill(process.pid, 'SIGKILL')`,
      ],
      { stdio: 'ignore' },
    )
    const [, signal] = await onceEvent(dead, 'exit')
    t.is(signal, 'SIGKILL')
    t.true(fs.statSync(sock).isSocket(), 'the dead listener left its socket file')

    const expectBind = (error: any, label: string) =>
      t.like(error, { code: 'EADDRINUSE', errno: -ERRNO.EADDRINUSE, syscall: 'bind', path: sock }, label)
    const expectConnect = (error: any, label: string) =>
      t.like(error, { code: 'ECONNREFUSED', errno: -ERRNO.ECONNREFUSED, syscall: 'connect', path: sock }, label)
    expectBind(
      thrown(() => UnixListener.bind(sock)),
      'UnixListener.bind',
    )
    expectBind(
      thrown(() => AsyncUnixListener.bind(sock)),
      'AsyncUnixListener.bind',
    )
    const server = createServer()
    server.listen(sock)
    const [serverError] = await onceEvent(server, 'error').then(
      (args) => args,
      (e) => [e],
    )
    expectBind(serverError, 'FdServer error')
    t.false(server.listening)
    expectConnect(
      thrown(() => UnixStream.connect(sock)),
      'UnixStream.connect',
    )
    expectConnect(await rejection(AsyncUnixStream.connect(sock)), 'AsyncUnixStream.connect')
    const client = connect(sock)
    const [clientError] = await onceEvent(client, 'error').then(
      (args) => args,
      (e) => [e],
    )
    expectConnect(clientError, "FdSocket 'error'")
    t.true(client.destroyed)
    t.true(fs.statSync(sock).isSocket(), 'the failed binds did not remove a file they did not create')
    // recovery: remove the stale file and bind again
    fs.unlinkSync(sock)
    const listener = UnixListener.bind(sock)
    const peer = UnixStream.connect(sock)
    peer.close()
    listener.close()
    t.false(fs.existsSync(sock))
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  'a socket path longer than 107 bytes is refused with ERR_INVALID_ARG_VALUE before any syscall',
  async (t) => {
    const dir = tmpDir()
    const at = (length: number) => path.join(dir, 'x'.repeat(length - dir.length - 1))
    const longest = at(107)
    const tooLong = at(108)
    t.is(Buffer.byteLength(longest), 107)
    t.is(Buffer.byteLength(tooLong), 108)
    // multi-byte: 54 two-byte characters are 108 bytes, though only 54 + dir characters
    const wide = path.join(dir, 'é'.repeat(Math.ceil((108 - dir.length - 1) / 2)))
    t.true(Buffer.byteLength(wide) >= 108)
    let cases = 0
    for (const bad of [tooLong, wide, path.join(dir, 'y'.repeat(4000))]) {
      const calls: Array<[string, () => unknown]> = [
        ['UnixListener.bind', () => UnixListener.bind(bad)],
        ['UnixStream.connect', () => UnixStream.connect(bad)],
        ['AsyncUnixListener.bind', () => AsyncUnixListener.bind(bad)],
        ['AsyncUnixStream.connect', () => AsyncUnixStream.connect(bad)],
        ['FdServer#listen', () => createServer().listen(bad)],
        ['connect', () => connect(bad)],
        ['FdSocket#connect', () => new FdSocket().connect(bad)],
      ]
      for (const [name, call] of calls) {
        const error = thrown(call)
        t.true(error instanceof TypeError, `${name}: ${error}`)
        t.is(error.code, 'ERR_INVALID_ARG_VALUE', name)
        t.is(error.syscall, undefined, `${name}: no syscall was made`)
        t.regex(error.message, /at most 107 bytes/, name)
        cases++
      }
      t.false(fs.existsSync(bad), 'no socket file was created')
    }
    t.deepEqual(fs.readdirSync(dir), [], 'nothing at all was created')
    // 107 bytes is the limit, and it works
    const listener = UnixListener.bind(longest)
    const stream = UnixStream.connect(longest)
    t.is(listener.path, longest)
    stream.close()
    listener.close()
    t.log(`${cases} over-long paths refused`)
    t.is(await settledOpenFds(baseline), baseline)
  },
)
