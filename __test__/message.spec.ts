/**
 * Message sockets (SPEC §9): SOCK_SEQPACKET and SOCK_DGRAM keep message boundaries, so the
 * fds of a message belong to that message alone. Every received fd is checked by dev:ino
 * and by reading through it, and for close-on-exec; every test leaves the fd count where
 * the file found it.
 */
import test from 'ava'
import { linuxTest, peerPid, seqpacketTest } from './platform.js'
import * as assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import * as vm from 'node:vm'
import {
  DatagramSocket,
  QueueFullError,
  SeqpacketListener,
  SeqpacketSocket,
  UnixListener,
  UnixStream,
  type Message,
} from '../index.js'
import {
  closeAll,
  copyOf,
  fdFlags,
  fdIdentity,
  makeFifo,
  O_CLOEXEC,
  pathIdentity,
  readAt,
  settledOpenFds,
  startFixture,
  lastJson,
  tmpDir,
  tmpFile,
  tmpSocketPath,
  runProcess,
} from './helpers.js'
import { checkNoFdLeaked, codeOf, jsonLines, rejection, syncThrow, withTimeout } from './async-helpers.js'

checkNoFdLeaked()

const files = (n: number) => {
  const dir = tmpDir('fdq-msg-')
  return Array.from({ length: n }, (_, i) => tmpFile(`file ${i}`, dir, `f${i}`))
}

/** Checks that `fds` are, in order, the files `expected` (by inode and content), close-on-exec; closes them. */
function checkAndClose(t: any, fds: number[], expected: string[]): void {
  try {
    t.deepEqual(
      fds.map((fd) => fdIdentity(fd)),
      expected.map((file) => pathIdentity(file)),
    )
    for (const [i, fd] of fds.entries()) {
      t.is(readAt(fd), fs.readFileSync(expected[i], 'utf8'))
      t.truthy(fdFlags(fd) & O_CLOEXEC, `fd ${fd} is close-on-exec`)
    }
  } finally {
    closeAll(fds)
  }
}

async function sendFiles(send: (fds: number[]) => Promise<number>, list: string[]): Promise<number> {
  const fds = list.map((file) => fs.openSync(file, 'r'))
  try {
    return await send(fds)
  } finally {
    closeAll(fds)
  }
}

// macOS has no SOCK_SEQPACKET Unix sockets (see platform.ts): there, datagrams only.
const KINDS = (
  [
    ['SeqpacketSocket', () => SeqpacketSocket.pair()],
    ['DatagramSocket', () => DatagramSocket.pair()],
  ] as const
).filter(([kind]) => process.platform !== 'darwin' || kind === 'DatagramSocket')

for (const [kind, pair] of KINDS) {
  test(`${kind}: each message keeps its boundaries and exactly its own fds, close-on-exec`, async (t) => {
    const [a, b] = pair()
    const list = files(4)
    try {
      // Message i carries files 0..i; sent back to back, before any receive.
      for (let i = 0; i < list.length; i++) {
        t.is(await sendFiles((fds) => a.send(`msg${i}`, fds), list.slice(0, i + 1)), 4)
      }
      await a.send('no fds')
      for (let i = 0; i < list.length; i++) {
        const message = (await b.receive())!
        t.is(message.data.toString(), `msg${i}`)
        t.false(message.truncated)
        t.is(message.from, undefined, 'a pair is unnamed')
        checkAndClose(t, message.fds, list.slice(0, i + 1))
      }
      const last = (await b.receive())!
      t.deepEqual([last.data.toString(), last.fds], ['no fds', []])
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: a message with fds is a plain object: deepStrictEqual to a literal, its fds carried by a spread, structuredClone, a Proxy; replaced unread, closed`, async (t) => {
    const [a, b] = pair()
    const list = files(2)
    try {
      await sendFiles((fds) => a.send('two', fds), list)
      const message = (await b.receive())!
      t.deepEqual(Object.keys(message), ['data', 'fds', 'truncated'])
      const { fds } = { ...message }
      t.is(fds.length, 2)
      t.is(message.fds, fds, 'the same array every time')
      assert.deepStrictEqual(message, { data: Buffer.from('two'), fds, truncated: false })
      t.deepEqual(structuredClone(message).fds, fds)
      t.is(JSON.parse(JSON.stringify(message)).fds.length, 2)
      checkAndClose(t, fds, list)
      message.fds = [] // settable, as a data property is
      t.deepEqual(message.fds, [])

      // Read through a Proxy of the message, or an object made from it: the same fds.
      await sendFiles((fds) => a.send('proxied', fds), list)
      const proxied = (await b.receive())!
      t.is(new Proxy(proxied, {}).fds, Object.create(proxied).fds)
      checkAndClose(t, proxied.fds, list)

      // Replaced before any code read them: nobody has their numbers, so they are closed
      // (the FIFO's write end travels: once no copy is open, its read end sees the end).
      const fifo = makeFifo()
      try {
        await a.send('replaced', [fifo.writeFd, fifo.writeFd])
        fs.closeSync(fifo.writeFd)
        fifo.writeFd = -1
        const replaced = (await b.receive())!
        t.true(fifo.isWriterOpen(), 'the message holds the copies')
        replaced.fds = []
        t.false(fifo.isWriterOpen(), 'and closes them when they are replaced unread')
      } finally {
        fifo.close()
      }
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: a zero-byte message with fds arrives as its own message`, async (t) => {
    const [a, b] = pair()
    const [file] = files(1)
    try {
      t.is(await sendFiles((fds) => a.send('', fds), [file]), 0)
      await a.send('after')
      const empty = (await b.receive())!
      t.is(empty.data.length, 0)
      checkAndClose(t, empty.fds, [file])
      t.is((await b.receive())!.data.toString(), 'after')
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: 253 fds in one message arrive in order; 254 throw QueueFullError and send nothing`, async (t) => {
    const [a, b] = pair()
    const [file] = files(1)
    const fd = fs.openSync(file, 'r')
    try {
      const error = syncThrow(() => a.send('too many', new Array(254).fill(fd)))
      t.true(error instanceof QueueFullError, String(error))
      t.is(error.code, 'ERR_FD_QUEUE_FULL')
      await a.send('253', new Array(253).fill(fd))
      const message = (await b.receive())!
      t.is(message.data.toString(), '253', 'the refused send sent nothing')
      t.is(message.fds.length, 253)
      t.is(new Set(message.fds).size, 253, 'each a distinct fd')
      checkAndClose(t, message.fds, new Array(253).fill(file))
    } finally {
      fs.closeSync(fd)
      a.close()
      b.close()
    }
  })

  test(`${kind}: enqueue()d fds ride on the next send, and only on it`, async (t) => {
    const [a, b] = pair()
    const list = files(3)
    try {
      for (const file of list.slice(0, 2)) {
        const fd = fs.openSync(file, 'r')
        a.enqueue(fd)
        fs.closeSync(fd) // enqueue duplicated it
      }
      await sendFiles((fds) => a.send('first', fds), [list[2]])
      await a.send('second')
      const first = (await b.receive())!
      t.is(first.data.toString(), 'first')
      checkAndClose(t, first.fds, [list[0], list[1], list[2]])
      t.deepEqual((await b.receive())!.fds, [])
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: receives settle in call order; close() settles a pending receive with ERR_SOCKET_CLOSED`, async (t) => {
    const [a, b] = pair()
    try {
      const pending = [b.receive(), b.receive(), b.receive()]
      for (const word of ['one', 'two', 'three']) await a.send(word)
      t.deepEqual(
        (await Promise.all(pending)).map((m) => m!.data.toString()),
        ['one', 'two', 'three'],
      )
      const waiting = b.receive()
      b.close()
      t.is(codeOf(await rejection(waiting)), 'ERR_SOCKET_CLOSED')
      t.is(codeOf(await rejection(b.receive())), 'ERR_SOCKET_CLOSED')
      t.is(b.fd, -1)
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: an aborted receive() takes nothing: the message and its fds go to the next one`, async (t) => {
    const [a, b] = pair()
    const [file] = files(1)
    try {
      const controller = new AbortController()
      const aborted = b.receive({ signal: controller.signal })
      controller.abort()
      const error = await rejection(aborted)
      t.is(error.name, 'AbortError')
      t.is(error.code, 'ABORT_ERR')
      await sendFiles((fds) => a.send('kept', fds), [file])
      const message = (await b.receive())!
      t.is(message.data.toString(), 'kept')
      checkAndClose(t, message.fds, [file])
      const already = AbortSignal.abort()
      t.is((await rejection(b.receive({ signal: already }))).name, 'AbortError')
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: maxQueuedFds bounds the fds of messages whose fds no code read: at it, receive waits until fds are read or replaced; nothing is cut`, async (t) => {
    const [a, b] = pair()
    const list = files(3)
    try {
      t.is(b.maxQueuedFds, 1024)
      b.maxQueuedFds = 4
      t.is(b.maxQueuedFds, 4)
      for (let i = 0; i < 4; i++) await sendFiles((fds) => a.send(`m${i}`, fds), list)
      const first = (await b.receive())!
      // 3 unread, below the bound: one more message may come (and go past it).
      const second = (await b.receive())!
      /** A receive that must not settle before the event loop turned: nothing else can make room. */
      const waiting = async (what: string) => {
        let message: Message | null = null
        const receiving = b.receive().then((m) => (message = m!))
        await new Promise((resolve) => setTimeout(resolve, 50))
        t.is(message, null, `${what} waits while 6 fds wait unread`)
        // In an object: an async function's Promise would wait for it.
        return { receiving }
      }
      const third = await waiting('the third')
      // Read: 3 wait, below the bound again.
      checkAndClose(t, first.fds, list)
      t.like(await third.receiving, { truncated: false, data: Buffer.from('m2') })
      const fourth = await waiting('the fourth')
      // Replaced unread: closed, and their room free.
      second.fds = []
      t.like(await fourth.receiving, { truncated: false, data: Buffer.from('m3') })
      checkAndClose(t, (await third.receiving).fds, list)
      checkAndClose(t, (await fourth.receiving).fds, list)
      t.is(syncThrow(() => (b.maxQueuedFds = 0)).code, 'ERR_OUT_OF_RANGE')
      t.is(syncThrow(() => (b.maxQueuedFds = '8' as any)).code, 'ERR_INVALID_ARG_TYPE')
      b.close()
      t.is(syncThrow(() => (b.maxQueuedFds = 8)).code, 'ERR_SOCKET_CLOSED')
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: a receive waiting at maxQueuedFds gets room when the message holding it is dropped: the collector is asked again while it waits`, async (t) => {
    const [a, b] = pair()
    const list = files(2)
    try {
      b.maxQueuedFds = 2
      for (let i = 0; i < 2; i++) await sendFiles((fds) => a.send(`m${i}`, fds), list)
      const box: { held: Message | null } = { held: await b.receive() }
      // Asked at the call, the collector finds the first message still held.
      const waiting = b.receive()
      await new Promise((resolve) => setImmediate(resolve))
      box.held = null
      const next = (await waiting)!
      t.false(next.truncated, 'room came from the collection, not from taking what fits')
      checkAndClose(t, next.fds, list)
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: a receiver that holds the message it got while it waits for the next (for await), at maxQueuedFds, is not hung: the next takes the fds that fit`, async (t) => {
    const [a, b] = pair()
    try {
      b.maxQueuedFds = 10
      const devNull = fs.openSync('/dev/null', 'r')
      try {
        for (let i = 0; i < 4; i++) await a.send(`m${i}`, Array(10).fill(devNull))
      } finally {
        fs.closeSync(devNull)
      }
      // The loop's variable holds each message while the next is received (and `got` holds
      // them all, so m0's 10 unread fds fill the bound throughout): no collection frees them.
      const got: Message[] = []
      for await (const message of b) {
        got.push(message)
        if (got.length === 4) break
      }
      t.deepEqual(
        got.map((m) => [m.data.toString(), m.truncated]),
        [
          ['m0', false],
          ['m1', true],
          ['m2', true],
          ['m3', true],
        ],
      )
      // Read: m0's fds are ours now, the others have none.
      closeAll(got.flatMap((m) => m.fds))
    } finally {
      a.close()
      b.close()
    }
  })

  test(`${kind}: receives pending together, each message's fds read as it settles, the JS thread busy for 1 s first: all 253 × 8 fds arrive, none cut (maxQueuedFds 1024)`, async (t) => {
    const [a, b] = pair()
    try {
      const devNull = fs.openSync('/dev/null', 'r')
      const expected = fdIdentity(devNull)
      let got = 0
      let truncated = 0
      const receives = Array.from({ length: 8 }, () =>
        b.receive().then((m) => {
          if (m!.truncated) truncated++
          for (const fd of m!.fds) {
            t.deepEqual(fdIdentity(fd), expected)
            fs.closeSync(fd)
            got++
          }
        }),
      )
      try {
        for (let i = 0; i < 8; i++) await a.send(`m${i}`, Array(253).fill(devNull))
      } finally {
        fs.closeSync(devNull)
      }
      // Busy for longer than a receive waits for room: under the threads driver the
      // messages come in meanwhile, and the code that reads their fds cannot run. The wait
      // counts only while this thread runs, so nothing is cut.
      for (const until = Date.now() + 1000; Date.now() < until;);
      await Promise.all(receives)
      t.is(got, 8 * 253)
      t.is(truncated, 0)
    } finally {
      a.close()
      b.close()
    }
  })

  // Serial: it counts this process's fds, which concurrent tests would move.
  test.serial(`${kind}: close() with fds enqueued closes them and the socket`, async (t) => {
    const [a, b] = pair()
    const [file] = files(1)
    const fd = fs.openSync(file, 'r')
    const before = await settledOpenFds()
    a.enqueue(fd)
    a.enqueue(fd)
    t.is(await settledOpenFds(), before + 2, 'two duplicates queued')
    a.close()
    t.is(await settledOpenFds(), before - 1, 'the socket and both duplicates closed')
    fs.closeSync(fd)
    // The peer never sees them: a seqpacket peer reads the end at once.
    if (kind === 'SeqpacketSocket') t.is(await b.receive(), null)
    b.close()
  })
}

seqpacketTest('SeqpacketSocket: a 200 KiB message arrives whole in one receive, not truncated', async (t) => {
  const [a, b] = SeqpacketSocket.pair()
  try {
    const big = Buffer.alloc(200 * 1024)
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251
    const receiving = b.receive()
    t.is(await a.send(big), big.length)
    const message = (await receiving)!
    t.false(message.truncated)
    t.is(message.data.length, big.length)
    t.true(message.data.equals(big))
  } finally {
    a.close()
    b.close()
  }
})

seqpacketTest('SeqpacketSocket: the peer closing ends receive() with null, and async iteration ends', async (t) => {
  const [a, b] = SeqpacketSocket.pair()
  const [c, d] = SeqpacketSocket.pair()
  try {
    const pending = b.receive()
    a.close()
    t.is(await pending, null)
    t.is(await b.receive(), null, 'and again')
    for (const word of ['x', 'y']) await c.send(word)
    c.close()
    const seen: string[] = []
    for await (const message of d) seen.push(message.data.toString())
    t.deepEqual(seen, ['x', 'y'])
  } finally {
    for (const s of [a, b, c, d]) s.close()
  }
})

seqpacketTest('SeqpacketListener: accept(), async iteration, peerCredentials(), unlink on close', async (t) => {
  const socketPath = tmpSocketPath()
  const listener = SeqpacketListener.bind(socketPath)
  t.is(listener.path, socketPath)
  t.true(fs.statSync(socketPath).isSocket())
  const [file] = files(1)
  const accepted = listener.accept()
  const client = await SeqpacketSocket.connect(socketPath)
  const server = await accepted
  try {
    t.true(server instanceof SeqpacketSocket)
    t.like(server.peerCredentials(), { pid: peerPid(process.pid), uid: process.getuid!(), gid: process.getgid!() })
    t.like(client.peerCredentials(), { pid: peerPid(process.pid) })
    await sendFiles((fds) => client.send('request', fds), [file])
    const request = (await server.receive())!
    t.is(request.data.toString(), 'request')
    checkAndClose(t, request.fds, [file])
    await server.send('reply')
    t.is((await client.receive())!.data.toString(), 'reply')

    // Iteration yields each connection until the listener closes.
    const clients = await Promise.all([1, 2, 3].map(() => SeqpacketSocket.connect(socketPath)))
    const served: SeqpacketSocket[] = []
    for await (const connection of listener) {
      served.push(connection)
      if (served.length === 3) listener.close()
    }
    t.is(served.length, 3)
    for (const s of [...clients, ...served]) s.close()
    t.false(fs.existsSync(socketPath), 'close() removed the socket file')
    t.is(codeOf(await rejection(listener.accept())), 'ERR_SOCKET_CLOSED')
  } finally {
    client.close()
    server.close()
    listener.close()
  }
})

linuxTest(
  'SeqpacketListener: an abstract address; a pending accept() settles on close(); { signal } aborts it',
  async (t) => {
    const name = `\0fdq-sp-${process.pid}-${Date.now()}`
    const listener = SeqpacketListener.bind(name)
    try {
      t.is(listener.path, name)
      const client = await SeqpacketSocket.connect(name)
      const server = await listener.accept()
      await client.send('abstract')
      t.is((await server.receive())!.data.toString(), 'abstract')
      client.close()
      server.close()
      const controller = new AbortController()
      const aborted = listener.accept({ signal: controller.signal })
      controller.abort()
      t.is((await rejection(aborted)).name, 'AbortError')
      const pending = listener.accept()
      listener.close()
      t.is(codeOf(await rejection(pending)), 'ERR_SOCKET_CLOSED')
    } finally {
      listener.close()
    }
  },
)

seqpacketTest(
  'SeqpacketSocket.connect(): ENOENT and ECONNREFUSED name the path; a stream listener is EPROTOTYPE or ECONNREFUSED',
  async (t) => {
    const missing = path.join(tmpDir(), 'none.sock')
    const error = await rejection(SeqpacketSocket.connect(missing))
    t.is(error.code, 'ENOENT')
    t.is(error.syscall, 'connect')
    t.is(error.path, missing)
    const streamPath = tmpSocketPath()
    const stream = UnixListener.bind(streamPath)
    try {
      const wrongKind = await rejection(SeqpacketSocket.connect(streamPath))
      t.true(['EPROTOTYPE', 'ECONNREFUSED'].includes(wrongKind.code), wrongKind.code)
    } finally {
      stream.close()
    }
  },
)

test('DatagramSocket: bind(path) receives from a bound sender (from = its path) and an unbound one (no from)', async (t) => {
  const dir = tmpDir('fdq-dg-')
  const serverPath = path.join(dir, 'server')
  const clientPath = path.join(dir, 'client')
  const server = DatagramSocket.bind(serverPath)
  const named = DatagramSocket.bind(clientPath)
  const anonymous = DatagramSocket.bind()
  const [file] = files(1)
  try {
    t.is(server.path, serverPath)
    t.is(anonymous.path, '')
    await sendFiles((fds) => named.sendTo(serverPath, 'from named', fds), [file])
    await anonymous.sendTo(serverPath, 'from anonymous')
    const first = (await server.receive())!
    t.is(first.data.toString(), 'from named')
    t.is(first.from, clientPath)
    checkAndClose(t, first.fds, [file])
    const second = (await server.receive())!
    t.is(second.data.toString(), 'from anonymous')
    t.is(second.from, undefined)
    // A reply to `from`.
    await server.sendTo(first.from!, 'reply')
    t.is((await named.receive())!.from, serverPath)
    // connect(): send() without a destination.
    anonymous.connect(serverPath)
    await anonymous.send('connected')
    t.is((await server.receive())!.data.toString(), 'connected')
  } finally {
    server.close()
    named.close()
    anonymous.close()
  }
  t.false(fs.existsSync(serverPath), 'close() removes the socket file it bound')
  t.false(fs.existsSync(clientPath))
})

linuxTest(
  'DatagramSocket: setUnlinkOnClose(false) keeps the file; an abstract name works; fromFd adopts a bound socket',
  async (t) => {
    const socketPath = tmpSocketPath()
    const kept = DatagramSocket.bind(socketPath).setUnlinkOnClose(false)
    kept.close()
    t.true(fs.statSync(socketPath).isSocket(), 'the file stays')
    fs.unlinkSync(socketPath)

    const name = `\0fdq-dg-${process.pid}-${Date.now()}`
    const server = DatagramSocket.bind(name)
    const sender = DatagramSocket.bind()
    try {
      await sender.sendTo(name, 'to abstract')
      t.is((await server.receive())!.data.toString(), 'to abstract')
      // Another holder's copy of the bound socket (as listenFds or a peer would hand it over).
      const copy = copyOf(server)
      const adopted = DatagramSocket.fromFd(copy)
      t.is(adopted.fd, copy)
      await sender.sendTo(name, 'to the adopted copy')
      t.is((await adopted.receive())!.data.toString(), 'to the adopted copy')
      adopted.close()
    } finally {
      server.close()
      sender.close()
    }
  },
)

linuxTest(
  'DatagramSocket: a sender named with bytes that are not UTF-8 comes as a Buffer; sendTo() and connect() take it back',
  async (t) => {
    // A string would have them replaced (U+FFFD), naming another socket or none.
    const dir = tmpDir('fdq-dg-bytes-')
    const receiverPath = path.join(dir, 'r')
    const receiver = DatagramSocket.bind(receiverPath)
    const script = [
      'import json, os, socket, sys',
      "names = [b'\\0fdq-\\xff-' + str(os.getpid()).encode(), os.fsencode(sys.argv[2]) + b'/s-\\xfe']",
      'got = []',
      'for name in names:',
      '    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
      '    s.bind(name)',
      '    s.settimeout(20)',
      "    s.sendto(b'ping', sys.argv[1])",
      '    got.append([s.recv(16).decode(), s.recv(16).decode(), name.hex()])',
      '    s.close()',
      'print(json.dumps(got))',
    ].join('\n')
    const python = runProcess('python3', ['-c', script, receiverPath, dir], { timeoutMs: 30_000 })
    try {
      const senders: string[] = []
      for (let i = 0; i < 2; i++) {
        const message = (await receiver.receive())!
        t.is(message.data.toString(), 'ping')
        t.true(Buffer.isBuffer(message.from), 'the bytes, not a string')
        senders.push((message.from as Buffer).toString('hex'))
        await receiver.sendTo(message.from!, 'pong')
        // And through a socket connected to it.
        const replier = DatagramSocket.bind()
        try {
          replier.connect(message.from!)
          await replier.send('pong again')
        } finally {
          replier.close()
        }
      }
      const result = await python
      t.is(result.status, 0, result.stderr)
      const got: Array<[string, string, string]> = JSON.parse(result.stdout)
      t.deepEqual(
        got.map(([reply, again]) => [reply, again]),
        [
          ['pong', 'pong again'],
          ['pong', 'pong again'],
        ],
      )
      t.deepEqual(
        senders,
        got.map(([, , name]) => name),
        'from is the name byte for byte',
      )
      t.is(codeOf(syncThrow(() => receiver.sendTo(Buffer.alloc(0), 'x'))), 'ERR_INVALID_ARG_VALUE')
      t.is(codeOf(syncThrow(() => receiver.sendTo(Buffer.from('a\0b'), 'x'))), 'ERR_INVALID_ARG_VALUE')
      // An object made from Uint8Array's prototype is no address; one from another realm is.
      const fake = Object.create(Uint8Array.prototype) as Uint8Array
      t.is(codeOf(syncThrow(() => receiver.sendTo(fake, 'x'))), 'ERR_INVALID_ARG_TYPE')
      const inRealm = vm.runInNewContext('(bytes) => new Uint8Array(bytes)') as (bytes: number[]) => Uint8Array
      const foreign = inRealm([...Buffer.from(receiverPath)])
      t.false(foreign instanceof Uint8Array)
      await receiver.sendTo(foreign, 'to itself')
      t.is(String((await withTimeout(receiver.receive(), 5000, 'its own message'))?.data), 'to itself')
    } finally {
      receiver.close()
    }
  },
)

test('DatagramSocket: sendTo() a missing path rejects ENOENT with the path; one that is not listening ECONNREFUSED', async (t) => {
  const sender = DatagramSocket.bind()
  const missing = path.join(tmpDir(), 'gone')
  try {
    const error = await rejection(sender.sendTo(missing, 'x'))
    t.is(error.code, 'ENOENT')
    t.is(error.path, missing)
    const stale = tmpSocketPath()
    DatagramSocket.bind(stale).setUnlinkOnClose(false).close()
    t.is(codeOf(await rejection(sender.sendTo(stale, 'x'))), 'ECONNREFUSED')
    fs.unlinkSync(stale)
    t.is(codeOf(syncThrow(() => sender.connect(missing))), 'ENOENT')
  } finally {
    sender.close()
  }
})

linuxTest(
  'DatagramSocket: sends to a receiver whose queue is full wait for room; none is lost and fds stay with their message',
  async (t) => {
    const receiverPath = tmpSocketPath()
    const receiver = DatagramSocket.bind(receiverPath)
    const sender = DatagramSocket.bind()
    const [file] = files(1)
    const fd = fs.openSync(file, 'r')
    try {
      const count = 600 // far past net.unix.max_dgram_qlen (10 by default)
      const sends = Array.from({ length: count }, (_, i) =>
        sender.sendTo(receiverPath, `m${i}`, i % 50 === 0 ? [fd] : []),
      )
      const got: Message[] = []
      while (got.length < count) got.push((await receiver.receive())!)
      await Promise.all(sends)
      t.deepEqual(
        got.map((m) => m.data.toString()),
        Array.from({ length: count }, (_, i) => `m${i}`),
      )
      for (const [i, m] of got.entries()) {
        t.is(m.fds.length, i % 50 === 0 ? 1 : 0, `message ${i}`)
        checkAndClose(t, m.fds, m.fds.length ? [file] : [])
      }
    } finally {
      fs.closeSync(fd)
      receiver.close()
      sender.close()
    }
  },
)

seqpacketTest('fromFd() checks the kind: ERR_INVALID_FD_TYPE, and the fd stays open and the caller’s', (t) => {
  const [s1, s2] = UnixStream.pair()
  const [q1, q2] = SeqpacketSocket.pair()
  const [d1, d2] = DatagramSocket.pair()
  const file = fs.openSync(files(1)[0], 'r')
  try {
    const cases: [string, () => unknown, number][] = [
      ['SeqpacketSocket.fromFd(stream)', () => SeqpacketSocket.fromFd(s1.fd), s1.fd],
      ['SeqpacketSocket.fromFd(datagram)', () => SeqpacketSocket.fromFd(d1.fd), d1.fd],
      ['DatagramSocket.fromFd(seqpacket)', () => DatagramSocket.fromFd(q1.fd), q1.fd],
      ['SeqpacketListener.fromFd(connected seqpacket)', () => SeqpacketListener.fromFd(q1.fd), q1.fd],
      ['SeqpacketSocket.fromFd(file)', () => SeqpacketSocket.fromFd(file), file],
      ['DatagramSocket.fromFd(file)', () => DatagramSocket.fromFd(file), file],
    ]
    for (const [what, call, fd] of cases) {
      const error = syncThrow(call)
      t.is(codeOf(error), 'ERR_INVALID_FD_TYPE', `${what}: ${error}`)
      t.true(error instanceof TypeError, `${what}: a TypeError`)
      t.notThrows(() => fs.fstatSync(fd), `${what} left the fd open`)
    }
    t.is(codeOf(syncThrow(() => SeqpacketSocket.fromFd(-1))), 'ERR_OUT_OF_RANGE')
    t.is(codeOf(syncThrow(() => DatagramSocket.fromFd(1.5 as any))), 'ERR_OUT_OF_RANGE')
  } finally {
    fs.closeSync(file)
    for (const s of [s1, s2, q1, q2, d1, d2]) s.close()
  }
})

seqpacketTest('bad input is a typed error before anything is sent', async (t) => {
  const [a, b] = SeqpacketSocket.pair()
  const [c, d] = DatagramSocket.pair()
  try {
    t.is(codeOf(syncThrow(() => a.send(42 as any))), 'ERR_INVALID_ARG_TYPE')
    t.is(codeOf(syncThrow(() => a.send('x', 3 as any))), 'ERR_INVALID_ARG_TYPE')
    t.is(codeOf(syncThrow(() => a.send('x', [-1]))), 'ERR_OUT_OF_RANGE')
    t.is(codeOf(syncThrow(() => a.send('x', ['3' as any]))), 'ERR_INVALID_ARG_TYPE')
    t.is(codeOf(syncThrow(() => a.receive({ signal: 'no' as any }))), 'ERR_INVALID_ARG_TYPE')
    t.is(codeOf(syncThrow(() => a.enqueue(-5))), 'ERR_OUT_OF_RANGE')
    t.is(codeOf(syncThrow(() => c.sendTo(7 as any, 'x'))), 'ERR_INVALID_ARG_TYPE')
    t.is(codeOf(syncThrow(() => c.sendTo('x'.repeat(200), 'x'))), 'ERR_INVALID_ARG_VALUE')
    t.is(codeOf(syncThrow(() => DatagramSocket.bind(5 as any))), 'ERR_INVALID_ARG_TYPE')
    t.is(codeOf(syncThrow(() => SeqpacketListener.bind(''))), 'ERR_INVALID_ARG_VALUE')
    t.is(codeOf(syncThrow(() => new (SeqpacketSocket as any)())), 'ERR_ILLEGAL_CONSTRUCTOR')
    a.close()
    t.is(codeOf(syncThrow(() => b.enqueue(a))), 'ERR_INVALID_ARG_VALUE', 'a closed socket holds no fd')
    t.is(codeOf(await rejection(a.send('closed'))), 'ERR_SOCKET_CLOSED')
    t.is(await b.receive(), null, 'nothing was sent by any refused call')
  } finally {
    for (const s of [a, b, c, d]) s.close()
  }
})

// ---------------------------------------------------------------------------------------
// Interop: a Python peer on the stdlib's socket.sendmsg / recvmsg (interop/message_peer.py).

const PEER = path.join(path.dirname(new URL(import.meta.url).pathname), 'interop', 'message_peer.py')

/** Runs the Python peer; `line(match)` waits for a JSON line of its stdout. */
function python(args: string[]) {
  return jsonLines(spawn('python3', [PEER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }))
}

/** What the Python sender sends for `list`: message i with files 0..i, a zero-byte one with file 0, "END". */
async function checkFromPython(t: any, next: () => Promise<Message | null>, list: string[], from?: string) {
  for (let i = 0; i < list.length; i++) {
    const message = (await next())!
    t.is(message.data.toString(), `msg${i}`)
    t.is(message.from, from)
    checkAndClose(t, message.fds, list.slice(0, i + 1))
  }
  const empty = (await next())!
  t.is(empty.data.length, 0)
  checkAndClose(t, empty.fds, [list[0]])
  const end = (await next())!
  t.deepEqual([end.data.toString(), end.fds], ['END', []])
}

seqpacketTest(
  'interop: Python (sendmsg, SOCK_SEQPACKET) → SeqpacketListener: each message with its own fds',
  async (t) => {
    const socketPath = tmpSocketPath()
    const listener = SeqpacketListener.bind(socketPath)
    const list = files(3)
    const peer = python(['seqpacket', 'send', socketPath, ...list])
    const connection = await listener.accept()
    try {
      await checkFromPython(t, () => connection.receive(), list)
      t.deepEqual(await peer.line((l) => 'sent' in l), { sent: 5 })
      t.is(await connection.receive(), null, 'then the end')
      t.is(await peer.exited, 0)
    } finally {
      connection.close()
      listener.close()
    }
  },
)

test('interop: Python (sendmsg, SOCK_DGRAM, bound) → DatagramSocket: each message with its own fds and its sender', async (t) => {
  const socketPath = tmpSocketPath()
  const socket = DatagramSocket.bind(socketPath)
  const list = files(3)
  try {
    const peer = python(['dgram', 'send', socketPath, ...list])
    await checkFromPython(t, () => socket.receive(), list, `${socketPath}.py`)
    t.is(await peer.exited, 0)
  } finally {
    socket.close()
  }
})

for (const kind of (['seqpacket', 'dgram'] as const).filter((k) => process.platform !== 'darwin' || k === 'dgram')) {
  test(`interop: ${kind === 'seqpacket' ? 'SeqpacketSocket' : 'DatagramSocket'} → Python (recvmsg, SOCK_${kind.toUpperCase()}): boundaries, fds by inode and content`, async (t) => {
    // On Linux the datagram peer is at an abstract address ("@name" for Python's command
    // line); elsewhere, and for seqpacket, at a file.
    const name = `fdq-py-${process.pid}-${Date.now()}`
    const abstract = kind === 'dgram' && process.platform === 'linux'
    const socketPath = abstract ? `\0${name}` : tmpSocketPath()
    const list = files(4)
    const peer = python([kind, 'recv', abstract ? `@${name}` : socketPath, '4'])
    await peer.line((l) => 'listening' in l)
    const ourPath = tmpSocketPath()
    const socket = kind === 'seqpacket' ? await SeqpacketSocket.connect(socketPath) : DatagramSocket.bind(ourPath)
    const send = (data: string, fds: number[]) =>
      socket instanceof DatagramSocket ? socket.sendTo(socketPath, data, fds) : socket.send(data, fds)
    try {
      await sendFiles((fds) => send('one', fds), [list[0]])
      await sendFiles((fds) => send('', fds), [list[1]])
      await sendFiles((fds) => send('three', fds), [list[2], list[3], list[0]])
      await send('four', [])
      const { messages } = await peer.line((l) => 'messages' in l)
      const described = (files: string[]) =>
        files.map((f) => {
          const [dev, ino] = pathIdentity(f).split(':')
          return { dev, ino, content: fs.readFileSync(f, 'utf8') }
        })
      const from = kind === 'dgram' ? ourPath : null
      t.deepEqual(messages, [
        { data: 'one', from, fds: described([list[0]]), truncated: false },
        { data: '', from, fds: described([list[1]]), truncated: false },
        { data: 'three', from, fds: described([list[2], list[3], list[0]]), truncated: false },
        { data: 'four', from, fds: [], truncated: false },
      ])
      t.is(await peer.exited, 0)
    } finally {
      socket.close()
    }
  })
}

seqpacketTest(
  'garbage collection of message sockets closes them and every fd they held: unread in a message, enqueued; of a received message, the fds no code read (child with --expose-gc)',
  async (t) => {
    const dir = tmpDir('fdq-msg-gc-')
    const fifo = path.join(dir, 'fifo')
    spawnSync('mkfifo', [fifo])
    const script = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures', 'message-gc.cjs')
    const result = await runProcess(process.execPath, ['--expose-gc', script, fifo])
    t.is(result.status, 0, result.stderr)
    const report = JSON.parse(result.stdout.trim())
    t.true(report.writerOpenWhileAlive, 'copies of the write end were held while the sockets lived')
    t.false(report.writerOpenAfterGc, 'no copy of the write end survives the collection')
    t.is(report.after, report.before)
    t.true(report.unreadOpenWhileHeld, 'a received message holds its fds while it lives')
    t.false(report.unreadOpenAfterGc, 'a message collected before its fds were read closes them')
    t.true(report.readStillOpen, "fds read from a message are the reader's: collecting it leaves them open")
  },
)

linuxTest(
  'DatagramSocket: close() rejects sends still waiting for a full receiver (ERR_SOCKET_CLOSED) and closes their fds',
  async (t) => {
    const qlen = Number(fs.readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'))
    const receiverPath = tmpSocketPath()
    const receiver = DatagramSocket.bind(receiverPath)
    const sender = DatagramSocket.bind()
    const [file] = files(1)
    const fd = fs.openSync(file, 'r')
    try {
      const sends = Array.from({ length: qlen + 20 }, (_, i) => sender.sendTo(receiverPath, `m${i}`, [fd]))
      await Promise.all(sends.slice(0, qlen)) // these fit in the receiver's queue
      sender.close()
      const outcomes = await Promise.allSettled(sends)
      const sent = outcomes.filter((o) => o.status === 'fulfilled').length
      const refused = outcomes.filter((o) => o.status === 'rejected')
      t.true(sent >= qlen)
      t.true(refused.length > 0, 'some were still waiting')
      t.deepEqual(
        new Set(refused.map((o) => codeOf((o as PromiseRejectedResult).reason))),
        new Set(['ERR_SOCKET_CLOSED']),
      )
      t.deepEqual(
        outcomes.map((o) => o.status),
        [...new Array(sent).fill('fulfilled'), ...new Array(refused.length).fill('rejected')],
        'in call order',
      )
      for (let i = 0; i < sent; i++) {
        const message = (await receiver.receive())!
        t.is(message.data.toString(), `m${i}`)
        checkAndClose(t, message.fds, [file])
      }
    } finally {
      fs.closeSync(fd)
      sender.close()
      receiver.close()
    }
  },
)

// ---------------------------------------------------------------------------------------
// Found by a hostile review: each of these failed before its fix.

seqpacketTest(
  'SeqpacketSocket: an empty message followed by others, all sent before the peer closed, is a message, not the end',
  async (t) => {
    const [a, b] = SeqpacketSocket.pair()
    const [c, d] = SeqpacketSocket.pair()
    try {
      for (const socket of [a, c]) {
        for (const word of ['first', '', 'last']) await socket.send(word)
        socket.close()
      }
      const got: (string | null)[] = []
      for (let i = 0; i < 5; i++) got.push((await b.receive())?.data.toString() ?? null)
      t.deepEqual(got, ['first', '', 'last', null, null])
      const iterated: string[] = []
      for await (const message of d) iterated.push(message.data.toString())
      t.deepEqual(iterated, ['first', '', 'last'])
    } finally {
      for (const s of [a, b, c, d]) s.close()
    }
  },
)

seqpacketTest(
  'SeqpacketSocket: a zero-byte message whose fds the kernel dropped (receiver at its fd limit) is truncated, not the end',
  async (t) => {
    const script = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures', 'message-ctrunc.mjs')
    const result = await runProcess('sh', ['-c', 'ulimit -n 100 && exec "$0" "$@"', process.execPath, script])
    t.is(result.status, 0, result.stderr)
    t.deepEqual(JSON.parse(result.stdout.trim()), [
      { data: '', fds: 0, truncated: true },
      { data: 'plain', fds: 0, truncated: false },
      null,
    ])
  },
)

for (const [kind, pair] of KINDS) {
  test(`${kind}: a receive called while earlier ones are settling still settles after them`, async (t) => {
    const [a, b] = pair()
    try {
      const order: string[] = []
      const receive = (i: number) => b.receive().then((m) => order.push(`r${i}:${m!.data}`))
      // r0 and r1 wait; one wake-up completes both, and r0 is delivered first. Called from
      // r0's reaction, while r1's result is still on its way, r2 finds m2 waiting: it must
      // not overtake r1.
      let r2: Promise<unknown> = Promise.resolve()
      const r0 = receive(0).then(() => (r2 = receive(2)))
      const r1 = receive(1)
      for (const word of ['m0', 'm1', 'm2']) void a.send(word)
      await Promise.all([r0, r1])
      await r2
      t.deepEqual(order, ['r0:m0', 'r1:m1', 'r2:m2'])
    } finally {
      a.close()
      b.close()
    }
  })
}

linuxTest('a send the kernel can never allocate (ENOBUFS every time) is rejected, not retried forever', async (t) => {
  // A datagram socket with the largest send buffer an unprivileged process may set (as
  // systemd's SendBuffer= does), made by Python and passed here; a 5 MiB message then
  // fails ENOBUFS every time (or EMSGSIZE where wmem_max is small).
  const receiverPath = path.join(tmpDir('fdq-enobufs-'), 'r')
  const receiver = DatagramSocket.bind(receiverPath)
  let socket: DatagramSocket | null = null
  try {
    const script =
      'import array, socket, sys\n' +
      'a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n' +
      "wmem_max = int(open('/proc/sys/net/core/wmem_max').read())\n" +
      'a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wmem_max)\n' +
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n' +
      "rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [a.fileno()]))]\n" +
      "s.sendmsg([b'x'], rights, 0, sys.argv[1])\n"
    const python = await runProcess('python3', ['-c', script, receiverPath])
    t.is(python.status, 0, python.stderr)
    const message = (await receiver.receive())!
    socket = DatagramSocket.fromFd(message.fds[0])
    const error = await rejection(socket.send(Buffer.alloc(5 << 20)), 30_000, 'the rejection')
    t.true(['ENOBUFS', 'EMSGSIZE'].includes(error.code), error.code)
    t.is(error.syscall, 'sendmsg')
  } finally {
    socket?.close()
    receiver.close()
  }
})

seqpacketTest(
  'fromFd() of an fd another fd-queue object already owns: EEXIST, and the fd stays open and working',
  async (t) => {
    const [a, b] = SeqpacketSocket.pair()
    try {
      const error = syncThrow(() => SeqpacketSocket.fromFd(a.fd))
      t.is(codeOf(error), 'EEXIST')
      t.notThrows(() => fs.fstatSync(a.fd), 'not closed by the refusal')
      await a.send('still works')
      t.is((await b.receive())!.data.toString(), 'still works')
    } finally {
      a.close()
      b.close()
    }
  },
)

test('peerCredentials() of a datagram socket with no peer recorded throws ENOTCONN (no made-up credentials)', (t) => {
  const unbound = DatagramSocket.bind()
  const bound = DatagramSocket.bind(tmpSocketPath())
  const connected = DatagramSocket.bind()
  const [p, q] = DatagramSocket.pair()
  try {
    connected.connect(bound.path)
    for (const socket of [unbound, bound, connected])
      t.is(codeOf(syncThrow(() => socket.peerCredentials())), 'ENOTCONN')
    t.like(p.peerCredentials(), { pid: peerPid(process.pid), uid: process.getuid!() })
  } finally {
    for (const s of [unbound, bound, connected, p, q]) s.close()
  }
})

linuxTest(
  'the first receive on a thread does not make its receive buffer resident (RSS grows by far less than wmem_max)',
  async (t) => {
    const script = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures', 'message-rss.mjs')
    const result = await runProcess(process.execPath, [script])
    t.is(result.status, 0, result.stderr)
    const { growthKiB, wmemMaxKiB } = JSON.parse(result.stdout.trim())
    t.log(`RSS growth ${growthKiB} KiB for a 1-byte message; the buffer is ${2 * wmemMaxKiB} KiB of address space`)
    t.true(growthKiB < 1024, `${growthKiB} KiB`)
  },
)

seqpacketTest(
  'unref(): a pending receive or accept does not keep the process alive; a referenced one does until close()',
  async (t) => {
    const script = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures', 'message-unref.mjs')
    for (const mode of ['receive', 'accept', 'datagram', 'ref-then-close']) {
      const result = await runProcess(process.execPath, [script, mode], { timeoutMs: 60_000 })
      t.is(result.signal, null, `${mode}: exited by itself`)
      t.is(result.status, 0, `${mode}: ${result.stderr}`)
      if (mode === 'ref-then-close') t.is(result.stdout.trim(), 'ERR_SOCKET_CLOSED')
    }
  },
)

seqpacketTest(
  'send() at the open-file limit rejects with EMFILE (no throw at the call) and sends nothing; a bad fd still throws EBADF',
  async (t) => {
    const child = startFixture('send-emfile', [], { ulimit: 64 })
    const result = await withTimeout(child.done, 15_000, 'child exit')
    t.is(result.code, 0, result.stderr)
    t.deepEqual(lastJson(result), {
      filled: true,
      thrown: null,
      rejected: 'EMFILE',
      badFd: 'EBADF',
      sent: 5,
      arrived: 'after',
    })
  },
)
