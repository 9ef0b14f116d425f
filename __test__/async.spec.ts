/**
 * The async classes: AsyncUnixStream / AsyncUnixListener. Real fds through real sockets,
 * in this process and with a child peer that uses the async API; every received fd is
 * checked by reading the file through it and by dev:ino equality with the original.
 */
import test, { type ExecutionContext } from 'ava'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { AsyncUnixListener, AsyncUnixStream, QueueFullError } from '../index.js'
import {
  closeAll,
  fdFlags,
  fdIdentity,
  lastJson,
  makeFifo,
  O_CLOEXEC,
  openFds,
  pathIdentity,
  readAt,
  runFixture,
  settledOpenFds,
  startFixture,
  tmpDir,
  tmpFile,
  tmpSocketPath,
} from './helpers.js'
import {
  codeOf,
  dequeueAll,
  enqueueFile,
  fileSet,
  outcome,
  type Outcome,
  readExactly,
  readToEnd,
  rejection,
  sleep,
  syncThrow,
  track,
  withTimeout,
} from './async-helpers.js'

const ERRNO = os.constants.errno
/** Longest any single wait may take before the test fails instead of hanging. */
const T = 10_000

let baseline = 0
test.before(async () => {
  // Warm up: the first async call starts napi's tokio runtime (its epoll and wake fds stay
  // open for the life of the process), so count only after that.
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

/** A connected pair, closed when the test ends. */
function pair(t: ExecutionContext): [AsyncUnixStream, AsyncUnixStream] {
  const [a, b] = AsyncUnixStream.pair()
  t.teardown(() => {
    a.close()
    b.close()
  })
  return [a, b]
}

/** Dequeues everything now waiting, closes those fds when the test ends. */
function takeFds(t: ExecutionContext, stream: AsyncUnixStream): number[] {
  const fds = dequeueAll(stream)
  t.teardown(() => closeAll(fds))
  return fds
}

function read(stream: AsyncUnixStream, size?: number): Promise<Buffer> {
  return withTimeout(stream.read(size), T, `read(${size ?? ''})`)
}

test.serial('pair: bytes go both ways, in order; fd is the socket', async (t) => {
  const [a, b] = pair(t)
  t.true(fs.fstatSync(a.fd).isSocket())
  t.true(fs.fstatSync(b.fd).isSocket())
  t.not(a.fd, b.fd)
  t.is(await a.write('hello'), 5)
  t.is((await read(b)).toString(), 'hello')
  t.is(await b.write(Buffer.from('world!')), 6)
  t.is((await readExactly(a, 6)).toString(), 'world!')
  // A Uint8Array view sends only its own bytes.
  const backing = Buffer.from('xxABCxx')
  t.is(await a.write(new Uint8Array(backing.buffer, backing.byteOffset + 2, 3)), 3)
  t.is((await readExactly(b, 3)).toString(), 'ABC')
  // An empty write with no fd queued is a no-op that resolves 0.
  t.is(await a.write(''), 0)
  t.is(a.dequeue(), null)
  t.is(b.dequeue(), null)
})

test.serial('fds pass through a pair: content read through them, same dev:ino, close-on-exec, in order', async (t) => {
  const [a, b] = pair(t)
  const set = fileSet(3, 'pair-content-')
  t.teardown(set.remove)
  for (const file of set.files) enqueueFile(a, file) // our own copies are closed at once
  t.is(await a.write('x'), 1)
  t.is((await read(b)).toString(), 'x')
  const fds = takeFds(t, b)
  t.is(fds.length, 3)
  fds.forEach((fd, i) => {
    t.is(readAt(fd), set.contents[i])
    t.is(fdIdentity(fd), pathIdentity(set.files[i]))
    t.truthy(fdFlags(fd) & O_CLOEXEC, 'received fds are close-on-exec')
  })
  // And the other direction, on the next write only.
  enqueueFile(b, set.files[2])
  await b.write('y')
  t.is((await read(a)).toString(), 'y')
  const back = takeFds(t, a)
  t.is(back.length, 1)
  t.is(readAt(back[0]), set.contents[2])
  t.is(fdIdentity(back[0]), pathIdentity(set.files[2]))
})

test.serial(
  'across processes: a child (async API) connects, gets fds with their writes, sends them back',
  async (t) => {
    const sock = tmpSocketPath()
    const listener = AsyncUnixListener.bind(sock)
    t.teardown(() => listener.close())
    const child = startFixture('async-peer', ['echo-connect', sock], { timeoutMs: 20_000 })
    t.teardown(() => child.child.kill('SIGKILL'))
    const stream = await withTimeout(listener.accept(), 15_000, 'accept of the child')
    t.teardown(() => stream.close())
    const set = fileSet(6, 'xproc-')
    t.teardown(set.remove)
    // Three writes carrying 1, 2 and 3 fds, all started before any has finished.
    const groups = [[0], [1, 2], [3, 4, 5]]
    const writes = groups.map((group, g) => {
      for (const i of group) enqueueFile(stream, set.files[i])
      return stream.write(`m${g};`)
    })
    t.deepEqual(await withTimeout(Promise.all(writes), T, 'writes'), [3, 3, 3])
    await withTimeout(stream.shutdown('write'), T, 'shutdown')

    // The child answers each fd with `${content}\n` carrying that same fd back.
    const reads: { start: number; end: number; fds: number[] }[] = []
    let text = ''
    for (;;) {
      const chunk = await read(stream)
      const fds = takeFds(t, stream)
      if (chunk.length === 0) {
        t.deepEqual(fds, [])
        break
      }
      reads.push({ start: text.length, end: text.length + chunk.length, fds })
      text += chunk.toString()
    }
    const lines = text.split('\n').slice(0, -1)
    t.deepEqual(lines, set.contents)
    // Each reply's fd arrived with the read that returned the reply's first byte.
    const lineStarts = lines.map((_, k) => lines.slice(0, k).reduce((n, l) => n + l.length + 1, 0))
    const back: number[] = []
    for (const r of reads) {
      const starting = lineStarts.filter((s) => s >= r.start && s < r.end).length
      t.is(r.fds.length, starting, `read [${r.start}, ${r.end}) brings one fd per reply starting in it`)
      back.push(...r.fds)
    }
    t.is(back.length, 6)
    back.forEach((fd, i) => {
      t.is(readAt(fd), set.contents[i])
      t.is(fdIdentity(fd), pathIdentity(set.files[i]), 'the fd came back to the very same file')
    })

    const result = await child.done
    t.is(result.code, 0, result.stderr)
    const report = lastJson<{
      data: string
      fds: { content: string; identity: string; cloexec: boolean; withRead: number }[]
    }>(result)
    t.is(report.data, 'm0;m1;m2;')
    t.deepEqual(
      report.fds.map((f) => f.content),
      set.contents,
    )
    t.deepEqual(
      report.fds.map((f) => f.identity),
      set.files.map(pathIdentity),
    )
    t.true(report.fds.every((f) => f.cloexec))
    // The fds of one write come with one read; the three writes with three different reads.
    const withRead = report.fds.map((f) => f.withRead)
    t.is(withRead[1], withRead[2])
    t.is(withRead[3], withRead[4])
    t.is(withRead[4], withRead[5])
    t.true(withRead[0] < withRead[1] && withRead[2] < withRead[3], `reads: ${withRead}`)
  },
)

test.serial('across processes: AsyncUnixStream.connect to a child AsyncUnixListener', async (t) => {
  const sock = tmpSocketPath()
  const child = startFixture('async-peer', ['echo-listen', sock], { timeoutMs: 20_000 })
  t.teardown(() => child.child.kill('SIGKILL'))
  await child.waitForLine(/^listening$/)
  const stream = await withTimeout(AsyncUnixStream.connect(sock), T, 'connect')
  t.teardown(() => stream.close())
  const file = tmpFile('to-the-child-and-back')
  enqueueFile(stream, file)
  await stream.write('hi')
  await stream.shutdown('write')
  const { data, fds } = await readToEnd(stream)
  t.teardown(() => closeAll(fds))
  t.is(data.toString(), 'to-the-child-and-back\n')
  t.is(fds.length, 1)
  t.is(readAt(fds[0]), 'to-the-child-and-back')
  t.is(fdIdentity(fds[0]), pathIdentity(file))
  const result = await child.done
  t.is(result.code, 0, result.stderr)
  const report = lastJson(result)
  t.is(report.data, 'hi')
  t.is(report.fds[0].identity, pathIdentity(file))
})

test.serial(
  'across processes: a child starts 40 writes at once; each fd rides on the first byte of its own write',
  async (t) => {
    const sock = tmpSocketPath()
    const listener = AsyncUnixListener.bind(sock)
    t.teardown(() => listener.close())
    const set = fileSet(40, 'burst-')
    t.teardown(set.remove)
    const expected = new Map<number, number[]>() // message -> file indexes
    const plan = set.files.map((_, i) => {
      const files: number[] = []
      if (i % 4 === 0) files.push(i)
      if (i % 10 === 5) files.push(i, (i + 1) % 40)
      expected.set(i, files)
      return { data: `msg-${i};`, files: files.map((f) => set.files[f]) }
    })
    const child = startFixture('async-peer', ['burst', sock, JSON.stringify(plan)], { timeoutMs: 20_000 })
    t.teardown(() => child.child.kill('SIGKILL'))
    const stream = await withTimeout(listener.accept(), 15_000, 'accept of the child')
    t.teardown(() => stream.close())

    // Byte by byte: read(1) proves exactly which byte each fd came with.
    const text = plan.map((m) => m.data).join('')
    const starts = new Map<number, number>() // byte offset -> message
    let offset = 0
    plan.forEach((m, i) => {
      starts.set(offset, i)
      offset += m.data.length
    })
    let got = ''
    for (let at = 0; at < text.length; at++) {
      const byte = await read(stream, 1)
      t.is(byte.length, 1)
      got += byte.toString()
      const fds = takeFds(t, stream)
      const message = starts.get(at)
      const files = message === undefined ? [] : expected.get(message)!
      if (fds.length !== files.length) {
        t.fail(`byte ${at} brought ${fds.length} fds, expected ${files.length} (message ${message})`)
        continue
      }
      fds.forEach((fd, k) => t.is(readAt(fd), set.contents[files[k]], `fd ${k} of message ${message}`))
    }
    t.is(got, text, 'the writes arrive whole and in call order')
    t.is((await read(stream)).length, 0)
    const result = await child.done
    t.is(result.code, 0, result.stderr)
    t.deepEqual(
      lastJson(result).bytes,
      plan.map((m) => m.data.length),
    )
  },
)

test.serial(
  'reads of data already there return Buffers of their own, of every size, small and beyond 64 KiB',
  async (t) => {
    const [a, b] = pair(t)
    // Each size once, written before the read that takes it (so the read finds it at once).
    const sizes = [1, 2, 16, 17, 64, 65, 1000, 65535, 65536, 65537, 300_000]
    const kept: Array<[Buffer, Buffer]> = []
    for (const size of sizes) {
      const data = crypto.randomBytes(size)
      const writing = a.write(data)
      let got = Buffer.alloc(0)
      while (got.length < size) {
        // A read larger than what is there returns what is there.
        const part = await withTimeout(b.read(size === 300_000 ? 1 << 20 : size), T, `read of ${size}`)
        t.is(part.buffer.byteLength, part.length, `the ${part.length} bytes read have memory of their own`)
        kept.push([part, Buffer.from(part)])
        got = Buffer.concat([got, part])
      }
      await writing
      t.true(got.equals(data), `${size} bytes arrive as written`)
    }
    // Later reads changed none of the earlier results.
    t.true(kept.every(([part, copy]) => part.equals(copy)))
  },
)

test.serial('reads that wait for their data return Buffers of their own, small and large', async (t) => {
  const [a, b] = pair(t)
  // Each read is made before its data is written, so it waits; around the size up to which
  // the bytes come through the scratch Buffer (4 KiB), and a whole read buffer.
  const sizes = [1, 17, 4095, 4096, 4097, 65536]
  const kept: Array<[Buffer, Buffer]> = []
  for (const size of sizes) {
    const data = crypto.randomBytes(size)
    const reading = b.read(size)
    const writing = a.write(data)
    let got = await withTimeout(reading, T, `read of ${size}`)
    kept.push([got, Buffer.from(got)])
    while (got.length < size) {
      const part = await withTimeout(b.read(size), T, `rest of ${size}`)
      kept.push([part, Buffer.from(part)])
      got = Buffer.concat([got, part])
    }
    await writing
    t.true(got.equals(data), `${size} bytes arrive as written`)
  }
  // Later reads changed none of the earlier results.
  t.true(kept.every(([part, copy]) => part.equals(copy)))
})

test.serial(
  'a read settles with its own bytes even when code run as it settles reads into the same scratch Buffer',
  async (t) => {
    // Two streams with data: one whose read waits for it, and one whose read will find it
    // there at once (both small, so both pass through this layer's scratch Buffer).
    const [a, b] = pair(t)
    const [c, d] = pair(t)
    await c.write('ZZZ')
    await sleep(20)
    const seen: string[] = []
    // The settling read's signal runs user code before the Promise settles: its
    // removeEventListener, which reads from the other stream.
    const signal = new AbortController().signal
    signal.removeEventListener = function (...args: Parameters<AbortSignal['removeEventListener']>) {
      void d.read(16).then((other) => seen.push(other.toString()))
      return EventTarget.prototype.removeEventListener.apply(this, args)
    }
    const reading = b.read(64, { signal })
    await a.write('hello')
    t.is((await withTimeout(reading, T, 'the read with a signal')).toString(), 'hello')
    await withTimeout(
      (async () => {
        while (seen.length === 0) await sleep(5)
      })(),
      T,
      'the read made meanwhile',
    )
    t.deepEqual(seen, ['ZZZ'])

    // Several reads settle in one go while the continuation of the first makes a read that
    // is answered at once (again through the scratch Buffer): each keeps its own bytes.
    const streams = Array.from({ length: 4 }, () => pair(t))
    await c.write('YYYY')
    await sleep(20)
    let inBetween = ''
    const reads = streams.map(([, r], i) =>
      r.read(64).then(async (bytes) => {
        if (i === 0) inBetween = (await d.read(16)).toString()
        return bytes.toString()
      }),
    )
    streams.forEach(([w], i) => void w.write(`message ${i}`))
    t.deepEqual(await withTimeout(Promise.all(reads), T, 'four reads'), [
      'message 0',
      'message 1',
      'message 2',
      'message 3',
    ])
    t.is(inBetween, 'YYYY')
  },
)

test('with the scratch Buffer detached (its memory freed), reads still return their own bytes', async (t) => {
  const result = await runFixture('detached-scratch', [], { nodeArgs: ['--expose-gc'] })
  t.is(result.code, 0, result.stderr)
  t.deepEqual(lastJson(result), { detached: true, waited: 'waited', atOnce: 'at once', pushed: 'pushed' })
})

test('a waiting write whose Buffer is detached (memory freed) or shrunk fails with ERR_INVALID_STATE and sends only its own bytes; so does an FdSocket chunk detached in the write buffer, and one resized there goes out as written', async (t) => {
  const result = await runFixture('detached-write', [], { nodeArgs: ['--expose-gc'] })
  t.is(result.code, 0, result.stderr)
  const report = lastJson(result)
  const size = 8 << 20
  t.is(report.leaked, 0)
  t.deepEqual(report.whole, { settled: size, received: size, foreign: false })
  // Detached while it waited in an FdSocket's buffer (either driver): the socket fails,
  // the chunk before it arrives whole, and neither the chunk nor its fd goes out.
  t.deepEqual(report.queued, { settled: 'ERR_INVALID_STATE', received: size, foreign: false, fds: 0 })
  // Resized while it waited there: it goes out as it was written, and 'finish' comes.
  t.deepEqual(report.resized, { settled: 'finished', received: 3 * size + 16, foreign: false, fds: 1 })
  for (const name of ['detached', 'shrunk', 'socket']) {
    const outcome = report[name]
    t.false(outcome.foreign, `${name}: the peer got bytes that were not the Buffer's`)
    if (report.driver === 'threads') {
      // The rest was copied before the write waited: it all goes out.
      t.deepEqual(outcome, { settled: size, received: size, foreign: false }, name)
    } else {
      // Sent from the Buffer itself: what went before the change arrives, then it fails.
      t.is(outcome.settled, 'ERR_INVALID_STATE', name)
      t.true(outcome.received > 0 && outcome.received < size, `${name}: ${outcome.received} bytes`)
    }
  }
})

test('user code that misbehaves while a read settles or a chunk is delivered: no hang, no lost or closed fd, the process exits', async (t) => {
  const run = async (scenario: string) => {
    const result = await runFixture('hostile-js', [scenario], { timeoutMs: 60_000 })
    t.false(result.timedOut, `${scenario}: the child did not exit by itself; ${result.stderr}`)
    t.is(result.code, 0, `${scenario}: ${result.stderr}`)
    return lastJson(result)
  }
  // The signal's removeEventListener throws as the read settles: the read still resolves.
  t.deepEqual(await run('remove-throws'), { read: 'hello', uncaught: ['removeEventListener'] })
  // Its addEventListener throws as the read starts waiting: that read rejects, was
  // cancelled before reading, and the next read gets the bytes.
  t.deepEqual(await run('add-throws'), { failed: 'addEventListener', next: 'after', uncaught: [] })
  // Its reason getter throws as the read is aborted: the read still rejects.
  t.deepEqual(await run('reason-throws'), { outcome: 'ABORT_ERR', uncaught: [] })
  // Buffer.allocUnsafeSlow, replaced after load, would read into the scratch Buffer before
  // the settling read's bytes are copied out of it: the layer does not call it.
  t.deepEqual(await run('patched-alloc'), { read: 'hello', other: null, uncaught: [] })
  // A setter run as a delivery flags its 'fds' array receives a message with an fd at
  // once: that fd is the caller's and stays open, though the delivery then fails (the
  // socket is destroyed, and the fd it would have handed over is closed).
  t.deepEqual(await run('setter-receives'), {
    received: 1,
    open: true,
    leaked: 0,
    destroyed: true,
    uncaught: ['setter'],
  })
  // Array.prototype.push, replaced, reads over the fd numbers of an 'fds' array being
  // made: they were copied out first, and both fds are the file sent.
  t.deepEqual(await run('patched-push'), { count: 2, same: 2, data: 'x', other: 8192, uncaught: [] })
  // An async_hooks `before` callback, run right before the call that settles a read, reads
  // at once from another stream: into a Buffer of its own, not over the settling bytes.
  t.deepEqual(await run('before-hook'), { read: 'hello', other: 8192, uncaught: [] })
  // A tracer writes a line from every such callback: its writes go at once (none waits
  // for the settlement that ran the callback, which would make a callback of its own),
  // and the process exits with the hook on.
  t.deepEqual(await run('before-hook-writer'), { read: 'hello', bounded: true, uncaught: [] })
})

test('a read started by an async_hooks before callback of the call that settles an earlier read resolves after it, and each gets its own fd', async (t) => {
  const result = await runFixture('before-hook-order', [], { timeoutMs: 60_000 })
  t.false(result.timedOut, `the child did not exit by itself; ${result.stderr}`)
  t.is(result.code, 0, result.stderr)
  // The second read settles later, whatever the socket holds: the code after each read
  // dequeues the fd its bytes brought. So for a second receive of a message socket.
  t.deepEqual(lastJson(result), {
    small: ['first:A5:file-A', 'second:B5:file-B'],
    smallSignal: ['first:A5:file-A', 'second:B5:file-B'],
    large: ['first:A5000:file-A', 'second:B5000:file-B'],
    messages: ['first:A:file-A', 'second:B:file-B'],
    otherSocket: ['read:hello', 'kept:file-B', 'other0:"":file-A', 'other1:"xyz":file-B'],
  })
})

test.serial('concurrent reads are served in call order', async (t) => {
  const [a, b] = pair(t)
  const reads = [b.read(1), b.read(1), b.read(1)]
  await sleep(20)
  await a.write('abc')
  t.deepEqual((await withTimeout(Promise.all(reads), T, 'three reads')).map(String), ['a', 'b', 'c'])

  // Many reads of different sizes, all pending before one write: each takes its slice,
  // and they resolve in the order they were called.
  const sizes = Array.from({ length: 40 }, (_, i) => 1 + ((i * 7) % 5))
  const order: number[] = []
  const many = sizes.map((size, i) =>
    b.read(size).then((buf) => {
      order.push(i)
      return buf.toString()
    }),
  )
  const text = crypto
    .randomBytes(200)
    .toString('hex')
    .slice(
      0,
      sizes.reduce((x, y) => x + y),
    )
  await sleep(20)
  await a.write(text)
  const slices = await withTimeout(Promise.all(many), T, 'forty reads')
  let at = 0
  t.deepEqual(
    slices,
    sizes.map((size) => text.slice(at, (at += size))),
  )
  t.deepEqual(
    order,
    sizes.map((_, i) => i),
  )
})

test.serial('concurrent writes never interleave and go out in call order', async (t) => {
  const [a, b] = pair(t)
  const N = 12
  const SIZE = 1 << 20
  const blocks = Array.from({ length: N }, () => crypto.randomBytes(SIZE))
  const writes = blocks.map((block) => a.write(block))
  const parts: Buffer[] = []
  let got = 0
  while (got < N * SIZE) {
    const part = await read(b, 256 * 1024)
    t.true(part.length > 0)
    parts.push(part)
    got += part.length
  }
  t.deepEqual(await withTimeout(Promise.all(writes), T, 'writes'), Array(N).fill(SIZE))
  const data = Buffer.concat(parts)
  t.is(data.length, N * SIZE)
  for (let k = 0; k < N; k++) {
    t.true(data.subarray(k * SIZE, (k + 1) * SIZE).equals(blocks[k]), `block ${k} is whole and in place`)
  }
})

test.serial('close() settles pending writes and reads in call order', async (t) => {
  const [a, b] = pair(t)
  // More than the socket holds, and nobody reads: most of them are still pending.
  const order: string[] = []
  const note = (name: string) => [() => order.push(name), () => order.push(name)]
  const pending = Array.from({ length: 20 }, (_, i) => a.write(Buffer.alloc(64 * 1024, i)).then(...note(`write ${i}`)))
  for (let i = 0; i < 5; i++) pending.push(a.read(1).then(...note(`read ${i}`)))
  // The first goes out at once; the socket is full long before the last.
  await withTimeout(pending[0], T, 'the first write')
  a.close()
  await withTimeout(Promise.all(pending), T, 'the operations pending at close()')
  const names = [
    ...Array.from({ length: 20 }, (_, i) => `write ${i}`),
    ...Array.from({ length: 5 }, (_, i) => `read ${i}`),
  ]
  t.deepEqual(order, names)
})

test.serial(
  'after 1,030 reads that complete at once, writes still settle in call order: five, then one that the closed peer refuses',
  async (t) => {
    const [a, b] = pair(t)
    const [c, d] = pair(t)
    await b.write(Buffer.alloc(2000, 1))
    // Spends this turn's budget of operations that complete at once: the writes after it
    // settle once the event loop has turned.
    const reads = Array.from({ length: 1030 }, () => a.read(1))
    const order: string[] = []
    const note = (write: Promise<number>, name: string) =>
      write.then(
        () => order.push(name),
        (e: NodeJS.ErrnoException) => order.push(`${name}:${e.code}`),
      )
    const writes = Array.from({ length: 5 }, (_, i) => note(c.write('x'), `write ${i}`))
    d.close()
    writes.push(note(c.write('y'), 'last'))
    await withTimeout(Promise.all([...reads, ...writes]), T, 'the reads and writes')
    // Whether a write ran before the close reached the socket depends on the driver (under
    // threads they run on its worker meanwhile): the order does not.
    t.deepEqual(
      order.map((entry) => entry.split(':')[0]),
      ['write 0', 'write 1', 'write 2', 'write 3', 'write 4', 'last'],
    )
    t.is(order[5], 'last:EPIPE')
  },
)

test.serial('an fd enqueued between two write calls rides on the later one', async (t) => {
  const [a, b] = pair(t)
  const set = fileSet(4, 'between-')
  t.teardown(set.remove)
  // Both writes called before either started.
  enqueueFile(a, set.files[0])
  const w1 = a.write('1')
  enqueueFile(a, set.files[1])
  const w2 = a.write('2')
  await withTimeout(Promise.all([w1, w2]), T, 'writes')
  t.is((await read(b, 1)).toString(), '1')
  let fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['between-0'],
  )
  t.is((await read(b, 1)).toString(), '2')
  fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['between-1'],
  )

  // The first write is still going (1 MiB into a full socket buffer) when the second fd is
  // enqueued: it must not ride on any later sendmsg of the first write.
  const SIZE = 1 << 20
  enqueueFile(a, set.files[2])
  const big = track(a.write(Buffer.alloc(SIZE, 'a')))
  await sleep(50)
  t.false(big.settled, 'the 1 MiB write is still pending')
  enqueueFile(a, set.files[3])
  const small = a.write('b')
  // First byte of the big write: it brings file 2 and nothing else.
  t.is((await read(b, 1)).toString(), 'a')
  fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['between-2'],
  )
  // The rest of the big write, never reading past it: no fd at all.
  let rest = SIZE - 1
  let strayFds = 0
  while (rest > 0) {
    const part = await read(b, Math.min(rest, 65536))
    t.true(part.every((c) => c === 0x61))
    rest -= part.length
    const stray = takeFds(t, b)
    strayFds += stray.length
  }
  t.is(strayFds, 0, 'no fd came with the later bytes of the first write')
  t.is(await withTimeout(big.promise, T, 'big write'), SIZE)
  t.is((await read(b, 1)).toString(), 'b')
  fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['between-3'],
  )
  t.is(await small, 1)
})

test.serial('never reads ahead: fds come with the read of their own bytes only', async (t) => {
  const [a, b] = pair(t)
  const set = fileSet(3, 'ahead-')
  t.teardown(set.remove)
  // 'a' without fds, then 'b' with one.
  await a.write('a')
  enqueueFile(a, set.files[0])
  await a.write('b')
  await sleep(30)
  t.is(b.dequeue(), null, 'nothing is read before a read is called')
  t.is((await read(b, 1)).toString(), 'a')
  t.is(b.dequeue(), null, "the fd of the 'b' write did not come with 'a'")
  t.is((await read(b, 1)).toString(), 'b')
  let fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['ahead-0'],
  )

  // Two fd-carrying writes, then a big read: it returns only the first write and its fd.
  enqueueFile(a, set.files[1])
  await a.write('c')
  enqueueFile(a, set.files[2])
  await a.write('d')
  t.is((await read(b)).toString(), 'c')
  fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['ahead-1'],
  )
  t.is((await read(b)).toString(), 'd')
  fds = takeFds(t, b)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['ahead-2'],
  )
})

test.serial('fds are dequeue-able right after the read resolves and not before', async (t) => {
  const [a, b] = pair(t)
  const file = tmpFile('timing')
  const pending = track(b.read())
  let polls = 0
  const early: number[] = []
  const poller = (async () => {
    while (!pending.settled) {
      const fd = b.dequeue()
      if (fd !== null) early.push(fd)
      polls++
      await new Promise((resolve) => setImmediate(resolve))
    }
  })()
  await sleep(20)
  enqueueFile(a, file)
  await a.write('x')
  // Give the reader's result time to travel while the poller keeps looking.
  const chunk = await withTimeout(pending.promise, T, 'read')
  const fd = b.dequeue() // synchronously, in the continuation of the resolved read
  t.teardown(() => closeAll([fd, ...early]))
  await poller
  t.deepEqual(early, [], 'no fd was dequeue-able while the read was pending')
  t.true(polls > 0)
  t.is(chunk.toString(), 'x')
  t.not(fd, null)
  t.is(readAt(fd!), 'timing')
  t.is(fdIdentity(fd!), pathIdentity(file))
  t.is(b.dequeue(), null)
})

for (const first of ['nothing', 'a read on another stream (a drive of the runtime)'] as const) {
  test.serial(
    `close() in the first read's continuation, after ${first}, with 8 reads pending: the others took nothing, and a holder of the socket gets every later byte and fd`,
    async (t) => {
      const [a, peer] = pair(t)
      const [idle] = pair(t)
      // A duplicate of a's socket, as handing it to a successor process makes one.
      const [x, y] = pair(t)
      x.enqueue(a.fd)
      await x.write('h')
      await readExactly(y, 1)
      const successor = AsyncUnixStream.fromFd(y.dequeue()!)
      t.teardown(() => successor.close())
      const set = fileSet(10, 'handover-')
      t.teardown(set.remove)
      const got: string[] = []
      const reads = Array.from({ length: 8 }, (_, i) =>
        a.read(64).then(
          (data) => {
            got.push(
              `${data}:${takeFds(t, a)
                .map((fd) => readAt(fd))
                .join(',')}`,
            )
            if (i !== 0) return
            // Something else first: a read that waits (settled by the teardown's close).
            if (first !== 'nothing') idle.read(16).catch(() => {})
            // Hands over: this process lets go of its descriptor in the first continuation.
            a.close()
          },
          (error) => codeOf(error),
        ),
      )
      for (let i = 0; i < 10; i++) {
        enqueueFile(peer, set.files[i])
        await peer.write(`m${i};`)
      }
      peer.close()
      const outcomes = await withTimeout(Promise.all(reads), T, 'the pending reads')
      t.deepEqual(outcomes.slice(1), Array(7).fill('ERR_SOCKET_CLOSED'))
      const rest = await readToEnd(successor, T)
      t.teardown(() => closeAll(rest.fds))
      // One read per message (each carries an fd): the successor's reads, joined.
      t.deepEqual(got, ['m0;:handover-0'])
      t.is(rest.data.toString(), Array.from({ length: 9 }, (_, i) => `m${i + 1};`).join(''))
      t.deepEqual(
        rest.fds.map((fd) => readAt(fd)),
        Array.from({ length: 9 }, (_, i) => `handover-${i + 1}`),
      )
    },
  )
}

test.serial(
  "a read called in a waiting read's continuation takes what is there at once, before a close() there",
  async (t) => {
    const [a, peer] = pair(t)
    const set = fileSet(2, 'at-once-')
    t.teardown(set.remove)
    let taken: number[] = []
    const next = withTimeout(
      a.read(64).then((first) => {
        taken = takeFds(t, a)
        // The second message is there already: this read takes it now, with its fd.
        const second = a.read(64)
        a.close()
        return Promise.all([first, second])
      }),
      T,
      'the reads',
    )
    // Both go out at once (the socket has room), before the first read's wait ends.
    enqueueFile(peer, set.files[0])
    await peer.write('a')
    enqueueFile(peer, set.files[1])
    await peer.write('b')
    const [first, second] = await next
    t.is(`${first}${second}`, 'ab')
    t.deepEqual(
      taken.map((fd) => readAt(fd)),
      ['at-once-0'],
    )
  },
)

test.serial('ten reads pending at once stop at maxQueuedFds: four resolve, the others wait for dequeue', async (t) => {
  const [a, b] = pair(t)
  b.maxQueuedFds = 4
  const set = fileSet(10, 'pending-')
  t.teardown(set.remove)
  const reads = Array.from({ length: 10 }, () => track(b.read()))
  for (let i = 0; i < 10; i++) {
    enqueueFile(a, set.files[i])
    await a.write(String(i))
  }
  for (let i = 0; i < 4; i++) t.is((await withTimeout(reads[i].promise, T, `read ${i}`)).toString(), String(i))
  await sleep(400)
  t.deepEqual(
    reads.map((r) => r.settled),
    [true, true, true, true, false, false, false, false, false, false],
    'no read past the bound while 4 fds wait for dequeue',
  )
  const received: number[] = []
  t.teardown(() => closeAll(received))
  for (let i = 4; i < 10; i++) {
    received.push(b.dequeue()!)
    t.is((await withTimeout(reads[i].promise, T, `read ${i}`)).toString(), String(i))
  }
  received.push(...dequeueAll(b))
  t.is(received.length, 10, 'none lost')
  received.forEach((fd, i) => t.is(readAt(fd), `pending-${i}`))
})

test.serial(
  'a read waiting on an empty socket when maxQueuedFds drops to the fds queued reads only after a dequeue',
  async (t) => {
    const [a, b] = pair(t)
    const set = fileSet(2, 'lowered-')
    t.teardown(set.remove)
    // A read that waited leaves the socket watched: the next one, finding it empty, is tried
    // by the event loop itself when data comes (the JS-thread driver's round-trip path).
    const first = b.read()
    enqueueFile(a, set.files[0])
    await a.write('0')
    t.is((await withTimeout(first, T, 'first read')).toString(), '0')
    const second = track(b.read())
    b.maxQueuedFds = 1
    enqueueFile(a, set.files[1])
    await a.write('1')
    await sleep(300)
    t.false(second.settled, 'no read past the bound lowered while it waited')
    const received = [b.dequeue()!]
    t.teardown(() => closeAll(received))
    t.is((await withTimeout(second.promise, T, 'read after a dequeue')).toString(), '1')
    received.push(...dequeueAll(b))
    t.is(received.length, 2, 'none lost')
    received.forEach((fd, i) => t.is(fdIdentity(fd), pathIdentity(set.files[i])))
  },
)

test.serial('reads that wait for their peer still get what came while the last one settled', async (t) => {
  const [a, b] = pair(t)
  const set = fileSet(7, 'answered-')
  t.teardown(set.remove)
  const received: number[] = []
  t.teardown(() => closeAll(received))
  // Round trips: each read finds the socket empty and waits for its event. (On the
  // JS-thread driver the next such read is then parked without a recvmsg of its own,
  // while the reactor has recorded nothing for the socket.)
  for (let i = 0; i < 4; i++) {
    const waiting = b.read()
    await sleep(5)
    enqueueFile(a, set.files[i])
    void a.write(String(i))
    t.is((await withTimeout(waiting, T, `round trip ${i}`)).toString(), String(i))
  }
  // Still in the code the last read settled, before the event loop turns: three messages
  // come at once, each with an fd (a recvmsg stops after each).
  for (let i = 4; i < 7; i++) {
    enqueueFile(a, set.files[i])
    void a.write(String(i))
  }
  for (let i = 4; i < 7; i++) t.is((await read(b)).toString(), String(i))
  received.push(...dequeueAll(b))
  t.is(received.length, 7, 'none lost')
  received.forEach((fd, i) => t.is(fdIdentity(fd), pathIdentity(set.files[i])))
})

test.serial('reading pauses at maxQueuedFds and resumes on dequeue; all 10 fds arrive', async (t) => {
  const [a, b] = pair(t)
  t.is(b.maxQueuedFds, 1024, 'default bound')
  b.maxQueuedFds = 4
  t.is(b.maxQueuedFds, 4)
  const set = fileSet(10, 'paused-')
  t.teardown(set.remove)
  const writes: Promise<number>[] = []
  for (let i = 0; i < 10; i++) {
    enqueueFile(a, set.files[i])
    writes.push(a.write(String(i)))
  }
  await withTimeout(Promise.all(writes), T, 'ten one-fd writes')
  // One recvmsg never merges two fd-carrying sends: each read brings one byte and one fd.
  for (let i = 0; i < 4; i++) t.is((await read(b)).toString(), String(i))
  const fifth = track(b.read())
  await sleep(400)
  t.false(fifth.settled, 'no read while 4 fds wait for dequeue')

  const received: number[] = []
  t.teardown(() => closeAll(received))
  received.push(b.dequeue()!)
  t.is((await withTimeout(fifth.promise, T, 'read after a dequeue')).toString(), '4')
  // Full again (4 queued): a pending read waits, and a larger bound also frees it.
  const sixth = track(b.read())
  await sleep(200)
  t.false(sixth.settled, 'paused again at 4')
  b.maxQueuedFds = 5
  t.is((await withTimeout(sixth.promise, T, 'read after raising the bound')).toString(), '5')
  const seventh = track(b.read())
  await sleep(200)
  t.false(seventh.settled, 'paused at 5')
  for (let i = 6; i < 10; i++) {
    received.push(b.dequeue()!)
    if (i > 6) t.is((await read(b)).toString(), String(i))
    else t.is((await withTimeout(seventh.promise, T, 'seventh read')).toString(), '6')
  }
  received.push(...dequeueAll(b))
  t.is(received.length, 10, 'none lost')
  received.forEach((fd, i) => {
    t.is(readAt(fd), `paused-${i}`)
    t.is(fdIdentity(fd), pathIdentity(set.files[i]))
  })
  a.close()
  t.is((await read(b)).length, 0)
})

test.serial(
  'an empty write while fds are queued throws ERR_FD_EMPTY_WRITE synchronously and changes nothing',
  async (t) => {
    const [a, b] = pair(t)
    const file = tmpFile('empty-write')
    enqueueFile(a, file)
    for (const empty of ['', new Uint8Array(0), Buffer.alloc(0)]) {
      const error = syncThrow(() => a.write(empty))
      t.is(error.code, 'ERR_FD_EMPTY_WRITE')
    }
    // The fd is still queued and rides on the next real write, exactly once.
    await a.write('z')
    t.is((await read(b)).toString(), 'z')
    const fds = takeFds(t, b)
    t.is(fds.length, 1)
    t.is(readAt(fds[0]), 'empty-write')
    await a.write('w')
    t.is((await read(b)).toString(), 'w')
    t.is(b.dequeue(), null)
  },
)

test.serial('bad arguments throw synchronously from Promise-returning methods', async (t) => {
  const [a, b] = pair(t)
  for (const size of [0, -1, 1.5, 2 ** 31, 2 ** 30 + 1, NaN, Infinity]) {
    const error = syncThrow(() => a.read(size))
    t.true(error instanceof RangeError, `read(${size})`)
    t.is(error.code, 'ERR_OUT_OF_RANGE', `read(${size})`)
  }
  for (const size of ['x', '1', null, {}, true, 1n]) {
    const error = syncThrow(() => a.read(size as any))
    t.true(error instanceof TypeError, `read(${String(size)})`)
    t.is(error.code, 'ERR_INVALID_ARG_TYPE', `read(${String(size)})`)
  }
  for (const data of [5, {}, null, undefined, [1, 2], true]) {
    const error = syncThrow(() => a.write(data as any))
    t.true(error instanceof TypeError, `write(${String(data)})`)
    t.is(error.code, 'ERR_INVALID_ARG_TYPE', `write(${String(data)})`)
  }
  for (const how of ['x', 'WRITE', '']) {
    const error = syncThrow(() => a.shutdown(how as any))
    t.true(error instanceof TypeError, `shutdown('${how}')`)
    t.true(['ERR_INVALID_ARG_VALUE', 'ERR_INVALID_ARG_TYPE'].includes(error.code), `shutdown('${how}'): ${error.code}`)
  }
  for (const how of [5, {}, true]) {
    const error = syncThrow(() => a.shutdown(how as any))
    t.true(error instanceof TypeError)
    t.is(error.code, 'ERR_INVALID_ARG_TYPE')
  }
  for (const where of [5, null, {}, undefined]) {
    const error = syncThrow(() => AsyncUnixStream.connect(where as any))
    t.true(error instanceof TypeError, `connect(${String(where)})`)
    t.is(error.code, 'ERR_INVALID_ARG_TYPE')
    t.true(syncThrow(() => AsyncUnixListener.bind(where as any)) instanceof TypeError)
  }
  t.truthy(codeOf(syncThrow(() => AsyncUnixStream.connect(''))))
  t.truthy(codeOf(syncThrow(() => AsyncUnixStream.connect(`/tmp/${'x'.repeat(200)}`))))
  t.truthy(codeOf(syncThrow(() => AsyncUnixStream.connect('/tmp/a\0b'))))
  for (const fd of [{}, { fd: '3' }, true, '3', null, undefined]) {
    const error = syncThrow(() => a.enqueue(fd as any))
    t.true(error instanceof TypeError, `enqueue(${JSON.stringify(fd)})`)
    t.is(error.code, 'ERR_INVALID_ARG_TYPE')
  }
  for (const fd of [-1, 1.5, 2 ** 31, NaN, { fd: -1 }]) {
    const error = syncThrow(() => a.enqueue(fd as any))
    t.true(error instanceof RangeError, `enqueue(${JSON.stringify(fd)})`)
    t.is(error.code, 'ERR_OUT_OF_RANGE')
  }
  const notOpen = 19_999
  t.throws(() => fs.fstatSync(notOpen), { code: 'EBADF' }, 'precondition: fd 19999 is not open')
  const badFd = syncThrow(() => a.enqueue(notOpen))
  t.is(badFd.code, 'EBADF')
  t.is(badFd.errno, -ERRNO.EBADF)
  for (const value of [0, -1, 1.5, NaN]) {
    t.true(syncThrow(() => (a.maxQueuedFds = value)) instanceof RangeError, `maxQueuedFds = ${value}`)
  }
  t.true(syncThrow(() => (a.maxQueuedFds = '5' as any)) instanceof TypeError)
  t.is(a.maxQueuedFds, 1024, 'unchanged by the bad values')

  // None of it did anything: no read took a turn, no fd got queued, the stream works.
  await a.write('ok')
  t.is((await read(b)).toString(), 'ok')
  t.is(b.dequeue(), null)
  await b.write('back')
  t.is((await read(a)).toString(), 'back')
})

test('reads made after one that waited (the socket found empty, already watched) get the next bytes and fds; close() settles the last', async (t) => {
  // Such a read does not turn the reactor at once: it starts with the next event. This
  // proves it is not lost: the peer's bytes reach it, and close() settles it at once.
  const [a, b] = pair(t)
  const file = tmpFile('after an event')
  const fd = fs.openSync(file, 'r')
  t.teardown(() => fs.closeSync(fd))
  for (let i = 0; i < 5; i++) {
    const reading = a.read()
    b.enqueue(fd)
    await b.write(String(i))
    t.is((await withTimeout(reading, T, `read ${i}`)).toString(), String(i))
    const received = a.dequeue()!
    t.is(fdIdentity(received), pathIdentity(file), `fd ${i}`)
    t.is(fdFlags(received) & O_CLOEXEC, O_CLOEXEC)
    fs.closeSync(received)
  }
  const last = outcome(a.read())
  a.close()
  const settled = await withTimeout(last, T, 'the read pending at close()')
  if (settled.ok) t.is(settled.value.length, 0)
  else t.is(codeOf(settled.error), 'ERR_SOCKET_CLOSED')
})

test('a waiting read holds no read buffer: 100 reads of 1 MiB waiting grow the address space by far less than 100 MiB', async (t) => {
  if (process.platform !== 'linux') {
    t.log('needs /proc/self/status')
    t.pass()
    return
  }
  const report = lastJson(await runFixture('waiting-reads', []))
  t.log(`address space grew by ${report.growthKiB} KiB for ${report.n} waiting reads of 1 MiB`)
  t.true(report.growthKiB < (report.n * 1024) / 4, `grew by ${report.growthKiB} KiB`)
})

test.serial('close() settles pending reads, a pending write and shutdown, and pending accepts', async (t) => {
  const [a, b] = pair(t)
  const reads = [b.read(), b.read(), b.read(1)].map((r) => outcome(r))
  await sleep(30)
  b.close()
  for (const [i, pending] of reads.entries()) {
    const settled = await withTimeout(pending, T, `pending read ${i} after close`)
    if (settled.ok) t.is(settled.value.length, 0, `read ${i} resolves empty`)
    else t.is(codeOf(settled.error), 'ERR_SOCKET_CLOSED', `read ${i}`)
  }
  t.is(syncThrow(() => b.dequeue()).code, 'ERR_SOCKET_CLOSED')
  t.is((await read(a)).length, 0, 'the peer sees end of stream')

  // A write stuck on a full socket buffer (nobody reads the peer), and a shutdown behind it.
  const [c] = pair(t)
  const write = outcome(c.write(Buffer.alloc(8 << 20, 1)))
  const shutdown = outcome(c.shutdown('write'))
  await sleep(50)
  c.close()
  await withTimeout(write, T, 'pending write after close')
  await withTimeout(shutdown, T, 'pending shutdown after close')
  t.false((await write).ok, 'the 8 MiB write cannot have completed')

  const listener = AsyncUnixListener.bind(tmpSocketPath())
  t.teardown(() => listener.close())
  const accepts = [listener.accept(), listener.accept()].map((p) => outcome(p))
  await sleep(30)
  listener.close()
  for (const [i, pending] of accepts.entries()) {
    const settled = await withTimeout(pending, T, `pending accept ${i} after close`)
    t.false(settled.ok)
    if (!settled.ok) t.is(codeOf(settled.error), 'ERR_SOCKET_CLOSED', `accept ${i}`)
  }
})

test.serial(
  'a write and a shutdown pending at close() reject with ERR_SOCKET_CLOSED (not EPIPE, not success)',
  async (t) => {
    // SPEC 6: any operation on a closed stream fails with ERR_SOCKET_CLOSED. Repeated, since
    // the wrong outcome comes from a race inside close().
    const seen: string[] = []
    for (let round = 0; round < 20; round++) {
      const [c, d] = AsyncUnixStream.pair()
      const write = outcome(c.write(Buffer.alloc(8 << 20, 1)))
      const shutdown = outcome(c.shutdown('write'))
      await sleep(20)
      c.close()
      for (const [what, pending] of [
        ['write', write],
        ['shutdown', shutdown],
      ] as const) {
        const settled = await withTimeout(pending as Promise<Outcome<unknown>>, T, `pending ${what}`)
        seen.push(`${what}: ${settled.ok ? 'resolved' : codeOf(settled.error)}`)
      }
      d.close()
    }
    const wrong = seen.filter((s) => !s.endsWith('ERR_SOCKET_CLOSED'))
    t.deepEqual(wrong, [], `outcomes over 20 rounds: ${seen.join(', ')}`)
  },
)

test.serial(
  'after close(): methods reject or throw ERR_SOCKET_CLOSED, fd is -1, a second close is a no-op',
  async (t) => {
    const [a, b] = pair(t)
    a.close()
    t.is(a.fd, -1)
    t.is((await rejection(a.read())).code, 'ERR_SOCKET_CLOSED')
    t.is((await rejection(a.read(1))).code, 'ERR_SOCKET_CLOSED')
    t.is((await rejection(a.write('x'))).code, 'ERR_SOCKET_CLOSED')
    t.is((await rejection(a.shutdown())).code, 'ERR_SOCKET_CLOSED')
    t.is(syncThrow(() => a.enqueue(b.fd)).code, 'ERR_SOCKET_CLOSED')
    t.is(syncThrow(() => a.dequeue()).code, 'ERR_SOCKET_CLOSED')
    t.notThrows(() => a.close())
    t.is(a.fd, -1)
    // The peer sees end of stream.
    t.is((await read(b)).length, 0)

    const sock = tmpSocketPath()
    const listener = AsyncUnixListener.bind(sock)
    t.true(fs.fstatSync(listener.fd).isSocket())
    listener.close()
    t.is(listener.fd, -1)
    t.is((await rejection(listener.accept())).code, 'ERR_SOCKET_CLOSED')
    t.notThrows(() => listener.close())
    // And nothing listens there any more.
    const refused = await rejection(AsyncUnixStream.connect(sock))
    t.is(refused.code, 'ENOENT')
  },
)

test.serial(
  'connect to a missing path rejects ENOENT with errno, syscall and path; a non-socket ECONNREFUSED',
  async (t) => {
    const missing = path.join(tmpDir(), 'missing.sock')
    const error = await rejection(AsyncUnixStream.connect(missing))
    t.true(error instanceof Error)
    t.is(error.code, 'ENOENT')
    t.is(error.errno, -ERRNO.ENOENT)
    t.is(error.syscall, 'connect')
    t.is(error.path, missing)

    const plainFile = tmpFile('not a socket')
    const refused = await rejection(AsyncUnixStream.connect(plainFile))
    t.is(refused.code, 'ECONNREFUSED')
    t.is(refused.errno, -ERRNO.ECONNREFUSED)
    t.is(refused.syscall, 'connect')
    t.is(refused.path, plainFile)
  },
)

test.serial('bind on a path in use throws EADDRINUSE; the first listener keeps working', async (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  t.teardown(() => listener.close())
  t.is(listener.path, sock)
  const error = syncThrow(() => AsyncUnixListener.bind(sock))
  t.true(error instanceof Error)
  t.is(error.code, 'EADDRINUSE')
  t.is(error.errno, -ERRNO.EADDRINUSE)
  t.is(error.syscall, 'bind')
  t.is(error.path, sock)
  t.true(fs.existsSync(sock), 'the failed bind did not remove the live socket file')

  const [client, server] = await withTimeout(
    Promise.all([AsyncUnixStream.connect(sock), listener.accept()]),
    T,
    'connect + accept',
  )
  t.teardown(() => {
    client.close()
    server.close()
  })
  const file = tmpFile('via-listener')
  enqueueFile(client, file)
  await client.write('c')
  t.is((await read(server)).toString(), 'c')
  const fds = takeFds(t, server)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['via-listener'],
  )
  t.is(fdIdentity(fds[0]), pathIdentity(file))
})

test.serial('listener close() removes the socket file', (t) => {
  const sock = tmpSocketPath()
  const listener = AsyncUnixListener.bind(sock)
  t.true(fs.statSync(sock).isSocket())
  listener.close()
  t.false(fs.existsSync(sock))
})

test.serial('peer close and peer shutdown(write) make read resolve an empty Buffer', async (t) => {
  const [a, b] = pair(t)
  const pending = b.read()
  await sleep(20)
  await a.write('tail')
  t.is((await withTimeout(pending, T, 'read')).toString(), 'tail')
  const atEnd = b.read()
  await sleep(20)
  a.close()
  const end = await withTimeout(atEnd, T, 'read at end')
  t.true(Buffer.isBuffer(end))
  t.is(end.length, 0)
  t.is((await read(b)).length, 0, 'and again')

  // Half-close: the other direction still works.
  const [c, d] = pair(t)
  await c.write('last')
  await c.shutdown('write')
  t.is((await read(d)).toString(), 'last')
  t.is((await read(d)).length, 0)
  const file = tmpFile('after-half-close')
  enqueueFile(d, file)
  await d.write('still')
  t.is((await read(c)).toString(), 'still')
  const fds = takeFds(t, c)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    ['after-half-close'],
  )
})

test.serial('253 fds in one write arrive; a 254th enqueue throws QueueFullError and changes nothing', async (t) => {
  const [a, b] = pair(t)
  const set = fileSet(254, 'many-')
  t.teardown(set.remove)
  for (let i = 0; i < 253; i++) enqueueFile(a, set.files[i])
  const error = syncThrow(() => enqueueFile(a, set.files[253]))
  t.true(error instanceof QueueFullError)
  t.is(error.code, 'ERR_FD_QUEUE_FULL')
  t.is(await a.write('x'), 1)
  t.is((await read(b)).toString(), 'x')
  const fds = takeFds(t, b)
  t.is(fds.length, 253)
  t.deepEqual(
    fds.map((fd) => readAt(fd)),
    set.contents.slice(0, 253),
  )
  t.deepEqual(
    fds.map((fd) => fdIdentity(fd)),
    set.files.slice(0, 253).map(pathIdentity),
  )
  // The queue is empty again: the next write carries nothing, and room for 253 more.
  await a.write('y')
  t.is((await read(b)).toString(), 'y')
  t.is(b.dequeue(), null)
  enqueueFile(a, set.files[253])
  await a.write('z')
  t.is((await read(b)).toString(), 'z')
  t.deepEqual(
    takeFds(t, b).map((fd) => readAt(fd)),
    ['many-253'],
  )
})

test.serial(
  "with two reads pending, each read's fds are dequeue-able in its own continuation, not the other's",
  async (t) => {
    const [a, b] = pair(t)
    const set = fileSet(2, 'own-')
    t.teardown(set.remove)
    const seen: string[][] = []
    const taken: number[] = []
    t.teardown(() => closeAll(taken))
    const reads = [b.read(), b.read()].map((r) =>
      r.then((buf) => {
        const fds = dequeueAll(b)
        taken.push(...fds)
        seen.push([buf.toString(), ...fds.map((fd) => readAt(fd))])
      }),
    )
    await sleep(20)
    enqueueFile(a, set.files[0])
    const w1 = a.write('p')
    enqueueFile(a, set.files[1])
    const w2 = a.write('q')
    await withTimeout(Promise.all([w1, w2, ...reads]), T, 'writes and reads')
    t.deepEqual(seen, [
      ['p', 'own-0'],
      ['q', 'own-1'],
    ])
  },
)

test.serial(
  'a write that fails (peer gone) rejects EPIPE with errno and syscall, and closes the fds it carried',
  async (t) => {
    const [a, b] = pair(t)
    b.close()
    const fifo = makeFifo()
    t.teardown(() => fifo.close())
    a.enqueue(fifo.writeFd)
    fs.closeSync(fifo.writeFd)
    fifo.writeFd = -1
    t.true(fifo.isWriterOpen())
    const error = await rejection(a.write('x'), T, 'write to a closed peer')
    t.true(['EPIPE', 'ECONNRESET'].includes(error.code), error.code)
    t.is(error.errno, -ERRNO[error.code as 'EPIPE'])
    t.is(error.syscall, 'sendmsg')
    t.false(fifo.isWriterOpen(), 'the duplicate that could not be sent is closed')
    // The queue is empty afterwards: an empty write does not complain about queued fds.
    t.false(syncThrowsEmpty(a))
  },
)

/** Whether an empty write throws ERR_FD_EMPTY_WRITE (i.e. fds are still queued). */
function syncThrowsEmpty(stream: AsyncUnixStream): boolean {
  try {
    stream.write('').catch(() => {})
    return false
  } catch (error) {
    return codeOf(error) === 'ERR_FD_EMPTY_WRITE'
  }
}

test.serial('close() closes the fds still in the outbound queue and those not yet dequeued', async (t) => {
  const [a, b] = pair(t)
  const received = makeFifo()
  const queued = makeFifo()
  t.teardown(() => {
    received.close()
    queued.close()
  })
  a.enqueue(received.writeFd)
  fs.closeSync(received.writeFd)
  received.writeFd = -1
  await a.write('r')
  t.is((await read(b)).toString(), 'r') // now in b's inbound queue, never dequeued
  a.enqueue(queued.writeFd)
  fs.closeSync(queued.writeFd)
  queued.writeFd = -1
  t.true(received.isWriterOpen())
  t.true(queued.isWriterOpen())
  a.close()
  b.close()
  t.false(queued.isWriterOpen(), 'outbound fd closed by close()')
  t.false(received.isWriterOpen(), 'inbound fd closed by close()')
})

test.serial('close() settles a read paused at maxQueuedFds', async (t) => {
  const [a, b] = pair(t)
  b.maxQueuedFds = 1
  const file = tmpFile('pause-then-close')
  for (const data of ['1', '2']) {
    enqueueFile(a, file)
    await a.write(data)
  }
  t.is((await read(b)).toString(), '1')
  const paused = outcome(b.read())
  const watch = track(paused)
  await sleep(150)
  t.false(watch.settled, 'paused at the bound')
  b.close()
  const settled = await withTimeout(paused, T, 'paused read after close')
  if (settled.ok) t.is(settled.value.length, 0)
  else t.is(codeOf(settled.error), 'ERR_SOCKET_CLOSED')
})

test.serial(
  'async streams hold no fd of their own: not while a read waits, not once a write that had to wait is followed by 8 that did not',
  async (t) => {
    const dir = tmpDir('fdq-own-')
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const file = tmpFile('own fds', dir)
    // Every fd of the earlier tests gone: a close() with an operation pending may let go of
    // its fd a moment after it returns, and this test counts exactly.
    const before = await settledOpenFds(baseline)
    const [a, b] = AsyncUnixStream.pair()
    t.teardown(() => {
      a.close()
      b.close()
    })
    t.is(openFds(), before + 2, 'a pair is two fds')

    const pending = b.read()
    await sleep(30)
    t.is(openFds(), before + 2, 'a read waiting for data holds no extra fd')
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
    await withTimeout(a.write('x'), T, 'write')
    t.is((await withTimeout(pending, T, 'read')).toString(), 'x')
    let received = b.dequeue()
    t.not(received, null)
    t.teardown(() => closeAll([received]))
    t.is(readAt(received!), 'own fds')
    t.is(openFds(), before + 3, 'exactly the fd that arrived')

    // More than the socket holds: the write waits until the reader catches up.
    const big = crypto.randomBytes(4 << 20)
    const writing = a.write(big)
    await sleep(30)
    const got: Buffer[] = []
    for (let total = 0; total < big.length;) {
      const chunk = await withTimeout(b.read(), T, 'read of the big write')
      got.push(chunk)
      total += chunk.length
    }
    t.is(await withTimeout(writing, T, 'big write'), big.length)
    t.true(Buffer.concat(got).equals(big))
    // The write registration (a duplicate of the socket) outlives the wait, for the next
    // congested stretch of a stream that writes faster than its peer reads; it goes once
    // 8 writes in a row went through at once (KEEP_WRITABLE in src/nonblocking/core.rs),
    // or once the stream has been idle a while (the next test).
    for (let i = 0; i < 8; i++) {
      await withTimeout(a.write('y'), T, 'a write that goes through at once')
      t.is((await withTimeout(b.read(), T, 'read y')).toString(), 'y')
    }
    t.is(openFds(), before + 3, 'nothing left over from the waits')
    a.close()
    b.close()
    closeAll([received])
    received = null
    t.is(openFds(), before)
  },
)

test.serial(
  'for await over an AsyncUnixStream: every chunk until the end, its fds dequeue-able in the body; break leaves the rest',
  async (t) => {
    const dir = tmpDir('fdq-iter-')
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const file = tmpFile('iterated', dir)
    const [a, b] = AsyncUnixStream.pair()
    t.teardown(() => {
      a.close()
      b.close()
    })
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
    await withTimeout(a.write('one'), T, 'write one')
    await withTimeout(a.write('two'), T, 'write two')
    await withTimeout(a.shutdown('write'), T, 'shutdown')
    let text = ''
    const got: number[] = []
    for await (const chunk of b) {
      text += chunk.toString()
      for (let d = b.dequeue(); d !== null; d = b.dequeue()) got.push(d)
    }
    t.teardown(() => closeAll(got))
    t.is(text, 'onetwo')
    t.is(got.length, 1)
    t.is(readAt(got[0]!), 'iterated')

    // A break stops reading: what follows is there for the next read.
    const [c, d] = AsyncUnixStream.pair()
    t.teardown(() => {
      c.close()
      d.close()
    })
    await withTimeout(c.write('first'), T, 'write first')
    for await (const chunk of d) {
      t.is(chunk.toString(), 'first')
      break
    }
    await withTimeout(c.write('second'), T, 'write second')
    t.is((await withTimeout(d.read(), T, 'read after break')).toString(), 'second')
  },
)

/** A pair closed at the end of the test, and the fds open before it was made. */
async function countedPair(t: ExecutionContext) {
  const before = await settledOpenFds(baseline)
  const [a, b] = AsyncUnixStream.pair()
  t.teardown(() => {
    a.close()
    b.close()
  })
  return { before, a, b }
}

test.serial('a stream whose last write had to wait lets its write registration go once idle', async (t) => {
  const { before, a, b } = await countedPair(t)
  // More than the socket holds: the write waits, and registers a duplicate of the socket.
  const big = crypto.randomBytes(4 << 20)
  const writing = a.write(big)
  let total = 0
  while (total < big.length) total += (await withTimeout(b.read(), T, 'read of the big write')).length
  t.is(await withTimeout(writing, T, 'big write'), big.length)
  // Nothing written since: the duplicate goes within a few seconds (a sweep every second
  // that finds no write waited since the last one), not with the next writes only.
  t.is(await settledOpenFds(before + 2), before + 2, 'the duplicate of an idle stream is closed')
  // The stream still writes, waits and reads as before.
  const again = a.write(big)
  total = 0
  while (total < big.length) total += (await withTimeout(b.read(), T, 'read of the second big write')).length
  t.is(await withTimeout(again, T, 'second big write'), big.length)
  a.close()
  b.close()
  t.is(await settledOpenFds(before), before)
})

test.serial('a write that had to wait and then failed lets its write registration go too', async (t) => {
  const { before, a, b } = await countedPair(t)
  // Nobody reads b: the write waits (and registers a duplicate of a), then b goes away.
  const writing = outcome(a.write(crypto.randomBytes(4 << 20)))
  t.is(await settledOpenFds(before + 3), before + 3, 'the write waits, with the duplicate registered')
  b.close()
  const settled = await withTimeout(writing, T, 'write to a closed peer')
  t.false(settled.ok)
  if (!settled.ok) t.is(codeOf(settled.error), 'EPIPE')
  // a stays open (its reading side may still matter): only its socket is left.
  t.is(await settledOpenFds(before + 1), before + 1, 'the duplicate of the failed write is closed')
  a.close()
  t.is(await settledOpenFds(before), before)
})

test.serial(
  "a read's fds are the first dequeued after it resolves, even when a later read found data at once meanwhile",
  async (t) => {
    const dir = tmpDir('fdq-turn-')
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const [x, y] = ['file X', 'file Y'].map((text, i) => tmpFile(text, dir, `f${i}`))
    const [a, b] = AsyncUnixStream.pair()
    t.teardown(() => {
      a.close()
      b.close()
    })
    const first = b.read()
    enqueueFile(a, x)
    void a.write('A')
    // Keep the JS thread busy: the first read's result is ready but not handed over yet.
    const until = Date.now() + 50
    while (Date.now() < until);
    enqueueFile(a, y)
    void a.write('B')
    const second = b.read()
    t.is((await withTimeout(first, T, 'first read')).toString(), 'A')
    const [fromFirst] = takeAll(t, b)
    t.is(fromFirst === undefined ? 'nothing' : readAt(fromFirst), 'file X', 'the first read brought X')
    t.is((await withTimeout(second, T, 'second read')).toString(), 'B')
    const [fromSecond] = takeAll(t, b)
    t.is(fromSecond === undefined ? 'nothing' : readAt(fromSecond), 'file Y', 'the second read brought Y')
  },
)

function takeAll(t: ExecutionContext, stream: AsyncUnixStream): number[] {
  const fds = dequeueAll(stream)
  t.teardown(() => closeAll(fds))
  return fds
}
