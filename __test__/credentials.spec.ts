/**
 * Peer credentials (issue #6): `peerCredentials()` on UnixStream, AsyncUnixStream and
 * FdSocket reports the real pid/uid/gid of the process on the other end, as the kernel
 * recorded it (SO_PEERCRED), checked against children that report their own
 * process.pid/getuid()/getgid(), as root and as uid/gid 65534; and FdServer's
 * `allowedUids`: an allowed uid connects and passes an fd, another uid is closed before
 * 'connection' and reported by 'refused'.
 */
import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect,
  createServer,
  FdServer,
  FdSocket,
  UnixListener,
  UnixStream,
  type PeerCredentials,
} from '../index.js'
import { readAt, readExactlySync, scaled, settledOpenFds, thrown, tmpDir } from './helpers.js'
import { dequeueAll, onceEvent, readExactly, receiveExactly, warmedUpFdBaseline, withTimeout } from './async-helpers.js'
import { killDrivers, startAsUser, type Driver } from './fixtures/driver.js'
import { peerPid } from './platform.js'

const NOBODY = 65534
// FreeBSD's kernel records no peer pid (null there; see platform.ts).
const ME = { pid: peerPid(process.pid), uid: process.getuid!(), gid: process.getgid!() }

let baseline = 0
test.before(async () => {
  baseline = await warmedUpFdBaseline()
})
/** Servers and sockets of the running test, closed after it whatever happened (assertions throw). */
const open: Array<{ close(): unknown } | { destroy(): unknown }> = []
function track<T extends { close(): unknown } | { destroy(): unknown }>(thing: T): T {
  open.push(thing)
  return thing
}
test.afterEach.always(async () => {
  await killDrivers()
  for (const thing of open.splice(0)) {
    if ('destroy' in thing) thing.destroy()
    else thing.close()
  }
})
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(baseline), baseline)
})

/** A directory uid 65534 can enter and create in, with a world-readable file to pass. */
function publicPlace(): { sock: string; file: string; content: string } {
  const dir = tmpDir('fdq-cred-')
  fs.chmodSync(dir, 0o777)
  const file = path.join(dir, 'shared')
  const content = `shared file ${dir}`
  fs.writeFileSync(file, content, { mode: 0o644 })
  return { sock: path.join(dir, 's'), file, content }
}

/** The socket file must be writable for another user to connect. */
function openUp(sock: string): void {
  fs.chmodSync(sock, 0o777)
}

const users = [
  ['root', undefined],
  ['uid/gid 65534', NOBODY],
] as const

test.serial('pair(): every class reports this process on both ends', (t) => {
  const [a, b] = UnixStream.pair()
  const [c, d] = AsyncUnixStream.pair()
  const [e, f] = FdSocket.pair()
  for (const stream of [a, b, c, d, e, f]) t.deepEqual(stream.peerCredentials(), ME)
  a.close()
  b.close()
  c.close()
  d.close()
  e.destroy()
  f.destroy()
})

/**
 * Serves one connection from a child (as `uid`), checks the credentials both ways, and
 * gets the fd the child sends: the world-readable file, read back through it.
 */
async function checkChild(
  t: any,
  child: Driver,
  peer: { peerCredentials(): PeerCredentials },
  receive: () => Promise<{ data: string; fds: number[] }>,
  uid: number | undefined,
  place: { content: string },
) {
  const hello = await child.waitFor((l) => l.pid !== undefined)
  t.is(hello.uid, uid ?? ME.uid, 'the child runs as the uid we asked for')
  t.is(hello.gid, uid ?? ME.gid)
  t.deepEqual(
    peer.peerCredentials(),
    { pid: peerPid(hello.pid), uid: hello.uid, gid: hello.gid },
    'our side sees the child',
  )
  t.deepEqual(hello.peer, ME, 'the child sees us')
  t.is(child.child.pid, hello.pid)
  const { data, fds } = await receive()
  t.is(data, `from ${hello.pid}`)
  t.is(fds.length, 1)
  t.is(readAt(fds[0]), place.content, 'the fd the child passed reads our file')
  fs.closeSync(fds[0])
}

for (const [who, uid] of users) {
  test.serial(`UnixStream.peerCredentials() is the connecting child's (${who})`, async (t) => {
    const place = publicPlace()
    const listener = track(UnixListener.bind(place.sock))
    openUp(place.sock)
    const child = startAsUser(['creds', 'blocking', place.sock, place.file], { uid, gid: uid })
    await child.waitFor((l) => l.pid !== undefined)
    const stream = listener.accept()
    stream.setReadTimeout(scaled(10_000))
    await checkChild(
      t,
      child,
      stream,
      async () => {
        await child.waitFor((l) => l.sent !== undefined)
        // as many reads as it takes: a stream socket need not return the message in one
        const data = readExactlySync(stream, `from ${child.child.pid}`.length).toString()
        return { data, fds: dequeueAll(stream) }
      },
      uid,
      place,
    )
    stream.close()
    t.like(await child.waitFor((l) => l.end !== undefined), { end: 'eof' })
    listener.close()
    await child.exited // its stdio pipes are ours until it is gone
    t.is(await settledOpenFds(baseline), baseline)
  })

  test.serial(`AsyncUnixStream.peerCredentials() is the connecting child's (${who})`, async (t) => {
    const place = publicPlace()
    const listener = track(AsyncUnixListener.bind(place.sock))
    openUp(place.sock)
    const child = startAsUser(['creds', 'async', place.sock, place.file], { uid, gid: uid })
    const stream = await withTimeout(listener.accept(), 10_000, 'accept')
    await checkChild(
      t,
      child,
      stream,
      async () => {
        const data = (await readExactly(stream, `from ${child.child.pid}`.length)).toString()
        return { data, fds: dequeueAll(stream) }
      },
      uid,
      place,
    )
    stream.close()
    t.like(await child.waitFor((l) => l.end !== undefined), { end: 'eof' })
    listener.close()
    await child.exited // its stdio pipes are ours until it is gone
    t.is(await settledOpenFds(baseline), baseline)
  })

  test.serial(`FdSocket.peerCredentials() is the connecting child's (${who})`, async (t) => {
    const place = publicPlace()
    const server = track(createServer())
    server.listen(place.sock)
    await onceEvent(server, 'listening')
    openUp(place.sock)
    const child = startAsUser(['creds', 'fdsocket', place.sock, place.file], { uid, gid: uid })
    const [socket] = (await onceEvent(server, 'connection')) as [FdSocket]
    track(socket)
    await checkChild(
      t,
      child,
      socket,
      async () => {
        const data = await receiveExactly(socket, `from ${child.child.pid}`.length)
        return { data: data.toString(), fds: dequeueAll(socket) }
      },
      uid,
      place,
    )
    socket.end()
    t.like(await child.waitFor((l) => l.end !== undefined), { end: 'eof' })
    socket.destroy()
    server.close()
    await onceEvent(server, 'close')
    await child.exited
    t.is(await settledOpenFds(baseline), baseline)
  })
}

test.serial('allowedUids: an allowed uid (65534) connects and passes an fd; root is refused', async (t) => {
  const place = publicPlace()
  const server = track(createServer({ allowedUids: [NOBODY] }))
  const refused: PeerCredentials[] = []
  server.on('refused', (credentials: PeerCredentials) => refused.push(credentials))
  server.listen(place.sock)
  await onceEvent(server, 'listening')
  openUp(place.sock)
  const child = startAsUser(['creds', 'fdsocket', place.sock, place.file], { uid: NOBODY, gid: NOBODY })
  const [socket] = (await onceEvent(server, 'connection')) as [FdSocket]
  track(socket)
  const hello = await child.waitFor((l) => l.pid !== undefined)
  t.deepEqual(socket.peerCredentials(), { pid: hello.pid, uid: NOBODY, gid: NOBODY })
  const data = await receiveExactly(socket, `from ${hello.pid}`.length)
  t.is(data.toString(), `from ${hello.pid}`)
  const [fd] = dequeueAll(socket)
  t.is(readAt(fd), place.content)
  fs.closeSync(fd)
  socket.end()
  t.like(await child.waitFor((l) => l.end !== undefined), { end: 'eof' })

  // this process runs as root: not allowed
  let connections = 0
  server.on('connection', () => connections++)
  const mine = track(connect(place.sock))
  const [credentials] = (await onceEvent(server, 'refused')) as [PeerCredentials]
  t.deepEqual(credentials, ME)
  const ended = await withTimeout(
    new Promise<string>((resolve) => {
      mine.on('end', () => resolve('eof'))
      mine.on('error', (e) => resolve(String((e as NodeJS.ErrnoException).code)))
      mine.resume()
    }),
    10_000,
    'refused client ends',
  )
  t.true(['eof', 'ECONNRESET'].includes(ended), ended)
  t.is(connections, 0, "no 'connection' for the refused peer")
  t.deepEqual(refused, [ME])
  mine.destroy()
  socket.destroy()
  server.close()
  await onceEvent(server, 'close')
  await child.exited
  t.is(await settledOpenFds(baseline), baseline)
})

test.serial(
  "allowedUids [0]: uid 65534 is refused before 'connection', sees the end, 'refused' carries its credentials",
  async (t) => {
    const place = publicPlace()
    const server = track(createServer({ allowedUids: [0] }))
    let connections = 0
    server.on('connection', () => connections++)
    server.listen(place.sock)
    await onceEvent(server, 'listening')
    openUp(place.sock)
    const refusedEvent = onceEvent(server, 'refused')
    const child = startAsUser(['creds', 'fdsocket', place.sock, place.file], { uid: NOBODY, gid: NOBODY })
    const [credentials] = (await refusedEvent) as [PeerCredentials]
    const hello = await child.waitFor((l) => l.pid !== undefined)
    t.deepEqual(credentials, { pid: hello.pid, uid: NOBODY, gid: NOBODY })
    const end = await child.waitFor((l) => l.end !== undefined)
    // it was closed at once: its read sees the end, or its write (racing the close) EPIPE
    t.true(['eof', 'ECONNRESET', 'EPIPE'].includes(end.end), `the refused child saw ${end.end}`)
    t.is(end.data, '', 'it got no data from us')
    const exit = await child.exited
    t.is(exit.code, 0, exit.stderr)
    t.is(connections, 0, "no 'connection' event")
    // root is still welcome
    const mine = track(connect(place.sock))
    const [socket] = (await onceEvent(server, 'connection')) as [FdSocket]
    track(socket)
    t.deepEqual(socket.peerCredentials(), ME)
    mine.destroy()
    socket.destroy()
    server.close()
    await onceEvent(server, 'close')
    t.is(await settledOpenFds(baseline), baseline)
  },
)

test.serial('allowedUids: bad values throw typed errors; an empty list refuses everyone', async (t) => {
  const bad: Array<[unknown, typeof TypeError | typeof RangeError, string]> = [
    ['0', TypeError, 'ERR_INVALID_ARG_TYPE'],
    [0, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [null, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [{ 0: 0, length: 1 }, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [new Set([0]), TypeError, 'ERR_INVALID_ARG_TYPE'],
    [['0'], TypeError, 'ERR_INVALID_ARG_TYPE'],
    [[0n], TypeError, 'ERR_INVALID_ARG_TYPE'],
    [[null], TypeError, 'ERR_INVALID_ARG_TYPE'],
    [[0, undefined], TypeError, 'ERR_INVALID_ARG_TYPE'],
    [[-1], RangeError, 'ERR_OUT_OF_RANGE'],
    [[1.5], RangeError, 'ERR_OUT_OF_RANGE'],
    [[NaN], RangeError, 'ERR_OUT_OF_RANGE'],
    [[Infinity], RangeError, 'ERR_OUT_OF_RANGE'],
    [[2 ** 32], RangeError, 'ERR_OUT_OF_RANGE'],
  ]
  for (const [value, type, code] of bad) {
    for (const make of [
      () => createServer({ allowedUids: value as number[] }),
      () => new FdServer({ allowedUids: value as number[] }),
    ]) {
      const error = thrown(make)
      t.true(error instanceof type, `${String(value)}: ${error}`)
      t.is(error.code, code, String(value))
    }
  }
  t.notThrows(() => createServer({ allowedUids: [2 ** 32 - 1, 0] }))
  const place = publicPlace()
  const server = track(createServer({ allowedUids: [] }))
  server.listen(place.sock)
  await onceEvent(server, 'listening')
  const mine = track(connect(place.sock))
  const [credentials] = (await onceEvent(server, 'refused')) as [PeerCredentials]
  t.deepEqual(credentials, ME)
  mine.destroy()
  server.close()
  await onceEvent(server, 'close')
  t.log(`${bad.length * 2} bad allowedUids values refused`)
})

test.serial('peerCredentials() on closed or unconnected streams: typed errors', async (t) => {
  const [a, b] = UnixStream.pair()
  a.close()
  t.is(thrown(() => a.peerCredentials()).code, 'ERR_SOCKET_CLOSED')
  t.deepEqual(b.peerCredentials(), ME, 'the peer closing does not change what the kernel recorded')
  b.close()
  const [c, d] = AsyncUnixStream.pair()
  c.close()
  t.is(thrown(() => c.peerCredentials()).code, 'ERR_SOCKET_CLOSED')
  d.close()
  const pending = new FdSocket()
  t.is(thrown(() => pending.peerCredentials()).code, 'ERR_SOCKET_NOT_CONNECTED')
  pending.destroy()
  t.is(thrown(() => pending.peerCredentials()).code, 'ERR_SOCKET_CLOSED')
  const [e, f] = FdSocket.pair()
  e.destroy()
  t.is(thrown(() => e.peerCredentials()).code, 'ERR_SOCKET_CLOSED')
  f.destroy()
  t.is(await settledOpenFds(baseline), baseline)
})
