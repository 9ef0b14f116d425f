/**
 * Running out of resources is transient, never fatal (SPEC §5): a server out of fds waits
 * and accepts again; a send over the kernel's limit of fds in flight keeps its fds and is
 * retried; and a server that closed never delivers a connection it had accepted.
 */
import test from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { createServer, FdSocket, UnixListener, UnixStream } from '../index.js'
import { copyOf, ROOT, tmpSocketPath, scaled } from './helpers.js'
import { checkNoFdLeaked, jsonLines, onceEvent, withTimeout } from './async-helpers.js'

checkNoFdLeaked()

/** A child process driven by stdin lines that answers with JSON lines on stdout. */
function drive(child: ChildProcess) {
  return {
    ...jsonLines(child),
    send(line: string) {
      child.stdin!.write(`${line}\n`)
    },
  }
}

for (const mode of ['server', 'listener'] as const) {
  const title =
    mode === 'server'
      ? "FdServer out of fds: EMFILE is an 'acceptError' (no 'error' listener needed), and accepting resumes"
      : 'AsyncUnixListener out of fds: accept() rejects EMFILE, and the next accept() gets the connection'
  test(title, async (t) => {
    const socketPath = tmpSocketPath()
    const script = path.join(ROOT, '__test__', 'fixtures', 'exhaustion.ts')
    const child = spawn(
      'sh',
      ['-c', 'ulimit -n 64 && exec "$0" "$@"', process.execPath, '--import', 'tsx', script, mode, socketPath],
      // tsx writes its cache with fds it closes later: one freed after the fill would take
      // the connection meant to meet EMFILE.
      { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TSX_DISABLE_CACHE: '1' } },
    )
    const peer = drive(child)
    await peer.line((l) => l.listening, 'listening')
    peer.send('fill')
    await peer.line((l) => l.full, 'the fd table is full')
    let client = UnixStream.connect(socketPath)
    const refused = (l: any) => (mode === 'server' ? 'acceptError' in l : 'acceptRejected' in l)
    for (let attempt = 1; ; attempt++) {
      const outcome = await peer.line((l) => refused(l) || l.acceptedWhileFull === attempt, 'the refusal')
      if (refused(outcome)) break
      // An fd of the child's freed itself after the fill and took this connection: again.
      client.close()
      client = UnixStream.connect(socketPath)
    }
    client.setReadTimeout(60_000)
    if (mode === 'server') {
      t.deepEqual(await peer.line(refused, "'acceptError'"), { acceptError: 'EMFILE', syscall: 'accept' })
    } else {
      t.deepEqual(await peer.line(refused, 'the rejected accept'), { acceptRejected: 'EMFILE' })
    }
    peer.send('free')
    // The connection that waited in the backlog is accepted and answered.
    const buf = Buffer.alloc(16)
    let got = ''
    while (got.length < 2) {
      const n = client.read(buf)
      if (n === 0) break
      got += buf.subarray(0, n).toString()
    }
    t.is(got, 'hi')
    client.close()
    peer.send('done')
    const report = await peer.line((l) => 'connections' in l, 'the report')
    t.is(report.connections, 1)
    t.deepEqual(report.acceptErrors, ['EMFILE'], 'reported once for the whole episode')
    t.is(await peer.exited, 0, peer.stderr())
    t.notRegex(peer.stderr(), /panicked|Error/)
  })
}

test('FdServer.close(): connections waiting at close are never delivered, and a successor holding the listener gets every one', async (t) => {
  const socketPath = tmpSocketPath()
  const server = createServer()
  let delivered = 0
  server.on('connection', (socket: FdSocket) => {
    delivered++
    socket.destroy()
  })
  server.listen(socketPath)
  await onceEvent(server, 'listening')
  // The successor holds the same listening socket (it was handed over).
  const successor = UnixListener.fromFd(copyOf(server))
  // Connections arrive; the server closes before its JS thread took any of them.
  const clients = Array.from({ length: 20 }, (_, i) => {
    const client = UnixStream.connect(socketPath)
    client.write(`client ${String(i).padStart(2, '0')}`)
    return client
  })
  server.setUnlinkOnClose(false)
  server.close()
  await onceEvent(server, 'close')
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve))
  t.is(delivered, 0, "no 'connection' after close()")
  // Nothing was taken from the backlog: the successor accepts all of them.
  const names: string[] = []
  for (let i = 0; i < clients.length; i++) {
    const accepted = successor.accept({ timeout: scaled(60_000) })
    const buf = Buffer.alloc(16)
    let name = ''
    while (name.length < 9) name += buf.subarray(0, accepted.read(buf)).toString()
    names.push(name)
    accepted.close()
  }
  t.deepEqual(
    names.sort(),
    clients.map((_, i) => `client ${String(i).padStart(2, '0')}`),
  )
  for (const client of clients) client.close()
  successor.close()
  fs.rmSync(socketPath, { force: true })
})

test('FdServer.close() with nobody else holding the listener: the waiting clients see their connection end', async (t) => {
  const socketPath = tmpSocketPath()
  const server = createServer()
  let delivered = 0
  server.on('connection', () => delivered++)
  server.listen(socketPath)
  await onceEvent(server, 'listening')
  const clients = Array.from({ length: 5 }, () => UnixStream.connect(socketPath))
  server.close()
  await onceEvent(server, 'close')
  for (const client of clients) {
    client.setReadTimeout(60_000)
    let ended: unknown
    try {
      ended = client.read(Buffer.alloc(1))
    } catch (error) {
      ended = (error as NodeJS.ErrnoException).code
    }
    t.true(ended === 0 || ended === 'ECONNRESET', `the client saw ${String(ended)}`)
    client.close()
  }
  t.is(delivered, 0)
})

for (const [api, uid] of [
  ['async', 60_001],
  ['fdsocket', 60_002],
  ['blocking', 60_003],
] as const) {
  test(`ETOOMANYREFS (more fds in flight than the sender's open-file limit), ${api}: no fd lost, every message arrives`, async (t) => {
    // 200 with a limit of 128: the sender stalls with about 70 fds waiting in its own table.
    const count = 200
    const script = path.join(ROOT, '__test__', 'fixtures', 'inflight.cjs')
    // As an unprivileged user: root is exempt from the kernel's limit of fds in flight.
    const child = spawn('sh', ['-c', 'ulimit -n 128 && exec "$0" "$@"', process.execPath, script, api, String(count)], {
      cwd: ROOT,
      // A user of its own per test: the kernel counts the fds in flight of all its processes.
      uid,
      gid: uid,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const code = await withTimeout(
      new Promise<number | null>((resolve) => child.on('close', resolve)),
      120_000,
      'the sender exits',
    )
    t.is(code, 0, stderr)
    const report = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}')
    t.is(report.messages, count)
    t.is(report.fds, count, 'one fd per message, none lost')
    t.true(report.allDevNull)
    if (api === 'blocking') {
      t.true(report.senderErrors.length > 0, 'the limit was reached')
      t.true(
        report.senderErrors.every((e: string) => e === 'ETOOMANYREFS'),
        'thrown as ETOOMANYREFS, fds kept',
      )
      // Linux's number for it (os.constants.errno has none to compare with).
      t.deepEqual(report.errorShape, { errno: -109, syscall: 'sendmsg' })
    } else {
      t.deepEqual(report.senderErrors, [], 'transient: waited out, never an error')
    }
  })
}

test('the fixtures for this file are readable by an unprivileged user', (t) => {
  // The ETOOMANYREFS tests run the package as uid 65534: a checkout it cannot read would
  // fail them for the wrong reason.
  for (const file of ['index.js', path.join('__test__', 'fixtures', 'inflight.cjs')]) {
    t.true((fs.statSync(path.join(ROOT, file)).mode & 0o004) !== 0, file)
  }
})
