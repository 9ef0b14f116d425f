/**
 * Node handles (SPEC section 7): `enqueue` takes net.Socket, net.Server, dgram.Socket,
 * fs.promises.FileHandle and open fs streams; each goes through a real socket pair and is
 * checked on the far side by dev:ino and by using it (a TCP connection carries data to and
 * from the real peer, a handed-over listening socket accepts a real connection, a UDP
 * socket receives a real datagram, files are read and written). Handles without an fd are
 * refused with ERR_INVALID_ARG_VALUE and send nothing. `fdInfo` names each kind of fd, and
 * the helpers refuse a mismatch with ERR_INVALID_FD_TYPE, leaving the fd open and ours.
 * The examples that hand over live connections and servers run here as written.
 */
import test, { type ExecutionContext } from 'ava'
import { linuxSerialTest, linuxTest } from './platform.js'
import { spawn, type ChildProcess } from 'node:child_process'
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import {
  AsyncUnixStream,
  closeFd,
  fdInfo,
  FdSocket,
  toFd,
  toNetServer,
  toNetSocket,
  toReadStream,
  toWriteStream,
  UnixListener,
  UnixStream,
  type FdInfo,
  type FdLike,
} from '../index.js'
import {
  closeAll,
  fdFlags,
  fdIdentity,
  makeFifo,
  O_CLOEXEC,
  O_PATH,
  pathIdentity,
  readAt,
  ROOT,
  scaled,
  settledOpenFds,
  thrown,
  tmpDir,
  tmpFile,
  tmpSocketPath,
} from './helpers.js'
import { codeOf, oddSockets, onceEvent } from './async-helpers.js'

let baseline = 0
const children = new Set<ChildProcess>()

test.before(async () => {
  baseline = await settledOpenFds()
})

test.after.always('kill examples that are still running', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
})

test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})

/** A hang guard: `promise`, or a rejection once `budgetMs` (scaled by FDQ_TIME_SCALE) passed. */
function withTimeout<T>(promise: Promise<T>, budgetMs: number, what: string): Promise<T> {
  const ms = scaled(budgetMs)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

type Via = 'UnixStream' | 'AsyncUnixStream' | 'FdSocket'

/**
 * Sends `handles` through a fresh socket pair of kind `via` (enqueue each, then one write
 * of "!") and returns the fds dequeued on the far side, in order. Throws if anything but
 * exactly one byte with exactly `handles.length` fds arrives.
 */
async function transfer(via: Via, ...handles: FdLike[]): Promise<number[]> {
  const received: number[] = []
  const drain = (queue: { dequeue(): number | null }) => {
    for (let fd; (fd = queue.dequeue()) !== null;) received.push(fd)
  }
  if (via === 'UnixStream') {
    const [a, b] = UnixStream.pair()
    try {
      b.setReadTimeout(5000)
      for (const handle of handles) a.enqueue(handle)
      if (a.write('!') !== 1) throw new Error('short write')
      const buf = Buffer.alloc(16)
      if (b.read(buf) !== 1 || buf[0] !== 0x21) throw new Error('expected exactly the byte "!"')
      drain(b)
    } finally {
      a.close()
      b.close()
    }
  } else if (via === 'AsyncUnixStream') {
    const [a, b] = AsyncUnixStream.pair()
    try {
      for (const handle of handles) a.enqueue(handle)
      if ((await a.write('!')) !== 1) throw new Error('short write')
      const chunk = await withTimeout(b.read(16), 5000, 'read')
      if (chunk.toString() !== '!') throw new Error(`expected exactly "!", got ${JSON.stringify(chunk.toString())}`)
      drain(b)
    } finally {
      a.close()
      b.close()
    }
  } else {
    const [a, b] = FdSocket.pair()
    try {
      const data = once(b, 'data')
      for (const handle of handles) a.enqueue(handle)
      a.write('!')
      const [chunk] = await withTimeout(data, 5000, "'data'")
      if (chunk.toString() !== '!') throw new Error(`expected exactly "!", got ${JSON.stringify(chunk.toString())}`)
      drain(b)
    } finally {
      const closed = [once(a, 'close'), once(b, 'close')]
      a.destroy()
      b.destroy()
      await withTimeout(Promise.all(closed), 5000, "'close' of the pair")
    }
  }
  if (received.length !== handles.length) {
    closeAll(received)
    throw new Error(`expected ${handles.length} fds, got ${received.length}`)
  }
  return received
}

/** The one fd that `transfer` brings for `handle`, checked to be a new close-on-exec fd. */
async function transferOne(t: ExecutionContext, via: Via, handle: FdLike): Promise<number> {
  const original = toFd(handle)
  const [fd] = await transfer(via, handle)
  t.not(fd, original, 'a new fd, not the original number')
  t.is(fdFlags(fd) & O_CLOEXEC, O_CLOEXEC, 'received close-on-exec')
  t.is(fdIdentity(fd), fdIdentity(original), 'the same open socket or file (dev:ino)')
  return fd
}

/** The next line `socket` receives (without the newline). */
function readLine(socket: net.Socket, what = 'a line'): Promise<string> {
  let buffered = ''
  return withTimeout(
    new Promise<string>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        buffered += chunk.toString('utf8')
        const end = buffered.indexOf('\n')
        if (end >= 0) {
          socket.off('data', onData)
          socket.off('error', reject)
          socket.pause()
          resolve(buffered.slice(0, end))
        }
      }
      socket.on('data', onData)
      socket.once('error', reject)
      socket.resume()
    }),
    5000,
    what,
  )
}

function listen(server: net.Server, options: net.ListenOptions): Promise<void> {
  return withTimeout(
    new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(options, () => {
        server.off('error', reject)
        resolve()
      })
    }),
    5000,
    'listen',
  )
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

async function destroyAll(...sockets: Array<net.Socket | undefined>): Promise<void> {
  const closed = sockets
    .filter((s): s is net.Socket => s !== undefined && !s.closed)
    .map((s) => {
      const done = once(s, 'close')
      s.destroy()
      return done
    })
  await withTimeout(Promise.all(closed), 5000, "sockets' close")
}

/** A TCP server on 127.0.0.1 that does not read its connections, and one connection to it. */
async function tcpConnection(): Promise<{ server: net.Server; client: net.Socket; accepted: net.Socket }> {
  const server = net.createServer({ pauseOnConnect: true })
  await listen(server, { host: '127.0.0.1', port: 0 })
  const accepted = once(server, 'connection')
  const client = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port })
  await withTimeout(once(client, 'connect'), 5000, 'TCP connect')
  const [socket] = await withTimeout(accepted, 5000, 'TCP accept')
  return { server, client, accepted: socket as net.Socket }
}

// ---------------------------------------------------------------------------------------
// enqueue(handle): each kind of handle, through a real socket pair, used on the far side
// ---------------------------------------------------------------------------------------

test.serial(
  'toNetSocket of a TCP connection that was reset since: taken (no peer left), it gives the bytes that came first, then its end',
  async (t) => {
    const { server, client, accepted } = await tcpConnection()
    let adopted: net.Socket | undefined
    try {
      const fd = await transferOne(t, 'FdSocket', accepted)
      await destroyAll(accepted)
      client.write('sent before the reset\n')
      await new Promise<void>((resolve) => client.end(resolve))
      client.resetAndDestroy()
      // The reset arrives: the connection is over, and the socket has no peer any more.
      await withTimeout(
        (async () => {
          while (fdInfo(fd).connected) await sleep(5)
        })(),
        5000,
        'the reset',
      )
      adopted = toNetSocket(fd)
      const got: Buffer[] = []
      adopted.on('data', (chunk: Buffer) => got.push(chunk))
      const how = await withTimeout(
        new Promise<string>((resolve) => {
          adopted!.on('end', () => resolve('end'))
          adopted!.on('error', (error) => resolve(String(codeOf(error))))
        }),
        5000,
        'the end',
      )
      t.true(how === 'end' || how === 'ECONNRESET', how)
      if (how === 'end') t.is(Buffer.concat(got).toString(), 'sent before the reset\n')
    } finally {
      await destroyAll(adopted, client)
      await closeServer(server)
    }
  },
)

test.serial('net.Socket (TCP) via FdSocket: toNetSocket on the received fd talks to the real TCP peer', async (t) => {
  const { server, client, accepted } = await tcpConnection()
  let adopted: net.Socket | undefined
  try {
    const fd = await transferOne(t, 'FdSocket', accepted)
    t.like(fdInfo(fd), { fd, kind: 'tcp', family: 'ipv4', socketType: 'stream', listening: false })
    await destroyAll(accepted) // our own copy goes; the connection lives on in the received fd
    adopted = toNetSocket(fd)
    t.is(adopted.remotePort, client.localPort, 'the same connection: its peer is our client')
    t.is(adopted.localPort, (server.address() as net.AddressInfo).port)

    client.write('ping from the TCP client\n')
    t.is(await readLine(adopted, 'the client’s line'), 'ping from the TCP client')
    adopted.write('pong through the received fd\n')
    t.is(await readLine(client, 'the reply'), 'pong through the received fd')

    // The end travels too: the client sees the FIN of the adopted socket.
    const clientEnded = once(client, 'end')
    client.resume()
    adopted.end()
    await withTimeout(clientEnded, 5000, "the client's 'end'")
    t.pass()
  } finally {
    await destroyAll(adopted, client, accepted)
    await closeServer(server)
  }
})

test.serial('net.Socket (Unix, connecting side) via AsyncUnixStream: toNetSocket carries data both ways', async (t) => {
  const socketPath = tmpSocketPath()
  const server = net.createServer()
  await listen(server, { path: socketPath })
  const acceptedP = once(server, 'connection')
  const client = net.connect(socketPath)
  await withTimeout(once(client, 'connect'), 5000, 'Unix connect')
  const [accepted] = (await withTimeout(acceptedP, 5000, 'Unix accept')) as [net.Socket]
  let adopted: net.Socket | undefined
  try {
    const fd = await transferOne(t, 'AsyncUnixStream', client)
    t.like(fdInfo(fd), { kind: 'unix', family: 'unix', socketType: 'stream', listening: false })
    await destroyAll(client) // before the server writes: the old handle would read otherwise
    adopted = toNetSocket(fd)
    accepted.write('hello from the Unix server\n')
    t.is(await readLine(adopted), 'hello from the Unix server')
    adopted.write('answer through the received fd\n')
    t.is(await readLine(accepted), 'answer through the received fd')
  } finally {
    await destroyAll(adopted, accepted, client)
    await closeServer(server)
  }
})

test.serial(
  'net.Server (TCP, listening) via UnixStream: toNetServer on the received fd accepts a real connection',
  async (t) => {
    const original = net.createServer()
    await listen(original, { host: '127.0.0.1', port: 0 })
    const { port } = original.address() as net.AddressInfo
    let adopted: net.Server | undefined
    let client: net.Socket | undefined
    let served: net.Socket | undefined
    try {
      const fd = await transferOne(t, 'UnixStream', original)
      t.like(fdInfo(fd), { kind: 'tcp', family: 'ipv4', socketType: 'stream', listening: true })
      await closeServer(original) // closes the original fd; the listening socket lives on in ours
      adopted = await withTimeout(toNetServer(fd), 5000, 'toNetServer')
      t.is((adopted.address() as net.AddressInfo).port, port, 'the same port')

      const connection = once(adopted, 'connection')
      client = net.connect({ host: '127.0.0.1', port })
      await withTimeout(once(client, 'connect'), 5000, 'connect to the handed-over port')
      ;[served] = (await withTimeout(connection, 5000, 'the adopted server accepts')) as [net.Socket]
      client.write('request to the handed-over server\n')
      t.is(await readLine(served), 'request to the handed-over server')
      served.write('served by the adopted server\n')
      t.is(await readLine(client), 'served by the adopted server')
    } finally {
      await destroyAll(client, served)
      if (adopted) await closeServer(adopted) // closes the received fd
      if (original.listening) await closeServer(original)
    }
    // Nobody listens on that port any more.
    const refused = net.connect({ host: '127.0.0.1', port })
    const [error] = (await withTimeout(once(refused, 'error'), 5000, 'ECONNREFUSED')) as [NodeJS.ErrnoException]
    t.is(error.code, 'ECONNREFUSED')
    refused.destroy()
  },
)

test.serial(
  'dgram.Socket (bound) via FdSocket: bind({ fd }) adopts the received fd; datagrams go both ways',
  async (t) => {
    const original = dgram.createSocket('udp4')
    await withTimeout(new Promise<void>((resolve) => original.bind(0, '127.0.0.1', resolve)), 5000, 'bind')
    const { port } = original.address()
    const fd = await transferOne(t, 'FdSocket', original)
    t.like(fdInfo(fd), { kind: 'udp', family: 'ipv4', socketType: 'dgram', listening: false })
    // Close our own handle first, or its receive loop would take the datagram.
    await withTimeout(new Promise<void>((resolve) => original.close(resolve)), 5000, 'close')
    const adopted = dgram.createSocket('udp4')
    const peer = dgram.createSocket('udp4')
    try {
      await withTimeout(new Promise<void>((resolve) => adopted.bind({ fd }, resolve)), 5000, 'bind({ fd })')
      t.is(adopted.address().port, port, 'the same bound socket')
      await withTimeout(new Promise<void>((resolve) => peer.bind(0, '127.0.0.1', resolve)), 5000, 'bind the peer')

      const incoming = once(adopted, 'message')
      const payload = `datagram for the received fd ${Math.random()}`
      peer.send(payload, port, '127.0.0.1')
      const [message, rinfo] = (await withTimeout(incoming, 5000, 'the datagram')) as [Buffer, dgram.RemoteInfo]
      t.is(message.toString(), payload)
      t.is(rinfo.port, peer.address().port)

      const reply = once(peer, 'message')
      adopted.send('reply from the adopted socket', rinfo.port, '127.0.0.1')
      const [answer, from] = (await withTimeout(reply, 5000, 'the reply')) as [Buffer, dgram.RemoteInfo]
      t.is(answer.toString(), 'reply from the adopted socket')
      t.is(from.port, port)
    } finally {
      await new Promise<void>((resolve) => adopted.close(() => resolve()))
      peer.close()
    }
    t.throws(() => fs.fstatSync(fd), { code: 'EBADF' }, 'the adopting dgram.Socket owned the fd and closed it')
  },
)

test.serial('fs.promises.FileHandle via AsyncUnixStream: the file is read through the received fd', async (t) => {
  const text = `FileHandle content ${Math.random()}\n`
  const file = tmpFile(text)
  const handle = await fs.promises.open(file, 'r')
  let fd = -1
  try {
    fd = await transferOne(t, 'AsyncUnixStream', handle)
    t.is(fdIdentity(fd), pathIdentity(file))
    t.like(fdInfo(fd), { kind: 'file', readable: true, writable: false })
  } finally {
    await handle.close()
  }
  t.is(readAt(fd), text, 'still readable after the FileHandle closed')
  fs.closeSync(fd)
})

test.serial('fs.ReadStream (open) via UnixStream: toReadStream on the received fd reads the file', async (t) => {
  const text = `ReadStream content ${Math.random()}\n`.repeat(100)
  const file = tmpFile(text)
  const original = fs.createReadStream(file)
  await withTimeout(once(original, 'open'), 5000, "'open'")
  const fd = await transferOne(t, 'UnixStream', original)
  t.is(fdIdentity(fd), pathIdentity(file))
  original.destroy()
  await withTimeout(once(original, 'close'), 5000, "the original's 'close'")
  const stream = toReadStream(fd, { start: 0 })
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  t.is(Buffer.concat(chunks).toString('utf8'), text)
  if (!stream.closed) await withTimeout(once(stream, 'close'), 5000, "'close'")
  t.throws(() => fs.fstatSync(fd), { code: 'EBADF' }, 'toReadStream owned the fd and closed it')
})

test.serial('fs.WriteStream (open) via FdSocket: toWriteStream on the received fd writes the file', async (t) => {
  const file = path.join(tmpDir(), 'written')
  const original = fs.createWriteStream(file)
  await withTimeout(once(original, 'open'), 5000, "'open'")
  const fd = await transferOne(t, 'FdSocket', original)
  t.is(fdIdentity(fd), pathIdentity(file))
  original.write('first line by the original stream\n')
  original.end()
  await withTimeout(once(original, 'close'), 5000, "the original's 'close'")
  t.like(fdInfo(fd), { kind: 'file', readable: false, writable: true })
  const stream = toWriteStream(fd)
  stream.end('second line through the received fd\n')
  await withTimeout(once(stream, 'close'), 5000, "'close'")
  t.is(
    fs.readFileSync(file, 'utf8'),
    'first line by the original stream\nsecond line through the received fd\n',
    'the shared file offset: the second line follows the first',
  )
  t.throws(() => fs.fstatSync(fd), { code: 'EBADF' }, 'toWriteStream owned the fd and closed it')
})

// ---------------------------------------------------------------------------------------
// Handles with no fd
// ---------------------------------------------------------------------------------------

test.serial(
  'a handle with no fd (yet) is refused with ERR_INVALID_ARG_VALUE, on every class, and sends nothing',
  async (t) => {
    const file = tmpFile('x')
    const closedHandle = await fs.promises.open(file, 'r')
    await closedHandle.close()
    const destroyed = await tcpConnection()
    await destroyAll(destroyed.client, destroyed.accepted)
    await closeServer(destroyed.server)
    const unbound = dgram.createSocket('udp4')
    const streams: Array<fs.ReadStream | fs.WriteStream> = []
    /** fs streams open asynchronously: right after creation they have no fd yet. */
    const fresh = <S extends fs.ReadStream | fs.WriteStream>(stream: S): S => {
      streams.push(stream)
      return stream
    }
    const listening = net.createServer((accepted) => accepted.destroy())
    const listeningPath = tmpSocketPath()
    await new Promise<void>((resolve) => listening.listen(listeningPath, resolve))
    const connecting: net.Socket[] = []
    const cases: Array<[string, () => FdLike]> = [
      ['an unconnected new net.Socket()', () => new net.Socket()],
      // It has an fd already (a Unix socket's), but 'connect' has not come yet.
      ['a Unix net.Socket still connecting', () => connecting[connecting.push(net.connect(listeningPath)) - 1]],
      ['a destroyed net.Socket', () => destroyed.client],
      ['a net.Server that is not listening', () => net.createServer()],
      ['a closed net.Server', () => destroyed.server],
      ['an unbound dgram.Socket', () => unbound],
      ["an fs.ReadStream before 'open'", () => fresh(fs.createReadStream(file))],
      ["an fs.WriteStream before 'open'", () => fresh(fs.createWriteStream(path.join(tmpDir(), 'w')))],
      ['a closed FileHandle', () => closedHandle],
    ]
    // Settled counts: a destroyed FdSocket's native reader lets go of its (already shut
    // down) fd a moment after 'close', so an immediate count can be a few too high.
    const before = await settledOpenFds()
    for (const via of ['UnixStream', 'AsyncUnixStream', 'FdSocket'] as const) {
      for (const [label, make] of cases) {
        // transfer() enqueues synchronously, before it awaits anything.
        const error = await transfer(via, make()).then(
          (fds) => {
            closeAll(fds)
            return new Error(`no error: ${fds.length} fds arrived`)
          },
          (error: unknown) => error,
        )
        t.is((error as NodeJS.ErrnoException).code, 'ERR_INVALID_ARG_VALUE', `${via}: ${label}`)
        t.true(error instanceof TypeError, `${via}: ${label}: a TypeError`)
        t.regex((error as Error).message, /no fd/, `${via}: ${label}: says why`)
      }
      // And nothing was queued by a refused enqueue: the next write carries no fd.
      t.deepEqual(await transfer(via), [], `${via}: nothing left in the queue`)
    }
    for (const stream of streams) {
      if (!stream.closed) {
        const closed = once(stream, 'close')
        stream.destroy()
        await withTimeout(closed, 5000, 'stream close')
      }
    }
    unbound.close()
    await destroyAll(...connecting)
    t.is(await settledOpenFds(before), before, 'no fd was opened, duplicated or leaked by the refusals')
    await closeServer(listening)
  },
)

// ---------------------------------------------------------------------------------------
// fdInfo
// ---------------------------------------------------------------------------------------

test.serial('fdInfo names every kind of received fd, with its direction', async (t) => {
  const dir = tmpDir()
  const file = tmpFile('fdInfo', dir)
  const fifo = makeFifo()
  const [unixA, unixB] = UnixStream.pair()
  const unixListener = UnixListener.bind(tmpSocketPath())
  const { server: tcpServer, client: tcpClient, accepted: tcpAccepted } = await tcpConnection()
  const udp = dgram.createSocket('udp4')
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve))
  const own = {
    fileR: fs.openSync(file, 'r'),
    fileW: fs.openSync(file, 'a'),
    fileRW: fs.openSync(file, 'r+'),
    dir: fs.openSync(dir, 'r'),
    devNull: fs.openSync('/dev/null', 'r+'),
  }
  const rw = { readable: true, writable: true, listening: false, connected: false }
  const expected: Array<[string, number, Omit<FdInfo, 'fd' | 'closeOnExec' | 'nonBlocking'>]> = [
    [
      'regular file, read-only',
      own.fileR,
      { kind: 'file', readable: true, writable: false, listening: false, connected: false },
    ],
    [
      'regular file, write-only',
      own.fileW,
      { kind: 'file', readable: false, writable: true, listening: false, connected: false },
    ],
    ['regular file, read-write', own.fileRW, { kind: 'file', ...rw }],
    ['directory', own.dir, { kind: 'directory', readable: true, writable: false, listening: false, connected: false }],
    [
      'pipe, read end',
      fifo.readFd,
      { kind: 'pipe', readable: true, writable: false, listening: false, connected: false },
    ],
    [
      'pipe, write end',
      fifo.writeFd,
      { kind: 'pipe', readable: false, writable: true, listening: false, connected: false },
    ],
    ['Unix stream socket', unixA.fd, { kind: 'unix', ...rw, connected: true, family: 'unix', socketType: 'stream' }],
    [
      'Unix listening socket',
      unixListener.fd,
      { kind: 'unix', ...rw, listening: true, family: 'unix', socketType: 'stream' },
    ],
    [
      'TCP listening socket',
      toFd(tcpServer),
      { kind: 'tcp', ...rw, listening: true, family: 'ipv4', socketType: 'stream' },
    ],
    [
      'TCP connected socket',
      toFd(tcpAccepted),
      { kind: 'tcp', ...rw, connected: true, family: 'ipv4', socketType: 'stream' },
    ],
    ['UDP socket', toFd(udp), { kind: 'udp', ...rw, family: 'ipv4', socketType: 'dgram' }],
    ['/dev/null', own.devNull, { kind: 'character-device', ...rw }],
  ]
  let received: number[] = []
  try {
    received = await transfer('UnixStream', ...expected.map(([, fd]) => fd))
    for (const [i, [label, original, info]] of expected.entries()) {
      const fd = received[i]
      t.is(fdIdentity(fd), fdIdentity(original), `${label}: arrived in order`)
      // O_NONBLOCK belongs to the open file the two fds share; only the received one is
      // sure to be close-on-exec.
      const sent = fdInfo(original)
      t.deepEqual(
        fdInfo(fd),
        { fd, ...info, closeOnExec: true, nonBlocking: sent.nonBlocking },
        `${label}: received fd`,
      )
      t.deepEqual(
        sent,
        { fd: original, ...info, closeOnExec: sent.closeOnExec, nonBlocking: sent.nonBlocking },
        `${label}: original fd`,
      )
    }
  } finally {
    closeAll(received)
    closeAll(Object.values(own))
    fifo.close()
    unixA.close()
    unixB.close()
    unixListener.close()
    await destroyAll(tcpClient, tcpAccepted)
    await closeServer(tcpServer)
    udp.close()
  }
  const fd = fs.openSync('/dev/null', 'r')
  fs.closeSync(fd)
  t.is(thrown(() => fdInfo(fd)).code, 'EBADF', 'a closed fd')
  t.is(thrown(() => fdInfo('3' as unknown as number)).code, 'ERR_INVALID_ARG_TYPE')
  t.is(thrown(() => fdInfo(-1)).code, 'ERR_OUT_OF_RANGE')
})

test.serial('toNetSocket on a received pipe end takes its direction from the access mode', async (t) => {
  const fifo = makeFifo()
  const [readEnd] = await transfer('AsyncUnixStream', fifo.readFd)
  fs.closeSync(fifo.readFd)
  fifo.readFd = -1
  const socket = toNetSocket(readEnd)
  try {
    t.true(socket.readable)
    t.false(socket.writable, 'a read end is not writable')
    fs.writeSync(fifo.writeFd, 'through the pipe\n')
    t.is(await readLine(socket), 'through the pipe')
  } finally {
    await destroyAll(socket)
    fifo.close()
  }
  t.throws(() => fs.fstatSync(readEnd), { code: 'EBADF' }, 'destroy() closed the received fd')
})

// ---------------------------------------------------------------------------------------
// Mismatches: ERR_INVALID_FD_TYPE, and the fd stays open and ours
// ---------------------------------------------------------------------------------------

linuxTest('toNetSocket, toReadStream and toWriteStream refuse Unix stream sockets that never connected', async (t) => {
  // Made by Python (Node cannot make them): each would give a net.Socket that fails on
  // its first read or write (ENOTCONN, EPIPE) and has taken the fd meanwhile.
  const odd = await oddSockets(t)
  const unconnected: Array<[string, string]> = [
    ['an unconnected Unix stream socket', 'unconnected-unix-stream'],
    ['a bound, not listening, Unix stream socket', 'bound-not-listening-unix-stream'],
  ]
  const helpers: Array<[string, (fd: number) => unknown]> = [
    ['toNetSocket', (fd) => toNetSocket(fd)],
    ['toReadStream', (fd) => toReadStream(fd)],
    ['toWriteStream', (fd) => toWriteStream(fd)],
  ]
  for (const [label, name] of unconnected) {
    const fd = odd.get(name)!
    t.like(fdInfo(fd), { listening: false, connected: false, socketType: 'stream' }, label)
    for (const [helper, wrap] of helpers) {
      const before = fdIdentity(fd)
      const error = thrown(() => wrap(fd))
      t.is(error?.code, 'ERR_INVALID_FD_TYPE', `${helper}(${label})`)
      t.true(error instanceof TypeError)
      t.regex(error.message, /unconnected .* socket, not .*left open/, `${helper}(${label}): ${error.message}`)
      t.is(fdIdentity(fd), before, `${helper}(${label}): still open and ours`)
    }
  }
  // A TCP socket has no peer before it connects, nor once its connection is over, which
  // must still give what was left: TCP sockets that do not listen are taken.
  t.like(fdInfo(odd.get('tcp-unconnected')!), { kind: 'tcp', connected: false })
  const connected = odd.get('tcp-connected')!
  t.like(fdInfo(connected), { kind: 'tcp', connected: true })
  const socket = toNetSocket(connected)
  odd.delete('tcp-connected')
  socket.destroy()
  await onceEvent(socket, 'close')
})

linuxSerialTest('a helper given the wrong kind of fd throws ERR_INVALID_FD_TYPE and leaves the fd open', async (t) => {
  const dir = tmpDir()
  const file = tmpFile('not a socket\n', dir)
  const fifo = makeFifo()
  const [pairA, pairB] = UnixStream.pair()
  const { server: tcpServer, client: tcpClient, accepted: tcpAccepted } = await tcpConnection()
  const udp = dgram.createSocket('udp4')
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve))
  const fileFd = fs.openSync(file, 'r')
  const devNull = fs.openSync('/dev/null', 'r+')
  const dirFd = fs.openSync(dir, 'r')
  // O_PATH (Linux): names the file without opening it; a peer can send one.
  const pathFd = fs.openSync(file, O_PATH)
  type Attempt = (fd: number) => unknown
  const asNetSocket: Attempt = (fd) => toNetSocket(fd)
  const asNetServer: Attempt = (fd) => toNetServer(fd)
  const asReadStream: Attempt = (fd) => toReadStream(fd)
  const asWriteStream: Attempt = (fd) => toWriteStream(fd)
  const cases: Array<[string, number, string, Attempt]> = [
    ['a regular file open for reading only', fileFd, 'toNetSocket', asNetSocket],
    ['a directory', dirFd, 'toNetSocket', asNetSocket],
    ['a character device', devNull, 'toNetSocket', asNetSocket],
    ['a listening TCP socket', toFd(tcpServer), 'toNetSocket', asNetSocket],
    ['a UDP socket', toFd(udp), 'toNetSocket', asNetSocket],
    ['a connected TCP socket', toFd(tcpAccepted), 'toNetServer', asNetServer],
    ['a connected Unix stream socket', pairA.fd, 'toNetServer', asNetServer],
    ['a regular file open for reading only', fileFd, 'toNetServer', asNetServer],
    ['a UDP socket', toFd(udp), 'toNetServer', asNetServer],
    ['a listening TCP socket', toFd(tcpServer), 'toReadStream', asReadStream],
    ['a UDP socket', toFd(udp), 'toReadStream', asReadStream],
    ['a pipe open for writing only', fifo.writeFd, 'toReadStream', asReadStream],
    ['a directory', dirFd, 'toReadStream', asReadStream],
    ['a regular file open for reading only', fileFd, 'toWriteStream', asWriteStream],
    ['a pipe open for reading only', fifo.readFd, 'toWriteStream', asWriteStream],
    ['a listening TCP socket', toFd(tcpServer), 'toWriteStream', asWriteStream],
    ['an O_PATH fd', pathFd, 'toNetSocket', asNetSocket],
    ['an O_PATH fd', pathFd, 'toNetServer', asNetServer],
    ['an O_PATH fd', pathFd, 'toReadStream', asReadStream],
    ['an O_PATH fd', pathFd, 'toWriteStream', asWriteStream],
  ]
  const received = await transfer('FdSocket', ...cases.map(([, fd]) => fd))
  try {
    for (const [i, [label, original, helper, attempt]] of cases.entries()) {
      const fd = received[i]
      const identity = fdIdentity(original)
      t.is(fdIdentity(fd), identity)
      let error: any
      try {
        const result = attempt(fd)
        if (result instanceof Promise) await withTimeout(result, 5000, helper)
        // Should not get here; whatever was made now owns the fd, so do not close it twice.
        received[i] = -1
        t.fail(`${helper}(${label}) did not throw`)
        continue
      } catch (caught) {
        error = caught
      }
      t.is(error.code, 'ERR_INVALID_FD_TYPE', `${helper}(${label})`)
      t.true(error instanceof TypeError)
      t.regex(error.message, /left open/)
      t.true(error.message.startsWith(`fd ${fd} is ${label}, not `), `${helper}(${label}): ${error.message}`)
      t.is(fdIdentity(fd), identity, `${helper}(${label}): the fd is still open and still the same`)
    }
    // A failed toNetServer must not settle later either (for example by closing a server it made).
    await sleep(50)
    for (const [i, [label, original]] of cases.entries()) {
      if (received[i] >= 0) t.is(fdIdentity(received[i]), fdIdentity(original), `${label}: still open later`)
    }
  } finally {
    // We still own them: closing each exactly once must succeed.
    for (const fd of received) if (fd >= 0) fs.closeSync(fd)
  }
  // Never double-closed: fd numbers just freed are reused now, and nothing closes them behind our back.
  const reuse = received.filter((fd) => fd >= 0).map(() => fs.openSync('/dev/null', 'r'))
  const nullIdentity = pathIdentity('/dev/null')
  await sleep(50)
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc) gc()
  await sleep(50)
  t.true(
    reuse.every((fd) => fdIdentity(fd) === nullIdentity),
    'the reused fd numbers are still open',
  )
  closeAll(reuse)
  closeAll([fileFd, devNull, dirFd, pathFd])
  fifo.close()
  pairA.close()
  pairB.close()
  await destroyAll(tcpClient, tcpAccepted)
  await closeServer(tcpServer)
  udp.close()
})

// ---------------------------------------------------------------------------------------
// The examples, run as written
// ---------------------------------------------------------------------------------------

interface ExampleResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

function runExample(script: string, args: string[], timeoutMs = 60_000): Promise<ExampleResult> {
  const child = spawn(process.execPath, [path.join(ROOT, 'examples', script), ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const timer = setTimeout(() => child.kill('SIGKILL'), scaled(timeoutMs))
  return new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

test('examples/broker.mjs --self-test: two workers serve TCP connections handed over by the broker', async (t) => {
  const result = await runExample('broker.mjs', ['--self-test'])
  t.log(result.stdout.trim().split('\n').slice(-4).join('\n'))
  t.is(result.code, 0, `stdout: ${result.stdout}\nstderr: ${result.stderr}`)
  const summary = /^self-test: (\d+)\/(\d+) connections served, (\d+) failed; (.*); (\d+) open in the broker$/m.exec(
    result.stdout,
  )
  t.truthy(summary, result.stdout)
  if (!summary) return
  t.is(summary[1], '20')
  t.is(summary[2], '20')
  t.is(summary[3], '0')
  t.is(summary[5], '0', 'the broker closed its copy of every connection it handed over')
  const perWorker = [...summary[4].matchAll(/worker (\d+): (\d+)/g)].map((m) => ({ pid: m[1], count: Number(m[2]) }))
  t.is(perWorker.length, 2, 'two workers')
  t.not(perWorker[0].pid, perWorker[1].pid)
  t.true(
    perWorker.every((w) => w.count > 0),
    'both workers served connections',
  )
  t.is(
    perWorker.reduce((sum, w) => sum + w.count, 0),
    20,
  )
  // The replies really came from the worker processes, not from the broker.
  const brokerPid = /^broker (\d+) listening/m.exec(result.stdout)?.[1]
  t.truthy(brokerPid)
  t.false(
    perWorker.some((w) => w.pid === brokerPid),
    'no reply came from the broker itself',
  )
})

test('examples/zero-downtime.mjs --self-test: both listening sockets (TCP and fd-queue) move to a new process, 0 failed', async (t) => {
  const result = await runExample('zero-downtime.mjs', ['--self-test'])
  t.log(result.stdout.trim().split('\n').slice(-4).join('\n'))
  t.is(result.code, 0, `stdout: ${result.stdout}\nstderr: ${result.stderr}`)
  const summary = /^self-test: (\d+) requests, (\d+) failed, gen 1: (\d+), gen 2: (\d+)/m.exec(result.stdout)
  t.truthy(summary, result.stdout)
  if (!summary) return
  const [, total, failed, gen1, gen2] = summary.map(Number)
  t.is(failed, 0)
  t.regex(result.stdout, /\b0 failed\b/)
  t.true(gen1 > 0, 'the old process served before the switch')
  t.true(gen2 > 0, 'the new process served after it')
  t.is(gen1 + gen2, total)
  t.true(total >= 100)
  t.regex(result.stdout, /^gen 1 \(pid \d+\) handed over its listening socket/m)
  t.regex(result.stdout, /^gen 2 \(pid \d+\) adopted listening fd \d+ on 127\.0\.0\.1:\d+/m)
  t.regex(result.stdout, /^gen 1 \(pid \d+\) finished \d+ in-flight requests? and exited/m)
  // The fd-queue service listener moved too (setUnlinkOnClose(false) kept its path), and
  // keep-alive clients were moved over without a failure.
  t.regex(result.stdout, /^gen 2 \(pid \d+\) adopted service fd \d+ on \/.+\/service\.sock$/m)
  const service = /^self-test service: (\d+) connections, (\d+) failed, gen 1: (\d+), gen 2: (\d+)/m.exec(result.stdout)
  t.truthy(service, result.stdout)
  if (!service) return
  const [, connections, serviceFailed, service1, service2] = service.map(Number)
  t.is(serviceFailed, 0)
  t.true(service1 > 0 && service2 > 0, 'both generations answered service clients')
  t.is(service1 + service2, connections)
  t.regex(result.stdout, /^self-test keep-alive: [1-9]\d* requests on reused connections/m)
})

// ---------------------------------------------------------------------------------------
// O_PATH fds, streams that hold no threadpool thread, closing without Node's bookkeeping
// ---------------------------------------------------------------------------------------

linuxSerialTest('fdInfo of a received O_PATH fd: kind "path", neither readable nor writable (not EBADF)', async (t) => {
  const file = tmpFile('named, not opened')
  const original = fs.openSync(file, O_PATH)
  const [fd] = await transfer('AsyncUnixStream', original)
  fs.closeSync(original)
  const info = fdInfo(fd)
  t.is(info.kind, 'path')
  t.false(info.readable)
  t.false(info.writable)
  t.false(info.listening)
  t.is(fdIdentity(fd), pathIdentity(file), 'it names the file')
  closeFd(fd)
})

test.serial(
  'toReadStream/toWriteStream on a connected Unix socket: a net.Socket each way, fds closed by destroy',
  async (t) => {
    const [a, b] = UnixStream.pair()
    const [readSide, writeSide] = await transfer('UnixStream', a, b)
    a.close()
    b.close()
    const reader = toReadStream(readSide)
    const writer = toWriteStream(writeSide)
    t.true(reader instanceof net.Socket)
    t.true(writer instanceof net.Socket)
    let text = ''
    reader.setEncoding('utf8').on('data', (chunk: string) => (text += chunk))
    const ended = once(reader, 'end')
    // Listened for now: a write-only socket closes itself once it has finished, which may
    // come before the reader's 'end'.
    const writerClosed = new Promise((resolve) => writer.on('close', resolve))
    writer.end('through the socket')
    await withTimeout(ended, 10_000, 'end')
    t.is(text, 'through the socket')
    reader.destroy()
    await once(reader, 'close')
    await withTimeout(writerClosed, 10_000, "the writer's 'close'")
    t.throws(() => fs.fstatSync(readSide), { code: 'EBADF' })
    t.throws(() => fs.fstatSync(writeSide), { code: 'EBADF' })
  },
)

test('toReadStream on idle pipes holds no threadpool thread: fs calls still complete (UV_THREADPOOL_SIZE=4, 4 pipes)', async (t) => {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, '__test__', 'fixtures', 'threadpool.cjs'), tmpDir('fdq-tp-')],
    {
      cwd: ROOT,
      env: { ...process.env, UV_THREADPOOL_SIZE: '4' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  children.add(child)
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  // Before the fix the fs call waited forever for a thread; no wait here is close to that.
  const code = await withTimeout(
    new Promise<number | null>((resolve) => child.on('close', resolve)),
    120_000,
    'the child finishes (an fs call stuck behind 4 idle pipe reads would never finish)',
  )
  t.is(code, 0, stderr)
  const lines = stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line))
  t.deepEqual(lines, [
    { fsCall: 'done', kinds: ['pipe', 'pipe', 'pipe', 'pipe'] },
    { received: ['pipe-0', 'pipe-1', 'pipe-2', 'pipe-3'] },
  ])
})

test('closeFd closes a dequeued fd; EBADF when it is not open; bad numbers throw ERR_OUT_OF_RANGE / ERR_INVALID_ARG_TYPE', async (t) => {
  const fifo = makeFifo()
  const [fd] = await transfer('FdSocket', fifo.writeFd)
  fs.closeSync(fifo.writeFd)
  fifo.writeFd = -1
  t.true(fifo.isWriterOpen(), 'the received copy holds the pipe open')
  closeFd(fd)
  t.false(fifo.isWriterOpen(), 'closeFd closed it')
  t.is(thrown(() => closeFd(fd)).code, 'EBADF')
  t.is(thrown(() => closeFd(-1)).code, 'ERR_OUT_OF_RANGE')
  t.is(thrown(() => closeFd('3' as unknown as number)).code, 'ERR_INVALID_ARG_TYPE')
  fifo.close()
})

test('fdInfo reports close-on-exec and O_NONBLOCK as the kernel has them (on Linux, as /proc/self/fdinfo shows them)', async (t) => {
  const file = fs.openSync(tmpFile('flags'), 'r')
  const [blockingA, blockingB] = UnixStream.pair()
  const [asyncA, asyncB] = AsyncUnixStream.pair()
  try {
    t.like(fdInfo(file), { closeOnExec: true, nonBlocking: false }, 'a file Node opened')
    t.like(fdInfo(blockingA.fd), { closeOnExec: true, nonBlocking: false }, 'a blocking UnixStream')
    t.like(fdInfo(asyncA.fd), { closeOnExec: true, nonBlocking: true }, 'an AsyncUnixStream')
  } finally {
    fs.closeSync(file)
    for (const s of [blockingA, blockingB]) s.close()
    for (const s of [asyncA, asyncB]) await s.close()
  }
  // The independent account: a child compares fdInfo with /proc/self/fdinfo for its fds 0
  // to 3 (its stdio and a pipe spawn handed it). Both states of each flag are also set and
  // read back by the Rust unit tests of fd_info.
  if (process.platform !== 'linux') return
  const script = `
    const fs = require('node:fs')
    const { fdInfo } = require(${JSON.stringify(path.join(ROOT, 'index.js'))})
    const report = [0, 1, 2, 3].map((fd) => {
      const flags = parseInt(/^flags:\\s+([0-7]+)$/m.exec(fs.readFileSync('/proc/self/fdinfo/' + fd, 'utf8'))[1], 8)
      const info = fdInfo(fd)
      return { fd, info: [info.closeOnExec, info.nonBlocking], kernel: [(flags & 0o2000000) !== 0, (flags & fs.constants.O_NONBLOCK) !== 0] }
    })
    console.log(JSON.stringify(report))`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout!.on('data', (chunk) => (out += chunk))
  child.stderr!.on('data', (chunk) => (err += chunk))
  const [code] = await once(child, 'close')
  t.is(code, 0, err)
  const report: Array<{ fd: number; info: boolean[]; kernel: boolean[] }> = JSON.parse(out)
  for (const { fd, info, kernel } of report)
    t.deepEqual(info, kernel, `fd ${fd} of the child: [closeOnExec, nonBlocking]`)
})
