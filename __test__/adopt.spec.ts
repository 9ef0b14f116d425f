/**
 * Adopting what a process already holds, handing listeners over, and abstract addresses
 * (SPEC §3 "Adopting what a process already holds", "Closing and handing over").
 */
import test, { type ExecutionContext } from 'ava'
import { linuxTest } from './platform.js'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect,
  createServer,
  DatagramSocket,
  FdServer,
  FdSocket,
  SeqpacketSocket,
  UnixListener,
  UnixStream,
} from '../index.js'
import {
  copyOf,
  fdFlags,
  fdIdentity,
  lastJson,
  pathIdentity,
  O_CLOEXEC,
  O_PATH,
  ROOT,
  startFixture,
  thrown,
  tmpDir,
  tmpFile,
  tmpSocketPath,
  scaled,
} from './helpers.js'
import { checkNoFdLeaked, oddSockets, onceEvent, readExactly, withTimeout } from './async-helpers.js'

const O_NONBLOCK = fs.constants.O_NONBLOCK

checkNoFdLeaked()

function isOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd)
    return true
  } catch {
    return false
  }
}

/** A unique abstract name (Linux). */
function abstractName(): string {
  return `\0fd-queue-test-${process.pid}-${Math.random().toString(36).slice(2)}`
}

/**
 * How Node's own `net` spells `name`: libuv before 1.48 (Node 20) binds and connects with
 * the whole of sun_path, so its abstract names are padded with NULs to 108 bytes; later
 * versions use the exact name, as fd-queue and every other program do.
 */
function asNetSpellsIt(name: string): string {
  const [major, minor] = process.versions.uv.split('.').map(Number)
  return major === 1 && minor < 48 ? name.padEnd(108, '\0') : name
}

// ---------------------------------------------------------------------------------------
// A child adopts the socket it inherited as fd 3
// ---------------------------------------------------------------------------------------

for (const kind of ['blocking', 'async', 'fdsocket'] as const) {
  test(`a child adopts an inherited socket-pair end (fd 3) as ${kind === 'fdsocket' ? 'new FdSocket({ fd })' : `${kind === 'blocking' ? 'UnixStream' : 'AsyncUnixStream'}.fromFd(3)`}: close-on-exec, fds both ways, closed with the object`, async (t) => {
    const [mine, theirs] = UnixStream.pair()
    const child = startFixture('adopt-child', [kind], { stdio: ['ignore', 'pipe', 'pipe', theirs.fd] })
    theirs.close()
    const file = tmpFile(`parent file for ${kind}`)
    const fd = fs.openSync(file, 'r')
    mine.enqueue(fd)
    fs.closeSync(fd)
    mine.write('file\n')
    mine.setReadTimeout(60_000)
    const buf = Buffer.alloc(256)
    let reply = ''
    while (!reply.endsWith('\n')) {
      const n = mine.read(buf)
      if (n === 0) break
      reply += buf.subarray(0, n).toString()
    }
    t.is(reply, `got parent file for ${kind}\n`)
    const answer = mine.dequeue()
    t.not(answer, null, 'the child answered with an fd of its own')
    const content = Buffer.alloc(64)
    t.regex(content.subarray(0, fs.readSync(answer!, content, 0, 64, 0)).toString(), /^from child \d+$/)
    fs.closeSync(answer!)
    const result = await child.done
    t.is(result.code, 0, result.stderr)
    // (Node marks inherited fds close-on-exec at startup by itself; the Rust unit tests of
    // `socket::take` show that adopting sets the flag on an fd that lacks it.)
    const { cloexecBefore: _, ...report } = lastJson(result)
    t.deepEqual(report, {
      kind,
      cloexecAfter: true,
      content: `parent file for ${kind}`,
      closedWithObject: true,
    })
    mine.close()
  })
}

// ---------------------------------------------------------------------------------------
// What each fromFd accepts and refuses
// ---------------------------------------------------------------------------------------

linuxTest('fromFd refuses every fd of another kind with ERR_INVALID_FD_TYPE and leaves it untouched', async (t) => {
  const odd = await oddSockets(t)
  const file = fs.openSync(tmpFile('a file'), 'r')
  const pathOnly = fs.openSync(tmpDir(), O_PATH)
  const pipe = fs.openSync(tmpFile('x'), 'r')
  const [s1, s2] = UnixStream.pair()
  const connected = copyOf(s1)
  const listener = UnixListener.bind(tmpSocketPath())
  const listening = copyOf(listener)
  const notStreams: Array<[string, number]> = [
    ['a regular file open for reading only', file],
    ['an O_PATH fd', pathOnly],
    ['an unconnected Unix stream socket', odd.get('unconnected-unix-stream')!],
    ['a bound, not listening, Unix stream socket', odd.get('bound-not-listening-unix-stream')!],
    ['a Unix datagram socket', odd.get('unix-datagram')!],
    ['a connected Unix seqpacket socket', odd.get('unix-seqpacket')!],
    ['a connected TCP socket', odd.get('tcp-connected')!],
    ['a listening TCP socket', odd.get('tcp-listening')!],
  ]
  const adopters: Array<[string, (fd: number) => unknown, Array<[string, number]>]> = [
    [
      'UnixStream.fromFd',
      (fd) => UnixStream.fromFd(fd),
      [...notStreams, ['a listening Unix stream socket', listening]],
    ],
    [
      'AsyncUnixStream.fromFd',
      (fd) => AsyncUnixStream.fromFd(fd),
      [...notStreams, ['a listening Unix stream socket', listening]],
    ],
    [
      'new FdSocket({ fd })',
      (fd) => new FdSocket({ fd }),
      [...notStreams, ['a listening Unix stream socket', listening]],
    ],
    [
      'UnixListener.fromFd',
      (fd) => UnixListener.fromFd(fd),
      [...notStreams, ['a connected Unix stream socket', connected]],
    ],
    [
      'AsyncUnixListener.fromFd',
      (fd) => AsyncUnixListener.fromFd(fd),
      [...notStreams, ['a connected Unix stream socket', connected]],
    ],
    [
      'server.listen({ fd })',
      (fd) => createServer().listen({ fd }),
      [...notStreams, ['a connected Unix stream socket', connected]],
    ],
  ]
  let tried = 0
  for (const [adopter, adopt, refused] of adopters) {
    for (const [label, fd] of refused) {
      const before = { identity: fdIdentity(fd), flags: fdFlags(fd) }
      const error = thrown(() => adopt(fd))
      t.is(error.code, 'ERR_INVALID_FD_TYPE', `${adopter}(${label})`)
      t.true(error instanceof TypeError, `${adopter}(${label}): a TypeError, as Node's and the helpers'`)
      t.regex(error.message, /left open/, `${adopter}(${label}) says the fd is still yours`)
      // Says what the fd is (a socket that is bound, not listening, has no peer either).
      const is = label.startsWith('a bound') ? 'an unconnected Unix stream socket' : label
      t.true(error.message.startsWith(`fd ${fd} is ${is}, not `), `${adopter}(${label}): ${error.message}`)
      t.deepEqual({ identity: fdIdentity(fd), flags: fdFlags(fd) }, before, `${adopter}(${label}): untouched`)
      tried++
    }
  }
  t.log(`${tried} refusals`)
  t.is(thrown(() => UnixStream.fromFd(2 ** 31 - 1)).code, 'EBADF')
  t.is(thrown(() => AsyncUnixStream.fromFd(-1)).code, 'ERR_OUT_OF_RANGE')
  t.is(thrown(() => UnixListener.fromFd('3' as unknown as number)).code, 'ERR_INVALID_ARG_TYPE')
  for (const fd of [file, pathOnly, pipe, connected, listening]) fs.closeSync(fd)
  s1.close()
  s2.close()
  listener.close()
})

test('UnixStream.fromFd never sets O_NONBLOCK, and reads, writes and times out on a socket another holder made non-blocking', (t) => {
  // Blocking stays blocking.
  const [a, b] = UnixStream.pair()
  const blockingCopy = copyOf(a)
  const flags = fdFlags(blockingCopy)
  const adopted = UnixStream.fromFd(blockingCopy)
  t.is(fdFlags(blockingCopy) & O_NONBLOCK, 0)
  adopted.setReadTimeout(20)
  t.is(thrown(() => adopted.read(Buffer.alloc(4))).code, 'ETIMEDOUT')
  b.write('hi')
  t.is(adopted.read(Buffer.alloc(4)), 2)
  t.is(fdFlags(blockingCopy), flags | O_CLOEXEC, 'nothing changed but close-on-exec')
  adopted.close()
  a.close()
  b.close()

  // A non-blocking socket (an async stream's, shared): the blocking class waits with poll.
  const [x, y] = AsyncUnixStream.pair()
  const nonblockingCopy = copyOf(x)
  x.close()
  const shared = UnixStream.fromFd(nonblockingCopy)
  t.not(fdFlags(nonblockingCopy) & O_NONBLOCK, 0, 'still non-blocking')
  shared.setReadTimeout(30)
  t.is(thrown(() => shared.read(Buffer.alloc(4))).code, 'ETIMEDOUT', 'a timeout, not EAGAIN')
  shared.setReadTimeout(null)
  void y.write('late')
  // No data yet when read is called would be EAGAIN on a non-blocking fd without the poll.
  const buf = Buffer.alloc(8)
  let got = ''
  while (got.length < 4) got += buf.subarray(0, shared.read(buf)).toString()
  t.is(got, 'late')
  t.is(shared.write('back'), 4)
  t.not(fdFlags(nonblockingCopy) & O_NONBLOCK, 0, 'still non-blocking afterwards')
  shared.close()
  y.close()
})

test('AsyncUnixStream.fromFd leaves a blocking socket blocking and still never blocks the event loop', async (t) => {
  const [a, b] = UnixStream.pair()
  const copy = copyOf(a)
  a.close()
  const adopted = AsyncUnixStream.fromFd(copy)
  t.is(fdFlags(copy) & O_NONBLOCK, 0)
  // A read with nothing to read waits without blocking: a timer still fires meanwhile.
  const pending = adopted.read()
  await new Promise((resolve) => setTimeout(resolve, 20))
  b.write('data')
  t.is((await withTimeout(pending, 10_000, 'the read')).toString(), 'data')
  await adopted.write('reply')
  const buf = Buffer.alloc(8)
  t.is(buf.subarray(0, b.read(buf)).toString(), 'reply')
  t.is(fdFlags(copy) & O_NONBLOCK, 0, 'still blocking')
  adopted.close()
  t.false(isOpen(copy), 'closed with the stream')
  b.close()
})

linuxTest(
  'SeqpacketSocket.fromFd and DatagramSocket.fromFd leave blocking sockets blocking and never block the event loop',
  async (t) => {
    // Both ends of blocking pairs, made by Python: another holder of such a socket (a parent
    // that handed it over, systemd) keeps reading it the blocking way.
    const odd = await oddSockets(t)
    const kinds: Array<[string, (fd: number) => SeqpacketSocket | DatagramSocket]> = [
      ['unix-seqpacket-pair', (fd) => SeqpacketSocket.fromFd(fd)],
      ['unix-datagram-pair', (fd) => DatagramSocket.fromFd(fd)],
    ]
    const file = tmpFile('carried over an adopted message socket')
    for (const [name, adopt] of kinds) {
      const fds = [odd.get(`${name}-0`)!, odd.get(`${name}-1`)!]
      for (const fd of fds) t.is(fdFlags(fd) & O_NONBLOCK, 0, `${name}: blocking as Python made it`)
      const [a, b] = fds.map(adopt)
      // The sockets own them now (the map's teardown would close numbers reused since).
      for (const i of [0, 1]) odd.delete(`${name}-${i}`)
      for (const fd of fds) t.is(fdFlags(fd) & O_NONBLOCK, 0, `${name}: still blocking once adopted`)
      // A receive with nothing there waits without blocking: a timer still fires meanwhile.
      const pending = a.receive()
      await new Promise((resolve) => setTimeout(resolve, 20))
      const carried = fs.openSync(file, 'r')
      await b.send('ping', [carried])
      fs.closeSync(carried)
      const message = (await withTimeout(pending, 10_000, `${name}: the receive`))!
      t.is(message.data.toString(), 'ping')
      t.is(message.fds.length, 1)
      t.is(fdIdentity(message.fds[0]), pathIdentity(file), `${name}: the fd that came is the file's`)
      fs.closeSync(message.fds[0])
      await a.send('pong')
      t.is((await withTimeout(b.receive(), 10_000, `${name}: the reply`))!.data.toString(), 'pong')
      for (const fd of fds) t.is(fdFlags(fd) & O_NONBLOCK, 0, `${name}: still blocking afterwards`)
      a.close()
      b.close()
      for (const fd of fds) t.false(isOpen(fd), `${name}: closed with its socket`)
    }
  },
)

// ---------------------------------------------------------------------------------------
// Listeners: adoption, setUnlinkOnClose, FdServer#fd and handing a server over
// ---------------------------------------------------------------------------------------

test('UnixListener.fromFd and AsyncUnixListener.fromFd accept on an adopted listener and never remove its file', async (t) => {
  // A listener bound here, adopted through a second fd of it.
  const sock = tmpSocketPath()
  const original = UnixListener.bind(sock)
  const adoptedCopy = UnixListener.fromFd(copyOf(original))
  t.is(adoptedCopy.path, sock)
  const client = UnixStream.connect(sock)
  const served = adoptedCopy.accept({ timeout: scaled(60_000) })
  client.write('one')
  const buf = Buffer.alloc(8)
  t.is(buf.subarray(0, served.read(buf)).toString(), 'one')
  adoptedCopy.close()
  t.true(fs.existsSync(sock), 'an adopted listener leaves the socket file alone')
  original.close()
  t.false(fs.existsSync(sock), 'the one that bound it removes it')
  for (const s of [client, served]) s.close()

  // Blocking listeners from another program (Python): the blocking class leaves them
  // blocking; the async one makes its listener non-blocking (documented).
  const odd = await oddSockets(t)
  const blockingFd = odd.get('unix-listening-blocking-0')!
  const asyncFd = odd.get('unix-listening-blocking-1')!
  t.is(fdFlags(blockingFd) & O_NONBLOCK, 0)
  t.is(fdFlags(asyncFd) & O_NONBLOCK, 0)
  const blocking = UnixListener.fromFd(blockingFd)
  odd.delete('unix-listening-blocking-0')
  t.is(fdFlags(blockingFd) & O_NONBLOCK, 0, 'still blocking')
  t.is(fdFlags(blockingFd) & O_CLOEXEC, O_CLOEXEC)
  const adopted = AsyncUnixListener.fromFd(asyncFd)
  odd.delete('unix-listening-blocking-1')
  t.not(fdFlags(asyncFd) & O_NONBLOCK, 0, 'the async listener made it non-blocking')
  // Abstract names on Linux, files elsewhere (fixtures/odd-sockets.py).
  t.regex(blocking.path, /^(\0|\/.*\/)fdq-odd-\d+-0$/)
  t.regex(adopted.path, /^(\0|\/.*\/)fdq-odd-\d+-1$/)
  const c1 = UnixStream.connect(blocking.path)
  const s1 = blocking.accept({ timeout: scaled(60_000) })
  const accepting = adopted.accept()
  const c2 = UnixStream.connect(adopted.path)
  const s2 = await withTimeout(accepting, 10_000, 'accept on the adopted async listener')
  c1.write('py-0')
  c2.write('py-1')
  t.is(buf.subarray(0, s1.read(buf)).toString(), 'py-0')
  t.is((await readExactly(s2, 4)).toString(), 'py-1')
  for (const s of [c1, c2, s1]) s.close()
  s2.close()
  blocking.close()
  adopted.close()
})

test('setUnlinkOnClose(false): the path stays reachable for the successor after the old listener closes', async (t) => {
  for (const make of [(p: string) => UnixListener.bind(p), (p: string) => AsyncUnixListener.bind(p)]) {
    const sock = tmpSocketPath()
    const old = make(sock)
    const successor = UnixListener.fromFd(copyOf(old))
    old.setUnlinkOnClose(false)
    old.close()
    t.true(fs.existsSync(sock), `${old.constructor.name}: the socket file stays`)
    const client = UnixStream.connect(sock)
    const served = successor.accept({ timeout: scaled(60_000) })
    client.write('to the successor')
    const buf = Buffer.alloc(32)
    t.is(buf.subarray(0, served.read(buf)).toString(), 'to the successor')
    for (const s of [client, served]) s.close()
    successor.close()
    fs.rmSync(sock)
  }
  const listener = UnixListener.bind(tmpSocketPath())
  t.is(thrown(() => listener.setUnlinkOnClose('no' as never)).code, 'ERR_INVALID_ARG_TYPE')
  listener.close()
})

test('FdServer#fd hands the server over with enqueue(server); the receiver adopts it with listen({ fd })', async (t) => {
  const sock = tmpSocketPath()
  const old = createServer((socket: FdSocket) => socket.end('from old'))
  t.is(old.fd, -1)
  old.listen({ path: sock })
  await onceEvent(old, 'listening')
  t.true(old.fd >= 0)
  const [carrier, receiver] = UnixStream.pair()
  carrier.enqueue(old)
  carrier.write('s')
  receiver.read(Buffer.alloc(1))
  const handed = receiver.dequeue()!
  carrier.close()
  receiver.close()
  old.setUnlinkOnClose(false)
  old.close()
  await onceEvent(old, 'close')
  t.true(fs.existsSync(sock), 'the socket file stays for the successor')
  const successor = new FdServer()
  successor.on('connection', (socket: FdSocket) => socket.end('from successor'))
  successor.listen({ fd: handed })
  await onceEvent(successor, 'listening')
  t.is(successor.address(), sock)
  t.is(successor.fd, handed)
  const client = connect(sock)
  let reply = ''
  client.on('data', (chunk) => (reply += chunk))
  await onceEvent(client, 'end')
  t.is(reply, 'from successor')
  client.destroy()
  successor.close()
  await onceEvent(successor, 'close')
  t.true(fs.existsSync(sock), 'an adopted listener never removes a file')
  fs.rmSync(sock)
})

test('listen(path), listen({ path }) and listen({ fd }) with bad arguments throw; a refused fd stays the caller’s', (t) => {
  const server = createServer()
  t.is(thrown(() => server.listen({} as never)).code, 'ERR_INVALID_ARG_TYPE')
  t.is(thrown(() => server.listen({ fd: -1 })).code, 'ERR_OUT_OF_RANGE')
  t.is(thrown(() => server.listen({ path: 7 } as never)).code, 'ERR_INVALID_ARG_TYPE')
  const file = fs.openSync(tmpFile('x'), 'r')
  t.is(thrown(() => server.listen({ fd: file })).code, 'ERR_INVALID_FD_TYPE')
  t.true(isOpen(file))
  t.false(server.listening)
  fs.closeSync(file)
  t.is(thrown(() => createServer({ fd: 3 } as never)).code, 'ERR_INVALID_ARG_VALUE')
})

// ---------------------------------------------------------------------------------------
// Abstract addresses (Linux)
// ---------------------------------------------------------------------------------------

linuxTest(
  'abstract addresses: every bind and connect takes "\\0name", no file appears, and Node’s net interoperates',
  async (t) => {
    if (process.platform !== 'linux') {
      t.is(thrown(() => UnixListener.bind('\0x')).code, 'ERR_INVALID_ARG_VALUE')
      return
    }
    // fd-queue listeners, fd-queue clients of each kind.
    const name = abstractName()
    const listener = AsyncUnixListener.bind(name)
    t.is(listener.path, name)
    const blocking = UnixStream.connect(name)
    const asyncClient = await AsyncUnixStream.connect(name)
    const duplex = connect(name)
    await onceEvent(duplex, 'connect')
    const accepted = await Promise.all([listener.accept(), listener.accept(), listener.accept()])
    t.is(accepted.length, 3)
    // A file fd rides across an abstract connection like any other.
    const file = tmpFile('over an abstract address')
    const fd = fs.openSync(file, 'r')
    blocking.enqueue(fd)
    fs.closeSync(fd)
    blocking.write('!')
    // Which accepted stream is the blocking client's: the one its byte arrives on.
    const controller = new AbortController()
    const got = await Promise.race(
      accepted.map(async (s) => ({ s, data: await s.read(1, { signal: controller.signal }) })),
    )
    controller.abort()
    t.is(got.data.toString(), '!')
    const received = got.s.dequeue()
    t.not(received, null)
    t.is(fdIdentity(received!), pathIdentity(file))
    fs.closeSync(received!)
    // Node's net connects to our abstract listener (with the name spelled as this Node's
    // net spells it), and we connect to Node's by the name it was given.
    const forNet = AsyncUnixListener.bind(asNetSpellsIt(abstractName()))
    const viaNet = net.connect(forNet.path)
    await onceEvent(viaNet, 'connect')
    const fromNet = await forNet.accept()
    viaNet.write('net to fd-queue')
    t.is((await readExactly(fromNet, 15)).toString(), 'net to fd-queue')
    const netName = abstractName()
    let netConnections = 0
    const netServer = net.createServer((socket) => {
      netConnections++
      socket.end('net server')
    })
    await new Promise<void>((resolve) => netServer.listen(netName, resolve))
    // (Async clients: the servers answer on this same thread.) Where this Node's net padded
    // the name, a connect that finds no listener under the exact one tries that spelling.
    const toNet = await AsyncUnixStream.connect(netName)
    t.is((await readExactly(toNet, 10)).toString(), 'net server')
    const duplexToNet = connect(netName)
    const fromNetServer: Buffer[] = []
    duplexToNet.on('data', (chunk: Buffer) => fromNetServer.push(chunk))
    await onceEvent(duplexToNet, 'end')
    t.is(Buffer.concat(fromNetServer).toString(), 'net server')
    const blockingToNet = UnixStream.connect(netName)
    blockingToNet.setReadTimeout(scaled(10_000))
    while (netConnections < 3) await new Promise((resolve) => setImmediate(resolve))
    await new Promise((resolve) => setImmediate(resolve))
    // Until the end of the stream: one read need not bring all of it.
    const reply: Buffer[] = []
    const buf = Buffer.alloc(64)
    for (let n; (n = blockingToNet.read(buf)) > 0;) reply.push(Buffer.from(buf.subarray(0, n)))
    t.is(Buffer.concat(reply).toString(), 'net server')
    // FdServer and UnixListener on abstract names too.
    const serverName = abstractName()
    const server = createServer((socket: FdSocket) => socket.end('fd server'))
    server.listen(serverName)
    await onceEvent(server, 'listening')
    t.is(server.address(), serverName)
    const toServer = await AsyncUnixStream.connect(serverName)
    t.is((await readExactly(toServer, 9)).toString(), 'fd server')
    const blockingListener = UnixListener.bind(abstractName())
    t.is(blockingListener.path.charCodeAt(0), 0)
    // No file anywhere: the names are not paths.
    t.false(fs.existsSync(name.slice(1)))
    t.is(thrown(() => UnixListener.bind(`\0${'x'.repeat(108)}`)).code, 'ERR_INVALID_ARG_VALUE')
    t.is(thrown(() => UnixListener.bind(name)).code, 'EADDRINUSE')
    blocking.close()
    blockingToNet.close()
    for (const s of [asyncClient, fromNet, toNet, toServer, ...accepted]) s.close()
    duplex.destroy()
    duplexToNet.destroy()
    viaNet.destroy()
    listener.close()
    forNet.close()
    blockingListener.close()
    server.close()
    await onceEvent(server, 'close')
    await new Promise((resolve) => netServer.close(resolve))
  },
)

linuxTest('abstract addresses interoperate with Python on the same name', async (t) => {
  if (process.platform !== 'linux') return t.pass()
  const name = abstractName()
  const listener = AsyncUnixListener.bind(name)
  const python = spawn('python3', [
    '-c',
    `import socket; s = socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(name)}); s.sendall(b'from python'); s.close()`,
  ])
  const stream = await withTimeout(listener.accept(), 30_000, 'python connects')
  t.is((await readExactly(stream, 11)).toString(), 'from python')
  await new Promise((resolve) => python.on('close', resolve))
  stream.close()
  listener.close()
})

test('AsyncUnixListener: close() with accepts pending and connections waiting leaves every connection to the successor', async (t) => {
  const sock = tmpSocketPath()
  const old = AsyncUnixListener.bind(sock)
  const successor = UnixListener.fromFd(copyOf(old))
  const pending = [old.accept(), old.accept()].map((p) =>
    p.then(
      () => 'accepted',
      (e) => e.code,
    ),
  )
  const clients = [0, 1, 2, 3].map((i) => {
    const client = UnixStream.connect(sock)
    client.write(`c${i}`)
    return client
  })
  old.setUnlinkOnClose(false)
  old.close()
  t.deepEqual(await Promise.all(pending), ['ERR_SOCKET_CLOSED', 'ERR_SOCKET_CLOSED'])
  const names: string[] = []
  for (let i = 0; i < clients.length; i++) {
    const accepted = successor.accept({ timeout: scaled(60_000) })
    const buf = Buffer.alloc(4)
    let name = ''
    while (name.length < 2) name += buf.subarray(0, accepted.read(buf)).toString()
    names.push(name)
    accepted.close()
  }
  t.deepEqual(names.sort(), ['c0', 'c1', 'c2', 'c3'])
  for (const client of clients) client.close()
  successor.close()
  fs.rmSync(sock)
})

test("FdServer: a 'connection' listener that closes the server leaves every other waiting connection to the successor", async (t) => {
  const sock = tmpSocketPath()
  const successor = UnixListener.bind(sock)
  successor.setUnlinkOnClose(false)
  // Five connections wait in the backlog before the server takes its first turn.
  const clients = [0, 1, 2, 3, 4].map((i) => {
    const client = UnixStream.connect(sock)
    client.write(`c${i}`)
    return client
  })
  const server = new FdServer()
  const first = new Promise<string>((resolve, reject) => {
    server.once('connection', (socket: FdSocket) => {
      server.close()
      socket.once('data', (chunk: Buffer) => {
        resolve(chunk.toString())
        socket.destroy()
      })
      socket.once('error', reject)
    })
  })
  server.listen({ fd: copyOf(successor) })
  const taken = await withTimeout(first, 10_000, 'the first connection')
  const names = [taken]
  for (let i = 1; i < clients.length; i++) {
    const accepted = successor.accept({ timeout: scaled(60_000) })
    const buf = Buffer.alloc(4)
    let name = ''
    while (name.length < 2) name += buf.subarray(0, accepted.read(buf)).toString()
    names.push(name)
    accepted.close()
  }
  t.deepEqual(names.sort(), ['c0', 'c1', 'c2', 'c3', 'c4'])
  for (const client of clients) client.close()
  successor.close()
  fs.rmSync(sock)
})
