/**
 * Bad input (issue #6): a table over every public method and constructor of UnixStream,
 * UnixListener, AsyncUnixStream, AsyncUnixListener, FdSocket, FdServer and the functions
 * connect, createServer, fdInfo, toNetSocket, toNetServer, toReadStream, toWriteStream
 * and toFd: wrong types, out-of-range numbers, closed objects. Each case must give a typed
 * error (class + code, thrown synchronously even from Promise-returning methods, or a
 * rejection/'error'/callback where an operation on a closed object is asynchronous) or be
 * a documented no-op; none may abort the process or leak an fd. Then re-entrant calls
 * (close()/destroy() inside 'data', 'fds', 'end', 'connection' handlers) and user
 * callbacks that throw (in a child: an ordinary uncaught exception, exit status 1, never
 * an abort). The number of cases tried is logged.
 */
import test from 'ava'
import * as dgram from 'node:dgram'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect,
  createServer,
  fdInfo,
  FdServer,
  FdSocket,
  QueueFullError,
  toFd,
  toNetServer,
  toNetSocket,
  toReadStream,
  toWriteStream,
  UnixListener,
  UnixStream,
} from '../index.js'
import {
  openFds,
  readAt,
  ROOT,
  scaled,
  settledOpenFds,
  tmpDir,
  tmpFile,
  tmpSocketPath,
  runProcess,
  type ProcessResult,
} from './helpers.js'
import { dequeueAll, onceEvent, readExactly, sleep, warmedUpFdBaseline, withTimeout } from './async-helpers.js'

let baseline = 0
test.before(async () => {
  baseline = await warmedUpFdBaseline()
})
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})

let casesTried = 0
test.after.always('cases tried', (t) => {
  t.log(`${casesTried} bad-input cases tried`)
})

type ErrorClass = new (...args: any[]) => Error

/** What a case must do. */
type Expect =
  /** Throw synchronously an instance of `type` with `code`. */
  | { throws: ErrorClass; code: string }
  /** Return a Promise (no synchronous throw) that rejects with `code`. */
  | { rejects: string }
  /** `call` returns a Promise of the error its callback or 'error' event got: it must have `code`. */
  | { reports: string }
  /** Return normally; `check` looks at the result. */
  | { noop: true; check?: (result: unknown) => boolean }

interface Case {
  name: string
  call: () => unknown
  expect: Expect
}

const typeError = (code = 'ERR_INVALID_ARG_TYPE'): Expect => ({ throws: TypeError, code })
const rangeError: Expect = { throws: RangeError, code: 'ERR_OUT_OF_RANGE' }
const closed: Expect = { throws: Error, code: 'ERR_SOCKET_CLOSED' }
const noop: Expect = { noop: true }

function show(value: unknown): string {
  if (typeof value === 'string') return `'${value.length > 20 ? `${value.slice(0, 20)}…` : value}'`
  if (typeof value === 'bigint') return `${value}n`
  if (typeof value === 'symbol' || typeof value === 'function') return String(value)
  if (value instanceof ArrayBuffer) return 'ArrayBuffer'
  if (ArrayBuffer.isView(value)) return value.constructor.name
  if (typeof value === 'object' && value !== null) {
    if (value.constructor && value.constructor !== Object && value.constructor !== Array) return value.constructor.name
    return JSON.stringify(value) ?? String(value)
  }
  return String(value)
}

/** Runs the cases; every failure names its case. */
async function runCases(t: any, cases: Case[]): Promise<void> {
  for (const c of cases) {
    casesTried++
    const e = c.expect
    if ('throws' in e) {
      let result: unknown
      let error: any
      try {
        result = c.call()
      } catch (caught) {
        error = caught
      }
      if (result instanceof Promise) result.catch(() => {})
      t.truthy(
        error,
        `${c.name}: expected a synchronous throw, got ${result instanceof Promise ? 'a Promise' : show(result)}`,
      )
      t.true(error instanceof e.throws, `${c.name}: ${error} is not a ${e.throws.name}`)
      t.is(error.code, e.code, `${c.name}: ${error?.message}`)
    } else if ('rejects' in e) {
      let result: unknown
      try {
        result = c.call()
      } catch (error) {
        t.fail(`${c.name}: threw synchronously (${(error as any).code}) instead of rejecting`)
        continue
      }
      t.true(result instanceof Promise, `${c.name}: returns a Promise`)
      const error: any = await withTimeout(
        (result as Promise<unknown>).then(
          () => null,
          (err) => err,
        ),
        5000,
        c.name,
      )
      t.truthy(error, `${c.name}: resolved instead of rejecting`)
      t.is(error?.code, e.rejects, c.name)
    } else if ('reports' in e) {
      const error: any = await withTimeout(c.call() as Promise<any>, 5000, c.name)
      t.is(error?.code, e.reports, `${c.name}: ${error}`)
    } else {
      let result: unknown
      try {
        result = c.call()
        if (result instanceof Promise) result = await withTimeout(result, 5000, c.name)
      } catch (error) {
        t.fail(`${c.name}: documented no-op threw ${error}`)
        continue
      }
      if (e.check) t.true(e.check(result), `${c.name}: returned ${show(result)}`)
    }
  }
}

// ---- argument values -------------------------------------------------------------------

const notOpenFd = 1_000_000
const badFdValues: Array<[unknown, Expect]> = [
  [{}, typeError()],
  [{ fd: '3' }, typeError()],
  [{ fd: null }, typeError()],
  [{ fd: {} }, typeError()],
  [true, typeError()],
  ['3', typeError()],
  [null, typeError()],
  [undefined, typeError()],
  [3n, typeError()],
  [[3], typeError()],
  [Symbol('fd'), typeError()],
  [() => 3, typeError()],
  [new Date(), typeError()],
  [-1, rangeError],
  [1.5, rangeError],
  [NaN, rangeError],
  [Infinity, rangeError],
  [-Infinity, rangeError],
  [2 ** 31, rangeError],
  [Number.MAX_SAFE_INTEGER, rangeError],
  [{ fd: -1 }, rangeError],
  [{ fd: 2.5 }, rangeError],
  [notOpenFd, { throws: Error, code: 'EBADF' }],
]

const badPaths: Array<[unknown, Expect]> = [
  [1, typeError()],
  [null, typeError()],
  [undefined, typeError()],
  [{}, typeError()],
  [[], typeError()],
  [true, typeError()],
  [Buffer.from('/tmp/x'), typeError()],
  [new URL('file:///tmp/x'), typeError()],
  ['', typeError('ERR_INVALID_ARG_VALUE')],
  ['/tmp/a\0b', typeError('ERR_INVALID_ARG_VALUE')],
  [`/tmp/${'p'.repeat(120)}`, typeError('ERR_INVALID_ARG_VALUE')],
]

const badData: unknown[] = [1, null, undefined, {}, [1], true, 1n, new ArrayBuffer(4), Symbol('d')]
const badTimeouts: Array<[unknown, Expect]> = [
  ['1', typeError()],
  [{}, typeError()],
  [true, typeError()],
  [1n, typeError()],
  [0, rangeError],
  [-0, rangeError],
  [-1, rangeError],
  [NaN, rangeError],
  [Infinity, rangeError],
  [2 ** 31, rangeError],
]
const badLimits: Array<[unknown, Expect]> = [
  ['1', typeError()],
  [null, typeError()],
  [{}, typeError()],
  [true, typeError()],
  [1n, typeError()],
  [0, rangeError],
  [-1, rangeError],
  [1.5, rangeError],
  [NaN, rangeError],
  [Infinity, rangeError],
  [2 ** 31, rangeError],
]
const badHows: Array<[unknown, Expect]> = [
  ['READ', typeError('ERR_INVALID_ARG_VALUE')],
  ['x', typeError('ERR_INVALID_ARG_VALUE')],
  ['', typeError('ERR_INVALID_ARG_VALUE')],
  [1, typeError()],
  [null, typeError()],
  [{}, typeError()],
  [true, typeError()],
]
const badSizes: Array<[unknown, Expect]> = [
  ['1', typeError()],
  [null, typeError()],
  [{}, typeError()],
  [true, typeError()],
  [1n, typeError()],
  [0, rangeError],
  [-1, rangeError],
  [1.5, rangeError],
  [2 ** 30 + 1, rangeError],
  [NaN, rangeError],
  [Infinity, rangeError],
]
const badOptions: unknown[] = [null, 'x', 1, true, 1n]

/** Proves a stream pair still works after the bad calls: one fd a → b, alone and intact. */
async function stillWorks(
  t: any,
  label: string,
  send: (fd: number) => Promise<void>,
  receive: () => Promise<number[]>,
) {
  const file = tmpFile(`still works: ${label}`)
  const fd = fs.openSync(file, 'r')
  await send(fd)
  fs.closeSync(fd)
  const got = await receive()
  t.is(got.length, 1, `${label}: exactly one fd arrived`)
  t.is(readAt(got[0]), `still works: ${label}`, label)
  for (const g of got) fs.closeSync(g)
}

test.serial('bad arguments to every method of live objects: typed errors, nothing changes', async (t) => {
  const [us1, us2] = UnixStream.pair()
  us2.setReadTimeout(5000)
  const [as1, as2] = AsyncUnixStream.pair()
  const [fs1, fs2] = FdSocket.pair()
  const sockUl = tmpSocketPath()
  const ul = UnixListener.bind(sockUl)
  const al = AsyncUnixListener.bind(tmpSocketPath())
  const server = createServer()
  server.listen(tmpSocketPath())
  await onceEvent(server, 'listening')
  const made: Array<FdSocket | FdServer> = []
  const fresh = <T extends FdSocket | FdServer>(thing: T): T => {
    made.push(thing)
    return thing
  }
  const file = tmpFile('a regular file')
  const readOnly = fs.openSync(file, 'r')
  const writeOnly = fs.openSync(file, 'a')
  const before = openFds()

  const cases: Case[] = []
  for (const [value, expect] of badFdValues) {
    const v = value as number
    cases.push(
      { name: `UnixStream#enqueue(${show(value)})`, call: () => us1.enqueue(v), expect },
      { name: `AsyncUnixStream#enqueue(${show(value)})`, call: () => as1.enqueue(v), expect },
      { name: `FdSocket#enqueue(${show(value)})`, call: () => fs1.enqueue(v), expect },
      { name: `toFd(${show(value)})`, call: () => toFd(v), expect: v === notOpenFd ? noop : expect },
      { name: `fdInfo(${show(value)})`, call: () => fdInfo(v), expect },
      { name: `toNetSocket(${show(value)})`, call: () => toNetSocket(v), expect },
      { name: `toReadStream(${show(value)})`, call: () => toReadStream(v), expect },
      { name: `toWriteStream(${show(value)})`, call: () => toWriteStream(v), expect },
    )
  }
  for (const [value, expect] of badPaths) {
    const p = value as string
    cases.push(
      { name: `UnixStream.connect(${show(value)})`, call: () => UnixStream.connect(p), expect },
      { name: `UnixListener.bind(${show(value)})`, call: () => UnixListener.bind(p), expect },
      { name: `AsyncUnixStream.connect(${show(value)})`, call: () => AsyncUnixStream.connect(p), expect },
      { name: `AsyncUnixListener.bind(${show(value)})`, call: () => AsyncUnixListener.bind(p), expect },
      { name: `FdSocket#connect(${show(value)})`, call: () => fresh(new FdSocket()).connect(p), expect },
      { name: `FdServer#listen(${show(value)})`, call: () => fresh(createServer()).listen(p), expect },
      { name: `connect(${show(value)})`, call: () => connect(p), expect },
    )
  }
  for (const value of badData) {
    const d = value as string
    cases.push(
      { name: `UnixStream#write(${show(value)})`, call: () => us1.write(d), expect: typeError() },
      { name: `AsyncUnixStream#write(${show(value)})`, call: () => as1.write(d), expect: typeError() },
    )
  }
  // Node's own Writable checks FdSocket#write chunks (null has its own code)
  for (const value of [1, {}, [1], true, new ArrayBuffer(4)]) {
    cases.push({ name: `FdSocket#write(${show(value)})`, call: () => fs1.write(value), expect: typeError() })
  }
  cases.push({
    name: 'FdSocket#write(null)',
    call: () => fs1.write(null),
    expect: typeError('ERR_STREAM_NULL_VALUES'),
  })
  for (const value of ['x', 1, null, undefined, [], {}, new ArrayBuffer(4), new DataView(new ArrayBuffer(4))]) {
    cases.push({
      name: `UnixStream#read(${show(value)})`,
      call: () => us1.read(value as Uint8Array),
      expect: typeError(),
    })
  }
  for (const [value, expect] of badSizes) {
    cases.push({ name: `AsyncUnixStream#read(${show(value)})`, call: () => as1.read(value as number), expect })
  }
  for (const [value, expect] of badHows) {
    cases.push(
      { name: `UnixStream#shutdown(${show(value)})`, call: () => us1.shutdown(value as 'read'), expect },
      { name: `AsyncUnixStream#shutdown(${show(value)})`, call: () => as1.shutdown(value as 'read'), expect },
    )
  }
  for (const [value, expect] of badTimeouts) {
    cases.push(
      { name: `UnixStream#setReadTimeout(${show(value)})`, call: () => us1.setReadTimeout(value as number), expect },
      { name: `UnixStream#setWriteTimeout(${show(value)})`, call: () => us1.setWriteTimeout(value as number), expect },
    )
  }
  for (const value of [null, undefined, 0.001, 2 ** 31 - 1]) {
    cases.push(
      {
        name: `UnixStream#setReadTimeout(${show(value)}) (allowed)`,
        call: () => us1.setReadTimeout(value as number | null),
        expect: noop,
      },
      {
        name: `UnixStream#setWriteTimeout(${show(value)}) (allowed)`,
        call: () => us1.setWriteTimeout(value as number | null),
        expect: noop,
      },
    )
  }
  for (const [value, expect] of badLimits) {
    const v = value as number
    cases.push(
      { name: `UnixStream#maxQueuedFds = ${show(value)}`, call: () => (us1.maxQueuedFds = v), expect },
      { name: `AsyncUnixStream#maxQueuedFds = ${show(value)}`, call: () => (as1.maxQueuedFds = v), expect },
      { name: `FdSocket#maxQueuedFds = ${show(value)}`, call: () => (fs1.maxQueuedFds = v), expect },
      { name: `new FdSocket({ maxQueuedFds: ${show(value)} })`, call: () => new FdSocket({ maxQueuedFds: v }), expect },
      { name: `createServer({ maxQueuedFds: ${show(value)} })`, call: () => createServer({ maxQueuedFds: v }), expect },
      {
        name: `connect(path, { maxQueuedFds: ${show(value)} })`,
        call: () => connect(sockUl, { maxQueuedFds: v }),
        expect,
      },
    )
  }
  for (const value of badOptions) {
    const o = value as {}
    cases.push(
      { name: `new FdSocket(${show(value)})`, call: () => new FdSocket(o), expect: typeError() },
      { name: `connect(path, ${show(value)})`, call: () => connect(sockUl, o), expect: typeError() },
      { name: `createServer(${show(value)})`, call: () => createServer(o), expect: typeError() },
      { name: `new FdServer(${show(value)})`, call: () => new FdServer(o), expect: typeError() },
    )
  }
  for (const value of ['x', 1, {}, true]) {
    const cb = value as () => void
    cases.push(
      {
        name: `FdSocket#connect(path, ${show(value)})`,
        call: () => fresh(new FdSocket()).connect(sockUl, cb),
        expect: typeError(),
      },
      { name: `connect(path, {}, ${show(value)})`, call: () => connect(sockUl, {}, cb), expect: typeError() },
      { name: `createServer({}, ${show(value)})`, call: () => createServer({}, cb), expect: typeError() },
      {
        name: `FdServer#listen(path, ${show(value)})`,
        call: () => fresh(createServer()).listen(tmpSocketPath(), cb),
        expect: typeError(),
      },
      { name: `FdServer#close(${show(value)})`, call: () => fresh(createServer()).close(cb), expect: typeError() },
    )
  }
  for (const value of [{}, null, undefined, 1, us1, fs1, as1.fd]) {
    cases.push({
      name: `FdSocket.from(${show(value)})`,
      call: () => FdSocket.from(value as AsyncUnixStream),
      expect: typeError(),
    })
  }
  // handles without an fd (yet)
  const unconnected = new net.Socket()
  const notListening = net.createServer()
  const unbound = dgram.createSocket('udp4')
  const notOpenYet = fs.createReadStream(file)
  await new Promise((resolve) => notOpenYet.once('open', resolve))
  notOpenYet.destroy()
  await onceEvent(notOpenYet, 'close')
  const handle = await fs.promises.open(file, 'r')
  await handle.close()
  for (const [label, value] of [
    ['an unconnected net.Socket', unconnected],
    ['a net.Server not listening', notListening],
    ['an unbound dgram.Socket', unbound],
    ['a closed fs.ReadStream', notOpenYet],
    ['a closed FileHandle', handle],
  ] as const) {
    const v = value as unknown as number
    const expect = typeError('ERR_INVALID_ARG_VALUE')
    cases.push(
      { name: `toFd(${label})`, call: () => toFd(v), expect },
      { name: `UnixStream#enqueue(${label})`, call: () => us1.enqueue(v), expect },
      { name: `AsyncUnixStream#enqueue(${label})`, call: () => as1.enqueue(v), expect },
      { name: `FdSocket#enqueue(${label})`, call: () => fs1.enqueue(v), expect },
    )
  }
  // fds of the wrong kind: refused, and left open for the caller
  const wrongType = typeError('ERR_INVALID_FD_TYPE')
  cases.push(
    { name: 'toNetSocket(a regular file)', call: () => toNetSocket(readOnly), expect: wrongType },
    { name: 'toNetSocket(a listening socket)', call: () => toNetSocket(ul.fd), expect: wrongType },
    { name: 'toReadStream(a write-only fd)', call: () => toReadStream(writeOnly), expect: wrongType },
    { name: 'toReadStream(a listening socket)', call: () => toReadStream(ul.fd), expect: wrongType },
    { name: 'toWriteStream(a read-only fd)', call: () => toWriteStream(readOnly), expect: wrongType },
    { name: 'toWriteStream(a listening socket)', call: () => toWriteStream(al.fd), expect: wrongType },
    {
      name: 'toNetServer(a regular file)',
      call: () => toNetServer(readOnly),
      expect: { rejects: 'ERR_INVALID_FD_TYPE' },
    },
    {
      name: 'toNetServer(a connected socket)',
      call: () => toNetServer(us1.fd),
      expect: { rejects: 'ERR_INVALID_FD_TYPE' },
    },
    {
      name: 'toReadStream(fd, { start: "x" })',
      call: () => toReadStream(readOnly, { start: 'x' as unknown as number }),
      expect: typeError(),
    },
    {
      name: 'fdInfo({ fd }) (an object with an fd is accepted)',
      call: () => fdInfo({ fd: readOnly } as unknown as number),
      expect: { noop: true, check: (r) => (r as { kind: string }).kind === 'file' },
    },
  )
  // state errors on live objects
  cases.push(
    {
      name: 'FdServer#listen while listening',
      call: () => server.listen(tmpSocketPath()),
      expect: { throws: Error, code: 'ERR_SERVER_ALREADY_LISTEN' },
    },
    {
      name: 'FdSocket#connect on a connected socket',
      call: () => fs1.connect(sockUl),
      expect: { throws: Error, code: 'ERR_SOCKET_CONNECTED' },
    },
    {
      name: 'FdSocket#peerCredentials before connect',
      call: () => fresh(new FdSocket()).peerCredentials(),
      expect: { throws: Error, code: 'ERR_SOCKET_NOT_CONNECTED' },
    },
    {
      name: 'new FdSocket().dequeue() before connect',
      call: () => fresh(new FdSocket()).dequeue(),
      expect: { noop: true, check: (r) => r === null },
    },
    {
      name: 'FdServer#close() when not listening, with a callback',
      call: () => new Promise((resolve) => createServer().close(resolve)),
      expect: { reports: 'ERR_SERVER_NOT_RUNNING' },
    },
    {
      name: 'FdServer#address() when not listening',
      call: () => createServer().address(),
      expect: { noop: true, check: (r) => r === null },
    },
  )
  // empty writes with fds queued, and the 254th fd
  const followUps: Array<Promise<void>> = []
  cases.push({
    name: 'UnixStream#write("") with fds queued',
    call: () => {
      us1.enqueue(readOnly)
      try {
        return us1.write('')
      } finally {
        us1.write('!')
        const buf = Buffer.alloc(4)
        us2.read(buf)
        for (const fd of dequeueAll(us2)) fs.closeSync(fd)
      }
    },
    expect: { throws: Error, code: 'ERR_FD_EMPTY_WRITE' },
  })
  cases.push({
    name: 'AsyncUnixStream#write("") with fds queued (throws, does not reject)',
    call: () => {
      as1.enqueue(readOnly)
      try {
        return as1.write(new Uint8Array(0))
      } finally {
        followUps.push(
          as1.write('!').then(async () => {
            await as2.read(1)
            for (const fd of dequeueAll(as2)) fs.closeSync(fd)
          }),
        )
      }
    },
    expect: { throws: Error, code: 'ERR_FD_EMPTY_WRITE' },
  })
  for (const [label, stream] of [
    ['UnixStream', us1],
    ['AsyncUnixStream', as1],
    ['FdSocket', fs1],
  ] as const) {
    cases.push({
      name: `${label}#enqueue: the 254th fd`,
      call: () => {
        const fresh2 =
          label === 'UnixStream'
            ? UnixStream.pair()
            : label === 'AsyncUnixStream'
              ? AsyncUnixStream.pair()
              : FdSocket.pair()
        const [x, y] = fresh2 as [UnixStream, UnixStream]
        try {
          for (let i = 0; i < 253; i++) x.enqueue(readOnly)
          return x.enqueue(readOnly)
        } finally {
          for (const s of [x, y]) 'destroy' in s ? (s as unknown as FdSocket).destroy() : s.close()
        }
      },
      expect: { throws: QueueFullError, code: 'ERR_FD_QUEUE_FULL' },
    })
    void stream
  }

  await runCases(t, cases)
  await withTimeout(Promise.all(followUps), 5000, 'the carrier write after the empty one')
  await sleep(20)
  for (const thing of made) 'destroy' in thing ? thing.destroy() : thing.close()
  unbound.close()
  t.is(openFds(), before, 'no bad call left an fd behind')
  fs.closeSync(readOnly)
  fs.closeSync(writeOnly)

  // the live objects are unchanged
  await stillWorks(
    t,
    'UnixStream',
    async (fd) => {
      us1.enqueue(fd)
      us1.write('k')
    },
    async () => {
      const buf = Buffer.alloc(8)
      t.is(buf.subarray(0, us2.read(buf)).toString(), 'k')
      return dequeueAll(us2)
    },
  )
  await stillWorks(
    t,
    'AsyncUnixStream',
    async (fd) => {
      as1.enqueue(fd)
      await as1.write('k')
    },
    async () => {
      t.is((await readExactly(as2, 1)).toString(), 'k')
      return dequeueAll(as2)
    },
  )
  await stillWorks(
    t,
    'FdSocket',
    async (fd) => {
      fs1.enqueue(fd)
      fs1.write('k')
    },
    async () => {
      const [data] = (await onceEvent(fs2, 'data')) as [Buffer]
      t.is(data.toString(), 'k')
      return dequeueAll(fs2)
    },
  )
  t.is(us1.maxQueuedFds, 1024)
  t.is(as1.maxQueuedFds, 1024)
  t.is(fs1.maxQueuedFds, 1024)
  us1.close()
  us2.close()
  as1.close()
  as2.close()
  fs1.destroy()
  fs2.destroy()
  ul.close()
  al.close()
  server.close()
  t.log(`${cases.length} cases on live objects`)
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(
  'every method of closed objects: ERR_SOCKET_CLOSED (thrown, or rejected when async) or a documented no-op',
  async (t) => {
    const [us1, us2] = UnixStream.pair()
    us1.close()
    us2.close()
    const ul = UnixListener.bind(tmpSocketPath())
    ul.close()
    const [as1, as2] = AsyncUnixStream.pair()
    as1.close()
    as2.close()
    const al = AsyncUnixListener.bind(tmpSocketPath())
    al.close()
    const [fs1, fs2] = FdSocket.pair()
    fs1.destroy()
    fs2.destroy()
    await onceEvent(fs1, 'close')
    const unconnected = new FdSocket()
    unconnected.destroy()
    const server = createServer()
    server.listen(tmpSocketPath())
    await onceEvent(server, 'listening')
    server.close()
    await onceEvent(server, 'close')
    const fd = fs.openSync(tmpFile('x'), 'r')
    const minusOne = (r: unknown) => r === -1
    const self = (thing: unknown) => (r: unknown) => r === thing

    const cases: Case[] = [
      { name: 'UnixStream#read', call: () => us1.read(Buffer.alloc(1)), expect: closed },
      { name: 'UnixStream#write', call: () => us1.write('x'), expect: closed },
      { name: 'UnixStream#enqueue', call: () => us1.enqueue(fd), expect: closed },
      { name: 'UnixStream#dequeue', call: () => us1.dequeue(), expect: closed },
      { name: 'UnixStream#flush', call: () => us1.flush(), expect: closed },
      { name: 'UnixStream#shutdown', call: () => us1.shutdown(), expect: closed },
      { name: 'UnixStream#setReadTimeout', call: () => us1.setReadTimeout(5), expect: closed },
      { name: 'UnixStream#setWriteTimeout', call: () => us1.setWriteTimeout(5), expect: closed },
      { name: 'UnixStream#peerCredentials', call: () => us1.peerCredentials(), expect: closed },
      { name: 'UnixStream#close again', call: () => us1.close(), expect: noop },
      { name: 'UnixStream#fd', call: () => us1.fd, expect: { noop: true, check: minusOne } },
      {
        name: 'UnixStream#maxQueuedFds',
        call: () => us1.maxQueuedFds,
        expect: { noop: true, check: (r) => r === 1024 },
      },
      { name: 'UnixListener#accept', call: () => ul.accept(), expect: closed },
      { name: 'UnixListener#close again', call: () => ul.close(), expect: noop },
      { name: 'UnixListener#fd', call: () => ul.fd, expect: { noop: true, check: minusOne } },
      { name: 'AsyncUnixStream#read', call: () => as1.read(), expect: { rejects: 'ERR_SOCKET_CLOSED' } },
      { name: 'AsyncUnixStream#write', call: () => as1.write('x'), expect: { rejects: 'ERR_SOCKET_CLOSED' } },
      { name: 'AsyncUnixStream#shutdown', call: () => as1.shutdown('write'), expect: { rejects: 'ERR_SOCKET_CLOSED' } },
      { name: 'AsyncUnixStream#enqueue', call: () => as1.enqueue(fd), expect: closed },
      { name: 'AsyncUnixStream#dequeue', call: () => as1.dequeue(), expect: closed },
      { name: 'AsyncUnixStream#peerCredentials', call: () => as1.peerCredentials(), expect: closed },
      { name: 'AsyncUnixStream#close again', call: () => as1.close(), expect: noop },
      { name: 'AsyncUnixStream#fd', call: () => as1.fd, expect: { noop: true, check: minusOne } },
      { name: 'AsyncUnixStream#read(bad size) still throws first', call: () => as1.read(0), expect: rangeError },
      { name: 'AsyncUnixListener#accept', call: () => al.accept(), expect: { rejects: 'ERR_SOCKET_CLOSED' } },
      { name: 'AsyncUnixListener#close again', call: () => al.close(), expect: noop },
      { name: 'AsyncUnixListener#fd', call: () => al.fd, expect: { noop: true, check: minusOne } },
      { name: 'FdSocket.from(a closed AsyncUnixStream)', call: () => FdSocket.from(as1), expect: closed },
      { name: 'FdSocket#enqueue', call: () => fs1.enqueue(fd), expect: closed },
      { name: 'FdSocket#dequeue', call: () => fs1.dequeue(), expect: closed },
      { name: 'FdSocket#peerCredentials', call: () => fs1.peerCredentials(), expect: closed },
      {
        name: 'FdSocket#write (callback gets the error)',
        call: () => new Promise((resolve) => fs1.write('x', resolve)),
        expect: { reports: 'ERR_STREAM_DESTROYED' },
      },
      { name: 'FdSocket#destroy again', call: () => fs1.destroy(), expect: { noop: true, check: self(fs1) } },
      { name: 'FdSocket#end', call: () => fs1.end(), expect: { noop: true, check: self(fs1) } },
      { name: 'FdSocket#ref', call: () => fs1.ref(), expect: { noop: true, check: self(fs1) } },
      { name: 'FdSocket#unref', call: () => fs1.unref(), expect: { noop: true, check: self(fs1) } },
      { name: 'FdSocket#fd', call: () => fs1.fd, expect: { noop: true, check: minusOne } },
      {
        name: 'FdSocket#queuedInboundFds',
        call: () => fs1.queuedInboundFds,
        expect: { noop: true, check: (r) => r === 0 },
      },
      { name: 'FdSocket#maxQueuedFds = 5', call: () => (fs1.maxQueuedFds = 5), expect: noop },
      // A socket connects once, whether it had a stream or not (README).
      { name: 'FdSocket#connect (had a stream)', call: () => fs1.connect(tmpSocketPath()), expect: closed },
      { name: 'FdSocket#connect (never connected)', call: () => unconnected.connect(tmpSocketPath()), expect: closed },
      { name: 'FdSocket#enqueue (never connected)', call: () => unconnected.enqueue(fd), expect: closed },
      {
        name: 'FdServer#close again, with a callback',
        call: () => new Promise((resolve) => server.close(resolve)),
        expect: { reports: 'ERR_SERVER_NOT_RUNNING' },
      },
      { name: 'FdServer#close again', call: () => server.close(), expect: { noop: true, check: self(server) } },
      { name: 'FdServer#address', call: () => server.address(), expect: { noop: true, check: (r) => r === null } },
      { name: 'FdServer#listening', call: () => server.listening, expect: { noop: true, check: (r) => r === false } },
      { name: 'FdServer#ref', call: () => server.ref(), expect: { noop: true, check: self(server) } },
      { name: 'FdServer#unref', call: () => server.unref(), expect: { noop: true, check: self(server) } },
      {
        name: 'fdInfo(a closed fd)',
        call: () => fdInfo(us2.fd === -1 ? 999_999 : us2.fd),
        expect: { throws: Error, code: 'EBADF' },
      },
    ]
    const before = openFds()
    await runCases(t, cases)
    t.is(openFds(), before)
    fs.closeSync(fd)
    // a closed server can listen again
    const again = tmpSocketPath()
    server.listen(again)
    await onceEvent(server, 'listening')
    t.is(server.address(), again)
    server.close()
    t.log(`${cases.length} cases on closed objects`)
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial('the constructors cannot be called from user code: TypeError for every class', async (t) => {
  const [a, b] = AsyncUnixStream.pair()
  const before = openFds()
  let n = 0
  for (const Class of [UnixStream, UnixListener, AsyncUnixStream, AsyncUnixListener]) {
    const Ctor = Class as unknown as new (...args: unknown[]) => unknown
    for (const args of [[], [undefined, undefined], [Symbol('fd-queue.wrap'), {}], [a.fd], [null, a]]) {
      t.throws(() => new Ctor(...args), { instanceOf: TypeError }, `new ${Class.name}(${args.map(show).join(', ')})`)
      n++
      casesTried++
    }
  }
  t.is(openFds(), before)
  a.close()
  b.close()
  t.log(`${n} constructor calls refused`)
})

// ---- once-reported bugs, fixed: each stays as a regression test ----

test('toNetServer() with a bad argument throws synchronously (SPEC 6), rather than returning a rejection', (t) => {
  for (const value of ['3', null, {}, -1, 1.5]) {
    let result: unknown
    let error: any
    try {
      result = toNetServer(value as number)
    } catch (caught) {
      error = caught
    }
    if (result instanceof Promise) result.catch(() => {})
    casesTried++
    t.truthy(error, `toNetServer(${show(value)}) returned ${result instanceof Promise ? 'a Promise' : show(result)}`)
  }
})

test('FdSocket.pair() with bad options leaks no fd', async (t) => {
  // In a child, so that the leaked fds (open until garbage collection) stay out of this
  // file's fd count.
  const script = `
    const fs = require('node:fs')
    const { FdSocket } = require(${JSON.stringify(path.join(ROOT, 'index.js'))})
    const count = require(${JSON.stringify(path.join(ROOT, '__test__', 'fixtures', 'fd-state.cjs'))}).openFdCount
    const before = count()
    const codes = []
    for (const options of [null, 'x', { maxQueuedFds: 0 }, { highWaterMark: -1 }]) {
      try { FdSocket.pair(options) } catch (e) { codes.push(e.code) }
    }
    console.log(JSON.stringify({ codes, leaked: count() - before }))`
  casesTried += 4
  const result = await runNode(['-e', script])
  t.is(result.status, 0, result.stderr)
  const report = JSON.parse(result.stdout)
  t.deepEqual(report.codes, [
    'ERR_INVALID_ARG_TYPE',
    'ERR_INVALID_ARG_TYPE',
    'ERR_OUT_OF_RANGE',
    'ERR_INVALID_ARG_VALUE',
  ])
  t.is(report.leaked, 0, 'fds left open by the failed pair() calls')
})

test('createServer() with an invalid stream option throws at once, not as an uncaught exception at the first connection', async (t) => {
  // Run in a child: were the option not checked up front, the first connection would
  // throw from inside the accept callback and the process would exit with status 1.
  const sock = tmpSocketPath()
  const script = `
      const { createServer, connect } = require(${JSON.stringify(path.join(ROOT, 'index.js'))})
      let server
      try { server = createServer({ highWaterMark: 'x' }) } catch (e) { console.log(JSON.stringify({ threw: e.code })); process.exit(0) }
      server.listen(${JSON.stringify(sock)}, () => {
        const c = connect(${JSON.stringify(sock)})
        c.on('error', () => {})
        setTimeout(() => { c.destroy(); server.close(); console.log(JSON.stringify({ survived: true })) }, 300)
      })`
  casesTried++
  const result = await runNode(['-e', script])
  t.is(result.status, 0, result.stderr)
  t.regex(result.stdout, /"threw":"ERR_INVALID_ARG_VALUE"/)
})

// ---- re-entrant calls ------------------------------------------------------------------

/** Sends `n` chunks with one fd each from `a` (an FdSocket). */
function sendChunks(a: FdSocket, n: number, file: string): void {
  for (let i = 0; i < n; i++) {
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
    a.write(`chunk ${i};`)
  }
}

for (const event of ['data', 'fds', 'end'] as const) {
  for (const how of ['destroy', 'end+destroy', 'dequeue+destroy'] as const) {
    test.serial(`re-entrant: ${how}() inside an FdSocket '${event}' handler with fds still arriving`, async (t) => {
      const file = tmpFile('re-entrant')
      const [a, b] = FdSocket.pair()
      let calls = 0
      b.on(event, (handed?: unknown) => {
        // An 'fds' listener owns the fds it is handed.
        if (event === 'fds') for (const fd of handed as number[]) fs.closeSync(fd)
        calls++
        if (calls > 1) return
        if (how === 'dequeue+destroy' && !b.destroyed) for (const fd of dequeueAll(b)) fs.closeSync(fd)
        if (how === 'end+destroy') b.end()
        b.destroy()
        // after destroy: the documented errors, no crash
        t.is(
          thrown(() => b.dequeue()),
          'ERR_SOCKET_CLOSED',
        )
      })
      b.on('data', () => {})
      b.on('error', (error) => t.fail(`'error' ${error}`))
      sendChunks(a, 20, file)
      if (event === 'end') a.end()
      await withTimeout(onceEvent(b, 'close'), 5000, 'close')
      casesTried++
      t.is(calls, 1)
      a.destroy()
      await onceEvent(a, 'close').catch(() => {})
      await sleep(20)
      t.is(await settledOpenFds(baseline), baseline, 'the fds that arrived and were not dequeued were closed')
    })
  }
}

/** The code of what `call` throws. */
function thrown(call: () => unknown): unknown {
  try {
    call()
  } catch (error) {
    return (error as { code?: unknown }).code
  }
  return 'no throw'
}

test.serial(
  "re-entrant: server.close() and socket.destroy() inside 'connection', server.close() inside 'listening'",
  async (t) => {
    const sock = tmpSocketPath()
    const server = createServer()
    let connections = 0
    server.on('connection', (socket: FdSocket) => {
      connections++
      socket.destroy()
      server.close()
      server.close()
    })
    server.listen(sock)
    await onceEvent(server, 'listening')
    const client = connect(sock)
    const ended = new Promise<string>((resolve) => {
      client.on('end', () => resolve('end'))
      client.on('error', (e) => resolve(String((e as NodeJS.ErrnoException).code)))
      client.on('close', () => resolve('close'))
    })
    await withTimeout(onceEvent(server, 'close'), 5000, "server 'close'")
    t.true(['end', 'close', 'ECONNRESET', 'EPIPE'].includes(await withTimeout(ended, 5000, 'client end')))
    client.destroy()
    t.is(connections, 1)
    t.false(fs.existsSync(sock))
    // close inside 'listening'
    const other = createServer()
    other.on('listening', () => other.close())
    other.listen(tmpSocketPath())
    await withTimeout(onceEvent(other, 'close'), 5000, "'close' after closing in 'listening'")
    casesTried += 2
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial(
  're-entrant: AsyncUnixStream close() inside a read callback settles every pending call; listener close inside accept',
  async (t) => {
    const [a, b] = AsyncUnixStream.pair()
    const file = tmpFile('pending')
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
    const first = b.read(1).then((data) => {
      b.close()
      return data
    })
    const pending = [b.read(), b.read(), b.write('x'), b.shutdown('write')].map((p) =>
      p.then(
        () => 'resolved',
        (e) => e.code,
      ),
    )
    await a.write('ab')
    t.is((await withTimeout(first, 5000, 'first read')).toString(), 'a')
    const settled = await withTimeout(Promise.all(pending), 5000, 'pending calls settle')
    for (const s of settled) t.true(['ERR_SOCKET_CLOSED', 'resolved'].includes(s), s)
    t.is(settled.filter((s) => s === 'ERR_SOCKET_CLOSED').length >= 2, true)
    a.close()
    // two accepts pending, one connection: whichever accept takes it (the order of
    // accepts is not specified), closing the listener in its callback settles the other
    const listener = AsyncUnixListener.bind(tmpSocketPath())
    let closedInside = false
    const accepts = [listener.accept(), listener.accept()].map((p) =>
      p.then(
        (stream) => {
          listener.close()
          closedInside = true
          stream.close()
          return 'accepted'
        },
        (e) => e.code,
      ),
    )
    const peer = UnixStream.connect(listener.path)
    const outcomes = await withTimeout(Promise.all(accepts), 5000, 'both accepts settle')
    t.true(closedInside)
    t.deepEqual(outcomes.sort(), ['ERR_SOCKET_CLOSED', 'accepted'])
    peer.close()
    casesTried += 2
    await sleep(20)
    t.is(await settledOpenFds(baseline), baseline)
  },
)

// ---- a throwing user callback (in a child process) ----------------------------------------

const THROWER = path.join(ROOT, '__test__', 'fixtures', 'throwing-handler.cjs')

/** A node child in a fresh directory (see runProcess), killed after 15 s (scaled). */
function runNode(args: string[]): Promise<ProcessResult> {
  return runProcess(process.execPath, args, { cwd: tmpDir(), timeoutMs: 15_000 })
}

for (const where of ['data', 'fds', 'connection', 'end', 'write', 'drain'] as const) {
  test.serial(
    `a user callback throwing in '${where}' is an ordinary uncaught exception: exit status 1, no abort`,
    async (t) => {
      const result = await runNode([THROWER, where])
      casesTried++
      t.is(result.signal, null, 'not killed by a signal (SIGABRT would mean a native abort)')
      t.is(result.status, 1, result.stderr)
      t.regex(result.stderr, new RegExp(`Error: boom from the '${where}' handler`))
      t.notRegex(result.stderr, /panicked|FATAL ERROR|Aborted|napi_fatal|core dumped/i)
    },
  )
}

for (const where of ['data', 'fds', 'connection', 'write', 'drain'] as const) {
  test.serial(
    `a user callback throwing in '${where}' reaches process 'uncaughtException', and the socket carries on`,
    async (t) => {
      const result = await runNode([THROWER, where, 'caught'])
      casesTried++
      t.is(result.status, 0, result.stderr)
      const report = JSON.parse(result.stdout.trim().split('\n').pop()!)
      t.deepEqual(report.caught, [`boom from the '${where}' handler`])
      // As from net's callbacks: an exception, not a rejection of a Promise the user never saw.
      t.deepEqual(report.origins, ['uncaughtException'])
      if (where === 'connection') t.is(report.connections, 2, 'the server accepted the next connection')
      else if (where === 'write' || where === 'drain') {
        t.like(
          report,
          { next: 'second', content: 'still delivered', intact: true },
          'the next write and its fd arrived',
        )
      } else {
        t.like(report, { next: 'second', content: 'still delivered' }, 'the next chunk and its fd arrived')
        t.deepEqual(report.received, ['first', 'second'], 'no chunk lost to the throw')
      }
    },
  )
}
