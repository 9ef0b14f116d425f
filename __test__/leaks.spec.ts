/**
 * Ownership (SPEC section 4): close(), fatal write errors and garbage collection close every
 * fd a stream holds. Each check watches a pipe (FIFO) whose write end only the queue still
 * holds: its read end sees end-of-file exactly when that last copy is closed, which fd
 * number reuse cannot fake. The fd count of this process is checked too.
 */
import test from 'ava'
import * as fs from 'node:fs'
import { UnixStream } from '../index.js'
import { lastJson, makeFifo, openFds, readAt, runFixture, settledOpenFds, tmpFile } from './helpers.js'

let baseline = 0
test.before(async () => {
  baseline = await settledOpenFds()
})
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})

/** A FIFO whose write end is enqueued on `stream` and then closed by us: only the queue holds it. */
function enqueueWatched(stream: UnixStream) {
  const fifo = makeFifo()
  stream.enqueue(fifo.writeFd)
  fs.closeSync(fifo.writeFd)
  fifo.writeFd = -1
  return fifo
}

test.serial('close() closes the fds of both queues: outbound not sent, inbound not dequeued', (t) => {
  const [a, b] = UnixStream.pair()
  b.setReadTimeout(5000)
  a.setReadTimeout(5000)
  const before = openFds()

  // a's inbound queue: an fd b sent that a never dequeues
  const inbound = enqueueWatched(b)
  b.write('i')
  t.is(a.read(Buffer.alloc(1)), 1)
  // a's outbound queue: an fd never written
  const outbound = enqueueWatched(a)
  t.true(inbound.isWriterOpen(), 'held by a’s inbound queue')
  t.true(outbound.isWriterOpen(), 'held by a’s outbound queue')
  t.is(openFds(), before + 4, 'two FIFO read ends plus the two queued write ends')

  a.close()
  t.false(inbound.isWriterOpen(), 'the undequeued fd was closed')
  t.false(outbound.isWriterOpen(), 'the unsent fd was closed')
  t.is(openFds(), before + 2 - 1, 'only the two FIFO read ends are left, and a’s socket is gone')
  inbound.close()
  outbound.close()
  b.close()
  t.is(openFds(), before - 2)
})

test.serial('fds sent but never read are closed once both ends are closed', (t) => {
  const [a, b] = UnixStream.pair()
  const fifo = enqueueWatched(a)
  a.write('in flight')
  t.true(fifo.isWriterOpen(), 'in flight in the socket buffer')
  a.close()
  t.true(fifo.isWriterOpen(), 'still in flight: b may read it')
  b.close()
  t.false(fifo.isWriterOpen(), 'freed with the socket')
  fifo.close()
})

test.serial('a fatal write error (EPIPE) closes the queued duplicates and reports the error', (t) => {
  const [a, b] = UnixStream.pair()
  b.close()
  const fifo = enqueueWatched(a)
  const before = openFds()
  const error = (() => {
    try {
      a.write('nobody listens')
    } catch (e) {
      return e as NodeJS.ErrnoException
    }
    return undefined
  })()
  t.is(error?.code, 'EPIPE')
  t.is(error?.syscall, 'sendmsg')
  t.false(fifo.isWriterOpen(), 'the duplicate was closed, not kept')
  t.is(openFds(), before - 1)
  t.is(a.write(''), 0, 'the outbound queue is empty now')
  fifo.close()
  a.close()
})

test.serial('a dequeued fd belongs to the caller: close() of the stream leaves it open', (t) => {
  const [a, b] = UnixStream.pair()
  b.setReadTimeout(5000)
  const file = tmpFile('mine now')
  const fd = fs.openSync(file, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('x')
  b.read(Buffer.alloc(1))
  const got = b.dequeue()!
  a.close()
  b.close()
  t.is(readAt(got), 'mine now')
  fs.closeSync(got)
})

test.serial('a thousand round trips leave the fd count where it was', (t) => {
  const file = tmpFile('loop')
  const fd = fs.openSync(file, 'r')
  const before = openFds()
  const one = Buffer.alloc(1)
  for (let i = 0; i < 1000; i++) {
    const [a, b] = UnixStream.pair()
    a.enqueue(fd)
    a.enqueue(fd)
    a.write('x')
    b.read(one)
    const got = b.dequeue()!
    if (i % 100 === 0) t.is(readAt(got), 'loop')
    fs.closeSync(got) // the second one stays queued and is closed by close()
    a.enqueue(fd) // and one more stays in a's outbound queue
    a.close()
    b.close()
  }
  t.is(openFds(), before)
  fs.closeSync(fd)
})

test.serial(
  'garbage collection of streams closes the socket and every queued fd (child with --expose-gc)',
  async (t) => {
    const result = await runFixture('gc', [], { nodeArgs: ['--expose-gc'] })
    t.is(result.code, 0, result.stderr)
    const report = lastJson(result)
    t.log(report)
    // two sockets, 5 fds in b's inbound queue, 4 (3 + the FIFO) in a's outbound queue
    t.is(report.whileAlive, report.baseline + 11)
    t.true(report.writerOpenBeforeGc)
    t.false(report.writerOpenAfterGc, 'the FIFO write end held only by a collected queue was closed')
    t.is(report.afterGc, report.baseline)
  },
)
