/**
 * Running out of resources is transient, never fatal (SPEC §5): a server out of fds waits
 * and accepts again; a send over the kernel's limit of fds in flight keeps its fds and is
 * retried; and a server that closed never delivers a connection it had accepted.
 */
import test from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { createServer, FdSocket, UnixStream } from '../index.js'
import { openFds, ROOT, settledOpenFds, tmpSocketPath } from './helpers.js'
import { onceEvent, warmedUpFdBaseline, withTimeout } from './async-helpers.js'

let baseline = 0
test.before(async () => {
  baseline = await warmedUpFdBaseline()
})
test.after.always('no fd of this file leaked', async (t) => {
  t.is(await settledOpenFds(), baseline)
})

/** A child process driven by stdin lines that answers with JSON lines on stdout. */
function drive(child: ChildProcess) {
  const lines: any[] = []
  let stderr = ''
  let buffered = ''
  const wakers = new Set<() => void>()
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    const complete = buffered.split('\n')
    buffered = complete.pop()!
    for (const line of complete) if (line.trim()) lines.push(JSON.parse(line))
    for (const wake of wakers) wake()
  })
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
  return {
    exited,
    stderr: () => stderr,
    send(line: string) {
      child.stdin!.write(`${line}\n`)
    },
    /** The first line (from the start) that `match` accepts. */
    async line(match: (line: any) => boolean, what: string): Promise<any> {
      for (;;) {
        const found = lines.find(match)
        if (found) return found
        const code = await Promise.race([
          new Promise<undefined>((resolve) => wakers.add(() => resolve(undefined))),
          exited,
        ])
        if (code !== undefined)
          throw new Error(`the child exited (${code}) before ${what}: ${JSON.stringify(lines)} ${stderr}`)
      }
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
      { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
    )
    const peer = drive(child)
    await peer.line((l) => l.listening, 'listening')
    peer.send('fill')
    await peer.line((l) => l.full, 'the fd table is full')
    const client = UnixStream.connect(socketPath)
    client.setReadTimeout(60_000)
    if (mode === 'server') {
      const busy = await peer.line((l) => 'acceptError' in l, "'acceptError'")
      t.deepEqual(busy, { acceptError: 'EMFILE', syscall: 'accept' })
    } else {
      t.deepEqual(await peer.line((l) => 'acceptRejected' in l, 'the rejected accept'), { acceptRejected: 'EMFILE' })
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

test('FdServer.close(): connections accepted but not yet delivered are closed, never delivered (not after close, not after "close")', async (t) => {
  const socketPath = tmpSocketPath()
  const server = createServer()
  let delivered = 0
  server.on('connection', (socket: FdSocket) => {
    delivered++
    socket.destroy()
  })
  server.listen(socketPath)
  await onceEvent(server, 'listening')
  const before = openFds()
  const clients = Array.from({ length: 20 }, () => UnixStream.connect(socketPath))
  // Keep the JS thread away from its event loop until the native side has accepted them
  // all (each accepted socket is an fd of this process): they wait for JS, undelivered.
  const nap = new Int32Array(new SharedArrayBuffer(4))
  while (openFds() < before + 2 * clients.length) Atomics.wait(nap, 0, 0, 5)
  server.close()
  await onceEvent(server, 'close')
  // What was on its way to JS reaches it now, and is closed there: wait for the fds to go
  // (each client keeps its own), turning the event loop.
  while (openFds() > before + clients.length) await new Promise((resolve) => setImmediate(resolve))
  t.is(delivered, 0)
  t.false(server.listening)
  // Each client sees end of stream: its connection was closed, not left hanging.
  for (const client of clients) {
    client.setReadTimeout(60_000)
    t.is(client.read(Buffer.alloc(1)), 0)
    client.close()
  }
})

for (const api of ['async', 'fdsocket', 'blocking'] as const) {
  test(`ETOOMANYREFS (more fds in flight than the sender's open-file limit), ${api}: no fd lost, every message arrives`, async (t) => {
    // 200 with a limit of 128: the sender stalls with about 70 fds waiting in its own table.
    const count = 200
    const script = path.join(ROOT, '__test__', 'fixtures', 'inflight.cjs')
    // As an unprivileged user: root is exempt from the kernel's limit of fds in flight.
    const child = spawn('sh', ['-c', 'ulimit -n 128 && exec "$0" "$@"', process.execPath, script, api, String(count)], {
      cwd: ROOT,
      uid: 65534,
      gid: 65534,
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
