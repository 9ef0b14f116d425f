/**
 * Limits: 253 fds per message (SCM_MAX_FD), empty writes, the inbound bound
 * (maxQueuedFds) and truncation when the receiver runs out of fds.
 */
import test from 'ava'
import * as fs from 'node:fs'
import { QueueFullError, UnixListener, UnixStream } from '../index.js'
import {
  closeAll,
  fdIdentity,
  lastJson,
  openFds,
  pathIdentity,
  readAt,
  settledOpenFds,
  startFixture,
  thrown,
  tmpDir,
  tmpFile,
  tmpSocketPath,
} from './helpers.js'
import { checkNoFdLeaked } from './async-helpers.js'

checkNoFdLeaked(settledOpenFds)

function pair(): [UnixStream, UnixStream] {
  const [a, b] = UnixStream.pair()
  a.setReadTimeout(5000)
  b.setReadTimeout(5000)
  return [a, b]
}

function readString(stream: UnixStream, size = 4096): string {
  const buf = Buffer.alloc(size)
  return buf.subarray(0, stream.read(buf)).toString('utf8')
}

function dequeueAll(stream: UnixStream): number[] {
  const fds: number[] = []
  for (let fd = stream.dequeue(); fd !== null; fd = stream.dequeue()) fds.push(fd)
  return fds
}

/** `count` files named f0, f1, ... with content `file <i>`. */
function manyFiles(count: number): string[] {
  const dir = tmpDir()
  return Array.from({ length: count }, (_, i) => tmpFile(`file ${i}`, dir, `f${i}`))
}

test.serial('253 fds enqueued and sent in one write all arrive, in order', (t) => {
  const files = manyFiles(253)
  const [a, b] = pair()
  for (const file of files) {
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
  }
  t.is(a.write('!'), 1)
  t.is(readString(b), '!')
  const got = dequeueAll(b)
  t.is(got.length, 253)
  t.deepEqual(got.map(fdIdentity), files.map(pathIdentity))
  t.deepEqual(
    got.map((fd) => readAt(fd)),
    files.map((_, i) => `file ${i}`),
  )
  closeAll(got)
  a.close()
  b.close()
})

test.serial('the 254th enqueue throws QueueFullError and changes nothing', (t) => {
  const files = manyFiles(254)
  const [a, b] = pair()
  for (const file of files.slice(0, 253)) {
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
  }
  const fd = fs.openSync(files[253], 'r')
  const before = openFds()
  const error = thrown(() => a.enqueue(fd))
  t.true(error instanceof QueueFullError)
  t.true(error instanceof Error)
  t.is(error.code, 'ERR_FD_QUEUE_FULL')
  t.is(error.name, 'QueueFullError')
  t.is(openFds(), before, 'no duplicate was made or leaked')
  t.is(readAt(fd), 'file 253', 'the caller’s fd is untouched')
  fs.closeSync(fd)

  t.is(a.write('full'), 4)
  t.is(readString(b), 'full')
  const got = dequeueAll(b)
  t.is(got.length, 253)
  t.deepEqual(got.map(fdIdentity), files.slice(0, 253).map(pathIdentity))
  t.false(got.map(fdIdentity).includes(pathIdentity(files[253])))
  // the queue is empty again and takes fds
  const again = fs.openSync(files[253], 'r')
  a.enqueue(again)
  fs.closeSync(again)
  a.write('next')
  t.is(readString(b), 'next')
  const next = dequeueAll(b)
  t.is(next.length, 1)
  t.is(readAt(next[0]), 'file 253')
  closeAll([...got, ...next])
  a.close()
  b.close()
})

test.serial('an empty write with fds queued throws ERR_FD_EMPTY_WRITE and keeps them queued', (t) => {
  const file = tmpFile('kept through an empty write')
  const [a, b] = pair()
  t.is(a.write(''), 0, 'an empty write with nothing queued is fine')
  t.is(a.write(new Uint8Array(0)), 0)
  const fd = fs.openSync(file, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  const before = openFds()
  for (const empty of ['', new Uint8Array(0), Buffer.alloc(0)]) {
    const error = thrown(() => a.write(empty))
    t.is(error.code, 'ERR_FD_EMPTY_WRITE')
  }
  t.is(openFds(), before, 'the duplicate is still held, once')
  a.write('carrier')
  t.is(readString(b), 'carrier')
  const got = dequeueAll(b)
  t.is(got.length, 1)
  t.is(readAt(got[0]), 'kept through an empty write')
  t.is(fdIdentity(got[0]), pathIdentity(file))
  closeAll(got)
  a.close()
  b.close()
})

test.serial('the default maxQueuedFds is 1024 and it is settable', (t) => {
  const [a, b] = pair()
  t.is(b.maxQueuedFds, 1024)
  b.maxQueuedFds = 7
  t.is(b.maxQueuedFds, 7)
  t.is(a.maxQueuedFds, 1024, 'per stream')
  a.close()
  b.close()
})

test.serial('inbound bound: read throws QueueFullError without consuming bytes until the user dequeues', (t) => {
  const files = manyFiles(8)
  const [a, b] = pair()
  b.maxQueuedFds = 3
  // four writes of two fds each: m0 (f0 f1), m1 (f2 f3), m2 (f4 f5), m3 (f6 f7)
  for (let m = 0; m < 4; m++) {
    for (const file of files.slice(2 * m, 2 * m + 2)) {
      const fd = fs.openSync(file, 'r')
      a.enqueue(fd)
      fs.closeSync(fd)
    }
    a.write(`m${m}`)
  }
  a.close()

  const received: number[] = []
  let data = ''
  let refusals = 0
  for (;;) {
    let text: string
    try {
      text = readString(b)
    } catch (error) {
      t.true(error instanceof QueueFullError, String(error))
      t.is((error as QueueFullError).code, 'ERR_FD_QUEUE_FULL')
      refusals += 1
      // refused again while still full: it did not read anything in between
      t.throws(() => b.read(Buffer.alloc(16)), { instanceOf: QueueFullError })
      const fds = dequeueAll(b)
      t.true(fds.length >= 3, `dequeued ${fds.length}`)
      received.push(...fds)
      continue
    }
    if (text === '') break
    data += text
  }
  received.push(...dequeueAll(b))
  t.true(refusals >= 1, 'the bound was never hit')
  t.is(data, 'm0m1m2m3', 'no byte lost or duplicated by the refused reads')
  t.is(received.length, 8)
  t.deepEqual(received.map(fdIdentity), files.map(pathIdentity))
  t.deepEqual(
    received.map((fd) => readAt(fd)),
    files.map((_, i) => `file ${i}`),
  )
  closeAll(received)
  b.close()
})

test.serial('inbound bound: the refusal happens exactly when the queue reaches maxQueuedFds', (t) => {
  const file = tmpFile('bounded')
  const [a, b] = pair()
  b.maxQueuedFds = 3
  const fd = fs.openSync(file, 'r')
  for (let m = 0; m < 4; m++) {
    a.enqueue(fd)
    a.write(`${m}`)
  }
  fs.closeSync(fd)
  const one = new Uint8Array(1)
  for (let m = 0; m < 3; m++) {
    t.is(b.read(one), 1)
    t.is(String.fromCharCode(one[0]), `${m}`)
  }
  t.throws(() => b.read(one), { instanceOf: QueueFullError })
  const first = b.dequeue()!
  t.is(readAt(first), 'bounded')
  t.is(b.read(one), 1, 'one dequeue makes room for the next read')
  t.is(String.fromCharCode(one[0]), '3')
  const rest = dequeueAll(b)
  t.is(rest.length, 3)
  t.true(rest.every((r) => fdIdentity(r) === pathIdentity(file)))
  closeAll([first, ...rest])
  a.close()
  b.close()
})

test.serial('the default bound of 1024 holds: reads stop once 1024 fds wait', (t) => {
  const file = tmpFile('x')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  const one = new Uint8Array(1)
  // 5 messages of 253: after four reads 1012 wait (< 1024), the fifth read is allowed and
  // overshoots to 1265; then reads are refused
  for (let m = 0; m < 6; m++) {
    for (let i = 0; i < 253; i++) a.enqueue(fd)
    a.write('m')
    if (m < 5) {
      t.is(b.read(one), 1)
    }
  }
  fs.closeSync(fd)
  t.throws(() => b.read(one), { instanceOf: QueueFullError })
  const got = dequeueAll(b)
  t.is(got.length, 5 * 253)
  t.true(got.every((r) => fdIdentity(r) === pathIdentity(file)))
  closeAll(got)
  t.is(b.read(one), 1)
  const last = dequeueAll(b)
  t.is(last.length, 253)
  closeAll(last)
  a.close()
  b.close()
})

test.serial(
  'truncation: a receiver at its open-file limit gets the bytes, the fds that fit, then ERR_FD_TRUNCATED once',
  async (t) => {
    const dir = tmpDir()
    const big = tmpFile('one of 253', dir, 'big')
    const later = ['later a', 'later b', 'later c'].map((c, i) => tmpFile(c, dir, `later${i}`))
    const socketPath = tmpSocketPath()
    const listener = UnixListener.bind(socketPath)
    // node itself needs about 30 fds to start (it fails under `ulimit -n 28`); 64 leaves a
    // few dozen free, far fewer than 253
    const child = startFixture('truncation', [socketPath], { ulimit: 64 })
    await child.waitForLine(/^connected$/)
    const stream = listener.accept()
    const fd = fs.openSync(big, 'r')
    for (let i = 0; i < 253; i++) stream.enqueue(fd)
    fs.closeSync(fd)
    stream.write('first message, 253 fds')
    for (const file of later) {
      const lfd = fs.openSync(file, 'r')
      stream.enqueue(lfd)
      fs.closeSync(lfd)
    }
    stream.write('second message')
    const third = fs.openSync(later[0], 'r')
    stream.enqueue(third)
    stream.enqueue(third)
    fs.closeSync(third)
    stream.write('third message')
    stream.close()
    listener.close()

    const result = await child.done
    t.is(result.code, 0, result.stderr)
    const report = lastJson(result)
    t.log(`limit ${report.limit}, free below it ${report.freeBelowLimit}, fds that arrived ${report.first.fds.length}`)
    t.is(report.limit, 64)
    t.is(report.firstData, 'first message, 253 fds', 'the bytes are delivered whole')
    const arrived = report.first.fds.length
    t.true(arrived > 0 && arrived < 253, `${arrived} fds arrived`)
    t.is(arrived, report.freeBelowLimit, 'every free fd number was filled')
    t.true(
      report.first.fds.every(
        (f: { content: string; identity: string }) => f.content === 'one of 253' && f.identity === pathIdentity(big),
      ),
    )
    t.deepEqual(report.first.errors, ['ERR_FD_TRUNCATED'], 'reported exactly once')
    t.deepEqual(report.first.errorsAt, [arrived], 'after the fds that did arrive, where the lost ones would be')
    t.deepEqual(report.dequeueAfter, [null, null])
    t.true(report.tableFull, 'the fd table really was full (open gave EMFILE)')
    t.is(report.secondData, 'second message')
    t.deepEqual(report.second.errors, [])
    t.deepEqual(
      report.second.fds.map((f: { content: string }) => f.content),
      ['later a', 'later b', 'later c'],
    )
    t.deepEqual(
      report.second.fds.map((f: { identity: string }) => f.identity),
      later.map(pathIdentity),
    )
    // the receiver filled its own table before reading the third message
    t.true(report.fillers > 0)
    t.is(report.thirdData, 'third message', 'bytes still delivered')
    t.deepEqual(report.third.fds, [], 'no room for any fd')
    t.deepEqual(report.third.errors, ['ERR_FD_TRUNCATED'])
    t.deepEqual(report.third.errorsAt, [0])
    t.is(report.eof, 0)
    t.false(fs.existsSync(socketPath))
  },
)
