/**
 * SPEC section 6 for the blocking classes: bad arguments, closed streams and listeners,
 * and the constructors user code must not call.
 */
import test from 'ava'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  DatagramSocket,
  SeqpacketListener,
  SeqpacketSocket,
  UnixListener,
  UnixStream,
} from '../index.js'
import { closeAll, openFds, readAt, settledOpenFds, thrown, tmpDir, tmpFile, tmpSocketPath } from './helpers.js'
import { checkNoFdLeaked, codeOf } from './async-helpers.js'

checkNoFdLeaked(settledOpenFds)

type ErrorClass = typeof TypeError | typeof RangeError
interface BadInput {
  value: unknown
  type: ErrorClass
  code: string
}

const typeError = (value: unknown): BadInput => ({ value, type: TypeError, code: 'ERR_INVALID_ARG_TYPE' })
const rangeError = (value: unknown): BadInput => ({ value, type: RangeError, code: 'ERR_OUT_OF_RANGE' })
function show(value: unknown): string {
  if (typeof value === 'string') return `'${value}'`
  if (typeof value === 'bigint') return `${value}n`
  if (typeof value === 'object' && value !== null) return JSON.stringify(value) ?? String(value)
  return String(value)
}

/** Asserts `call` throws synchronously an instance of `type` with `code`. */
function assertBad(t: any, call: () => unknown, type: ErrorClass, code: string, label: string) {
  const error = thrown(call)
  t.true(error instanceof type, `${label}: ${error} is not a ${type.name}`)
  t.is(error.code, code, label)
  t.is(error.syscall, undefined, `${label}: rejected before any syscall`)
}

/**
 * A working pair plus a check that a bad call changed nothing: after it, an fd still
 * travels a → b and arrives intact, alone.
 */
function withPair(t: any, body: (a: UnixStream, b: UnixStream) => void) {
  const file = tmpFile('still works')
  const [a, b] = UnixStream.pair()
  b.setReadTimeout(5000)
  try {
    body(a, b)
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
    a.write('ok')
    const buf = Buffer.alloc(16)
    t.is(buf.subarray(0, b.read(buf)).toString(), 'ok')
    const got = b.dequeue()!
    t.is(readAt(got), 'still works')
    t.is(b.dequeue(), null, 'nothing extra was queued by the bad calls')
    fs.closeSync(got)
  } finally {
    a.close()
    b.close()
  }
}

const badFds: BadInput[] = [
  typeError({}),
  typeError({ fd: '3' }),
  typeError({ fd: null }),
  typeError(true),
  typeError('3'),
  typeError(null),
  typeError(undefined),
  typeError(3n),
  typeError([3]),
  rangeError(-1),
  rangeError(1.5),
  rangeError(2 ** 31),
  rangeError(NaN),
  rangeError(Infinity),
  rangeError(-Infinity),
  rangeError({ fd: -1 }),
  rangeError({ fd: 1.5 }),
]

test.serial('enqueue: bad fds throw TypeError / RangeError', (t) => {
  withPair(t, (a) => {
    const before = openFds()
    for (const { value, type, code } of badFds) {
      assertBad(t, () => a.enqueue(value as never), type, code, `enqueue(${show(value)})`)
    }
    t.is(openFds(), before)
  })
})

test.serial('enqueue: an fd that is not open throws EBADF with errno', (t) => {
  withPair(t, (a) => {
    const closed = fs.openSync(tmpFile('soon closed'), 'r')
    fs.closeSync(closed)
    for (const fd of [closed, 2 ** 31 - 1]) {
      const error = thrown(() => a.enqueue(fd))
      t.true(error instanceof Error)
      t.is(error.code, 'EBADF', `enqueue(${fd})`)
      t.is(error.errno, -os.constants.errno.EBADF)
      t.is(typeof error.syscall, 'string')
      t.true(error.syscall.length > 0)
    }
  })
})

test.serial('read: anything but a Uint8Array throws ERR_INVALID_ARG_TYPE', (t) => {
  withPair(t, (a, b) => {
    a.write('unread') // would be consumed by a read that wrongly went ahead
    for (const value of ['abc', 16, {}, [1, 2, 3], null, undefined, new ArrayBuffer(8), true]) {
      assertBad(t, () => b.read(value as never), TypeError, 'ERR_INVALID_ARG_TYPE', `read(${show(value)})`)
    }
    const buf = Buffer.alloc(16)
    t.is(buf.subarray(0, b.read(buf)).toString(), 'unread')
  })
})

test.serial('write: numbers, objects and other non-bytes throw ERR_INVALID_ARG_TYPE', (t) => {
  withPair(t, (a) => {
    for (const value of [42, 0, {}, { length: 1 }, [1, 2, 3], null, undefined, true, 1n]) {
      assertBad(t, () => a.write(value as never), TypeError, 'ERR_INVALID_ARG_TYPE', `write(${show(value)})`)
    }
  })
})

test.serial('setReadTimeout / setWriteTimeout: bad values throw', (t) => {
  withPair(t, (a) => {
    const bad: BadInput[] = [
      rangeError(-1),
      rangeError(0),
      rangeError(NaN),
      rangeError(-Infinity),
      rangeError(Infinity),
      typeError('x'),
      typeError('10'),
      typeError({}),
      typeError(true),
    ]
    for (const { value, type, code } of bad) {
      assertBad(t, () => a.setReadTimeout(value as never), type, code, `setReadTimeout(${show(value)})`)
      assertBad(t, () => a.setWriteTimeout(value as never), type, code, `setWriteTimeout(${show(value)})`)
    }
  })
})

test.serial("shutdown: an unknown 'how' throws and shuts nothing down", (t) => {
  withPair(t, (a) => {
    assertBad(t, () => a.shutdown('sideways' as never), TypeError, 'ERR_INVALID_ARG_VALUE', "shutdown('sideways')")
    assertBad(t, () => a.shutdown('' as never), TypeError, 'ERR_INVALID_ARG_VALUE', "shutdown('')")
    assertBad(t, () => a.shutdown(1 as never), TypeError, 'ERR_INVALID_ARG_TYPE', 'shutdown(1)')
    assertBad(t, () => a.shutdown(null as never), TypeError, 'ERR_INVALID_ARG_TYPE', 'shutdown(null)')
  })
})

test.serial('maxQueuedFds: bad values throw and leave the bound as it was', (t) => {
  withPair(t, (_a, b) => {
    b.maxQueuedFds = 5
    const bad: BadInput[] = [
      rangeError(0),
      rangeError(-1),
      rangeError(1.5),
      rangeError(NaN),
      rangeError(Infinity),
      rangeError(2 ** 32),
      typeError('x'),
      typeError('5'),
      typeError(null),
      typeError(undefined),
    ]
    for (const { value, type, code } of bad) {
      assertBad(
        t,
        () => {
          b.maxQueuedFds = value as never
        },
        type,
        code,
        `maxQueuedFds = ${show(value)}`,
      )
      t.is(b.maxQueuedFds, 5)
    }
  })
})

test.serial('connect / bind: bad paths are rejected before any syscall', (t) => {
  const dir = tmpDir()
  // 107 bytes is the most sun_path holds on Linux (108 with the terminating NUL)
  const longest = path.join(dir, 'x'.repeat(107 - dir.length - 1))
  const tooLong = longest + 'y'
  t.is(Buffer.byteLength(longest), 107)
  const multiByte = path.join(dir, 'é'.repeat(Math.ceil((108 - dir.length) / 2)))
  t.true(multiByte.length <= 107 && Buffer.byteLength(multiByte) > 107, 'too long in bytes, not in characters')
  const before = openFds()
  const cases: [unknown, ErrorClass, string][] = [
    [undefined, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [null, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [42, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [{}, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [Buffer.from('/tmp/x'), TypeError, 'ERR_INVALID_ARG_TYPE'],
    ['', TypeError, 'ERR_INVALID_ARG_VALUE'],
    ['/tmp/a\0b', TypeError, 'ERR_INVALID_ARG_VALUE'],
    [tooLong, TypeError, 'ERR_INVALID_ARG_VALUE'],
    [multiByte, TypeError, 'ERR_INVALID_ARG_VALUE'],
  ]
  for (const [value, type, code] of cases) {
    assertBad(t, () => UnixStream.connect(value as never), type, code, `connect(${show(value)})`)
    assertBad(t, () => UnixListener.bind(value as never), type, code, `bind(${show(value)})`)
  }
  t.is(openFds(), before, 'no socket was even created')
  t.deepEqual(fs.readdirSync(dir), [], 'nothing was bound anywhere')

  // the longest valid path works end to end
  const listener = UnixListener.bind(longest)
  t.true(fs.lstatSync(longest).isSocket())
  const client = UnixStream.connect(longest)
  const server = listener.accept()
  client.write('107')
  const buf = Buffer.alloc(8)
  server.setReadTimeout(5000)
  t.is(buf.subarray(0, server.read(buf)).toString(), '107')
  client.close()
  server.close()
  listener.close()
  t.false(fs.existsSync(longest))
})

test.serial('every method of a closed stream throws ERR_SOCKET_CLOSED', (t) => {
  const file = tmpFile('x')
  const fd = fs.openSync(file, 'r')
  const [a, b] = UnixStream.pair()
  a.close()
  t.is(a.fd, -1)
  const calls: [string, () => unknown][] = [
    ['read', () => a.read(Buffer.alloc(4))],
    ['write', () => a.write('x')],
    ['write empty', () => a.write('')],
    ['enqueue', () => a.enqueue(fd)],
    ['dequeue', () => a.dequeue()],
    ['flush', () => a.flush()],
    ['shutdown', () => a.shutdown()],
    ["shutdown('write')", () => a.shutdown('write')],
    ['setReadTimeout', () => a.setReadTimeout(10)],
    ['setReadTimeout(null)', () => a.setReadTimeout(null)],
    ['setWriteTimeout', () => a.setWriteTimeout(10)],
  ]
  const before = openFds()
  for (const [name, call] of calls) {
    const error = thrown(call)
    t.true(error instanceof Error, name)
    t.is(error.code, 'ERR_SOCKET_CLOSED', name)
  }
  t.is(openFds(), before, 'enqueue on a closed stream made no duplicate')
  t.notThrows(() => a.close(), 'a second close() is a no-op')
  t.notThrows(() => a.close())
  t.is(a.fd, -1)
  // the peer sees the end of stream
  b.setReadTimeout(5000)
  t.is(b.read(Buffer.alloc(4)), 0)
  b.close()
  closeAll([fd])
})

test.serial('a closed stream with fds received but not dequeued still throws ERR_SOCKET_CLOSED from dequeue', (t) => {
  const fd = fs.openSync(tmpFile('never dequeued'), 'r')
  const [a, b] = UnixStream.pair()
  a.enqueue(fd)
  a.write('x')
  b.setReadTimeout(5000)
  b.read(Buffer.alloc(1))
  fs.closeSync(fd)
  b.close()
  const error = thrown(() => b.dequeue())
  t.is(error.code, 'ERR_SOCKET_CLOSED')
  a.close()
})

test.serial('accept on a closed listener throws ERR_SOCKET_CLOSED; a second close() is a no-op', (t) => {
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  listener.close()
  t.is(listener.fd, -1)
  const error = thrown(() => listener.accept())
  t.true(error instanceof Error)
  t.is(error.code, 'ERR_SOCKET_CLOSED')
  t.notThrows(() => listener.close())
  t.is(listener.fd, -1)
  t.false(fs.existsSync(socketPath))
})

/** One of each async listener, and a bound datagram socket (which has setUnlinkOnClose too). */
function boundAsync() {
  return [
    AsyncUnixListener.bind(tmpSocketPath()),
    SeqpacketListener.bind(tmpSocketPath()),
    DatagramSocket.bind(tmpSocketPath()),
  ]
}

test.serial('the settings of a closed object throw ERR_SOCKET_CLOSED too: maxQueuedFds, setUnlinkOnClose()', (t) => {
  const [a, b] = UnixStream.pair()
  const [c, d] = AsyncUnixStream.pair()
  const listeners = [UnixListener.bind(tmpSocketPath()), ...boundAsync()]
  for (const closed of [a, c, ...listeners]) closed.close()
  for (const stream of [a, c]) {
    const error = thrown(() => {
      stream.maxQueuedFds = 10
    })
    t.is(error.code, 'ERR_SOCKET_CLOSED', `${stream.constructor.name} maxQueuedFds`)
    // Arguments are checked first, as everywhere.
    t.is(
      thrown(() => {
        stream.maxQueuedFds = -1
      }).code,
      'ERR_OUT_OF_RANGE',
    )
  }
  for (const listener of listeners) {
    t.is(thrown(() => listener.setUnlinkOnClose(false)).code, 'ERR_SOCKET_CLOSED', listener.constructor.name)
    t.is(thrown(() => listener.setUnlinkOnClose('no' as any)).code, 'ERR_INVALID_ARG_TYPE')
  }
  // Open ones take them.
  b.maxQueuedFds = 10
  t.is(b.maxQueuedFds, 10)
  d.maxQueuedFds = 10
  t.is(d.maxQueuedFds, 10)
  b.close()
  d.close()
})

test.serial('the constructors cannot be called from user code', (t) => {
  const [a, b] = UnixStream.pair()
  const before = openFds()
  const Stream = UnixStream as unknown as new (...args: unknown[]) => unknown
  const Listener = UnixListener as unknown as new (...args: unknown[]) => unknown
  for (const args of [[], [undefined, undefined], [Symbol('fd-queue.wrap'), {}], [a.fd]]) {
    t.throws(() => new Stream(...args), { instanceOf: TypeError })
    t.throws(() => new Listener(...args), { instanceOf: TypeError })
  }
  t.is(openFds(), before)
  a.close()
  b.close()
})

test.serial(
  'ref()/unref() and iteration of a closed async object throw ERR_SOCKET_CLOSED; open ones take them',
  async (t) => {
    const [c, d] = AsyncUnixStream.pair()
    const [e, f] = SeqpacketSocket.pair()
    const listeners = boundAsync()
    const objects = [c, e, ...listeners]
    for (const open of objects) t.is(open.unref().ref(), open, `${open.constructor.name} open`)
    for (const closed of objects) closed.close()
    for (const closed of objects) {
      t.is(thrown(() => closed.unref()).code, 'ERR_SOCKET_CLOSED', `${closed.constructor.name} unref`)
      t.is(thrown(() => closed.ref()).code, 'ERR_SOCKET_CLOSED', `${closed.constructor.name} ref`)
    }
    // Iterating what was closed before the loop began fails as its accept()/receive() does
    // (one closed during the loop ends it).
    for (const closed of [...listeners, c, e]) {
      const first = (closed as AsyncIterable<unknown>)[Symbol.asyncIterator]().next()
      t.is(
        codeOf(await first.catch((error: unknown) => error)),
        'ERR_SOCKET_CLOSED',
        `${closed.constructor.name} for await`,
      )
    }
    d.close()
    f.close()
  },
)
