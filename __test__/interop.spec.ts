/**
 * Interop with independent SCM_RIGHTS peers (SPEC section 5): a Python peer on the
 * stdlib's socket.send_fds / socket.recv_fds, a C peer on sendmsg / recvmsg (compiled here
 * with cc), and a Go peer on syscall.UnixRights / syscall.ParseUnixRights (built here,
 * offline). Both directions for each. Every fd is checked by reading a file through it or
 * writing into a pipe through it, by dev:ino, by the byte it arrived with, by this
 * process's fd count, and (when fd-queue received it) by its close-on-exec flag.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {
  AsyncUnixListener,
  createServer,
  fdInfo,
  UnixListener,
  type FdSocket,
  type FdServer,
  type FdsArrived,
} from '../index.js'
import {
  closeAll,
  fdFlags,
  fdIdentity,
  makeFifo,
  O_CLOEXEC,
  openFds,
  pathIdentity,
  readAt,
  ROOT,
  runProcess,
  scaled,
  settledOpenFds,
  tmpDir,
  tmpFile,
  tmpSocketPath,
} from './helpers.js'
import { linuxSerialTest } from './platform.js'

const PEERS = path.join(ROOT, '__test__', 'interop')
const SCM_MAX_FD = 253

let baseline = 0
let buildDir = ''
let cPeer = ''
let goPeer = ''
/** A launcher that runs its command with sendmmsg and recvmmsg refused (Linux). */
let noMmsg = ''
const children = new Set<ChildProcess>()

/** Runs a build step; fails the whole file (not a skip) with its output if it fails. */
function build(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): void {
  const result = spawnSync(command, args, { cwd: PEERS, env, encoding: 'utf8', timeout: scaled(180_000) })
  if (result.error) throw result.error
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.stdout}\n${result.stderr}`)
  }
}

/** Go's build cache: the user's if it is writable (fast), else a temp one (a cold build of the stdlib). */
function goCache(): string {
  const configured = spawnSync('go', ['env', 'GOCACHE'], { encoding: 'utf8' }).stdout?.trim()
  if (configured) {
    try {
      fs.mkdirSync(configured, { recursive: true })
      fs.accessSync(configured, fs.constants.W_OK)
      return configured
    } catch {
      // not writable: fall through
    }
  }
  return path.join(buildDir, 'gocache')
}

test.before(() => {
  buildDir = tmpDir('fdq-interop-')
  cPeer = path.join(buildDir, 'peer-c')
  build('cc', ['-std=c11', '-Wall', '-Wextra', '-Werror', '-O2', '-o', cPeer, 'peer.c'])
  if (process.platform === 'linux') {
    noMmsg = path.join(buildDir, 'no-mmsg')
    build('cc', ['-std=c11', '-Wall', '-Wextra', '-Werror', '-O2', '-o', noMmsg, '../fixtures/no-mmsg.c'])
  }
  goPeer = path.join(buildDir, 'peer-go')
  build('go', ['build', '-o', goPeer, 'peer.go'], {
    ...process.env,
    GOCACHE: goCache(),
    GOFLAGS: '-mod=mod',
    GOPROXY: 'off',
    GOTOOLCHAIN: 'local',
    CGO_ENABLED: '0',
  })
})

test.before(async () => {
  baseline = await settledOpenFds()
})

test.after.always('kill peers that are still running', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  if (buildDir) fs.rmSync(buildDir, { recursive: true, force: true })
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

interface Peer {
  child: ChildProcess
  /** Resolves once the peer printed {"connected": pid}. */
  connected: Promise<void>
  /** Resolves with every JSON line once the peer exited 0; rejects otherwise (with its stderr). */
  done: Promise<any[]>
}

/** Starts a peer whose stdout is one JSON value per line. Killed after 20 s (scaled) at the latest. */
function startPeer(command: string, args: string[]): Peer {
  const child = spawn(command, args, { cwd: PEERS, stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(child)
  let stdout = ''
  let stderr = ''
  let onConnected: () => void = () => {}
  const connected = new Promise<void>((resolve) => (onConnected = resolve))
  child.stdout!.setEncoding('utf8')
  child.stderr!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => {
    stdout += chunk
    if (stdout.includes('"connected"')) onConnected()
  })
  child.stderr!.on('data', (chunk: string) => (stderr += chunk))
  const timer = setTimeout(() => child.kill('SIGKILL'), scaled(20_000))
  const done = new Promise<any[]>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      if (code !== 0) {
        reject(new Error(`${command} ${args.join(' ')} exited ${code ?? signal}\nstdout: ${stdout}\nstderr: ${stderr}`))
        return
      }
      resolve(
        stdout
          .trim()
          .split('\n')
          .map((line) => JSON.parse(line)),
      )
    })
  })
  // A peer that dies before connecting must not leave the test waiting for `connected`.
  const guardedConnected = Promise.race([connected, done.then(() => Promise.reject(new Error('peer ended early')))])
  guardedConnected.catch(() => {})
  done.catch(() => {})
  return { child, connected: guardedConnected, done }
}

/** `dev:ino` the way the peers print it. */
function peerIdentity(entry: { dev: string; ino: string }): string {
  return `${entry.dev}:${entry.ino}`
}

/** The files whose fds a peer is sent or sends, each with distinct content. */
function files(count: number, prefix: string): { dir: string; paths: string[]; texts: string[] } {
  const dir = tmpDir('fdq-i-')
  const paths: string[] = []
  const texts: string[] = []
  for (let i = 0; i < count; i++) {
    const text = `${prefix} ${i}: ${Math.random().toString(36).slice(2)}\n`
    paths.push(tmpFile(text, dir, `f${i}`))
    texts.push(text)
  }
  return { dir, paths, texts }
}

function checkReceived(t: ExecutionContext, fd: number, what: string) {
  t.true(fd >= 0, `${what}: a real fd`)
  t.is(fdFlags(fd) & O_CLOEXEC, O_CLOEXEC, `${what}: received close-on-exec`)
}

// ---------------------------------------------------------------------------------------
// Python: socket.send_fds / socket.recv_fds
// ---------------------------------------------------------------------------------------

test.serial('python send_fds → fd-queue (AsyncUnixStream): 2 fds with byte 3, a file and a pipe', async (t) => {
  const { dir, paths, texts } = files(1, 'python reads')
  const socketPath = tmpSocketPath()
  const listener = AsyncUnixListener.bind(socketPath)
  const peer = startPeer('python3', ['peer.py', 'send', socketPath, paths[0]])
  const stream = await withTimeout(listener.accept(), 10_000, 'python connects')
  listener.close()
  try {
    let bytes = ''
    const arrivals: Array<{ byte: number; fds: number[]; countBefore: number; countAfter: number }> = []
    while (bytes.length < 6) {
      const countBefore = openFds()
      // One byte per read: the read that returns byte i brings the fds sent with it.
      const chunk = await withTimeout(stream.read(1), 10_000, 'python sends')
      const countAfter = openFds()
      if (chunk.length === 0) break
      const fds: number[] = []
      for (let fd; (fd = stream.dequeue()) !== null;) fds.push(fd)
      if (fds.length > 0) arrivals.push({ byte: bytes.length, fds, countBefore, countAfter })
      bytes += chunk.toString('latin1')
    }
    t.is(bytes, 'abcXYZ')
    t.is(arrivals.length, 1, 'one fd-carrying read')
    const [arrival] = arrivals
    t.is(arrival.byte, 3, 'the fds came with "X", the first byte of send_fds')
    t.is(arrival.fds.length, 2)
    t.is(arrival.countAfter, arrival.countBefore + 2, 'the read installed exactly the 2 fds')
    const [file, pipe] = arrival.fds
    checkReceived(t, file, 'file')
    checkReceived(t, pipe, 'pipe')
    t.is(fdIdentity(file), pathIdentity(paths[0]))
    t.is(readAt(file), texts[0], 'read the file through the fd python sent')
    t.like(fdInfo(pipe), { kind: 'pipe', readable: false, writable: true })
    const message = `fd-queue ${process.pid} wrote this into python's pipe`
    t.is(fs.writeSync(pipe, message), message.length)
    const before = openFds()
    closeAll([file, pipe]) // python reads its pipe until every write end, ours too, is closed
    t.is(openFds(), before - 2)
    const lines = await withTimeout(peer.done, 10_000, 'python exits')
    t.deepEqual(lines.at(-1), { sent: 3, pipe: message })
  } finally {
    stream.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test.serial('fd-queue (AsyncUnixStream) → python recv_fds: a file and a pipe ride on byte 2', async (t) => {
  const { dir, paths, texts } = files(1, 'python receives')
  const socketPath = tmpSocketPath()
  const listener = AsyncUnixListener.bind(socketPath)
  const peer = startPeer('python3', ['peer.py', 'recv', socketPath])
  const stream = await withTimeout(listener.accept(), 10_000, 'python connects')
  listener.close()
  const fifo = makeFifo()
  try {
    await stream.write('hi')
    const file = fs.openSync(paths[0], 'r')
    const countWithout = openFds()
    stream.enqueue(file)
    stream.enqueue(fifo.writeFd)
    fs.closeSync(file)
    fs.closeSync(fifo.writeFd)
    fifo.writeFd = -1
    t.is(openFds(), countWithout, 'the queue holds 2 duplicates of the 2 fds we closed')
    t.is(await stream.write('Fd!'), 3)
    t.is(openFds(), countWithout - 2, 'sent: the duplicates were closed')
    await stream.shutdown('write')
    const lines = await withTimeout(peer.done, 10_000, 'python exits')
    const summary = lines.at(-1)
    t.is(summary.bytes, 'hiFd!')
    t.is(summary.fds.length, 2)
    const [gotFile, gotPipe] = summary.fds
    t.like(gotFile, { byte: 2, kind: 'file', content: texts[0] })
    t.is(peerIdentity(gotFile), pathIdentity(paths[0]))
    t.like(gotPipe, { byte: 2, kind: 'pipe' })
    t.is(peerIdentity(gotPipe), fdIdentity(fifo.readFd))
    t.is(readAt(fifo.readFd, 4096, null), gotPipe.wrote, 'python wrote into our FIFO through the fd')
    t.false(fifo.isWriterOpen(), 'python closed it, and nothing else holds the write end')
  } finally {
    stream.close()
    fifo.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

// ---------------------------------------------------------------------------------------
// C: sendmsg / recvmsg
// ---------------------------------------------------------------------------------------

test.serial('C sendmsg with 2 SCM_RIGHTS cmsgs ([A, B] + [pipe]) → fd-queue: 3 fds in order', async (t) => {
  const { dir, paths, texts } = files(2, 'C sends')
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const peer = startPeer(cPeer, ['send', socketPath, paths[0], paths[1]])
  try {
    await withTimeout(peer.connected, 10_000, 'the C peer connects')
    const stream = listener.accept() // the connection is already waiting: this does not block
    listener.close()
    try {
      stream.setReadTimeout(10_000)
      const buf = Buffer.alloc(1)
      let bytes = ''
      const arrivals: Array<{ byte: number; fds: number[]; countBefore: number; countAfter: number }> = []
      for (;;) {
        const countBefore = openFds()
        const n = stream.read(buf)
        const countAfter = openFds()
        if (n === 0) break
        const fds: number[] = []
        for (let fd; (fd = stream.dequeue()) !== null;) fds.push(fd)
        if (fds.length > 0) arrivals.push({ byte: bytes.length, fds, countBefore, countAfter })
        bytes += buf.toString('latin1', 0, n)
        if (bytes.length === 4) break // the peer keeps the socket open until its pipe sees EOF
      }
      t.is(bytes, 'abCD')
      t.is(arrivals.length, 1)
      const [arrival] = arrivals
      t.is(arrival.byte, 2, 'the fds came with "C", the first byte of the sendmsg')
      t.is(arrival.fds.length, 3, 'both control messages arrived: 2 + 1 fds')
      t.is(arrival.countAfter, arrival.countBefore + 3)
      const [a, b, pipe] = arrival.fds
      for (const [fd, what] of [
        [a, 'A'],
        [b, 'B'],
        [pipe, 'pipe'],
      ] as const)
        checkReceived(t, fd, what)
      t.is(fdIdentity(a), pathIdentity(paths[0]), 'first fd of the first control message')
      t.is(fdIdentity(b), pathIdentity(paths[1]), 'second fd of the first control message')
      t.is(readAt(a), texts[0])
      t.is(readAt(b), texts[1])
      t.like(fdInfo(pipe), { kind: 'pipe', readable: false, writable: true }, 'the fd of the second control message')
      const message = `fd-queue ${process.pid} wrote into the C pipe`
      t.is(fs.writeSync(pipe, message), message.length)
      const before = openFds()
      closeAll([a, b, pipe])
      t.is(openFds(), before - 3)
      const lines = await withTimeout(peer.done, 10_000, 'the C peer exits')
      t.deepEqual(lines.at(-1), { sent: 2, controlMessages: 2, pipe: message })
    } finally {
      stream.close()
    }
  } finally {
    listener.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test.serial('fd-queue (UnixStream) → C recvmsg: 253 fds in one message, then 1 more, each with its byte', async (t) => {
  const { dir, paths, texts } = files(SCM_MAX_FD, 'file')
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const peer = startPeer(cPeer, ['recv', socketPath])
  const fifo = makeFifo()
  try {
    await withTimeout(peer.connected, 10_000, 'the C peer connects')
    const stream = listener.accept()
    listener.close()
    try {
      stream.setWriteTimeout(10_000)
      t.is(stream.write('hi'), 2)
      const countWithout = openFds()
      for (const file of paths) {
        const fd = fs.openSync(file, 'r')
        stream.enqueue(fd)
        fs.closeSync(fd)
      }
      t.is(openFds(), countWithout + SCM_MAX_FD, '253 duplicates wait in the queue')
      t.is(stream.write('MANY'), 4)
      t.is(openFds(), countWithout, 'all 253 went with one sendmsg and were closed here')
      stream.enqueue(fifo.writeFd)
      fs.closeSync(fifo.writeFd)
      fifo.writeFd = -1
      t.is(stream.write('P!'), 2)
      t.is(openFds(), countWithout - 1, 'the FIFO write end went too; only the peer holds it')
      stream.shutdown('write')
      const lines = await withTimeout(peer.done, 15_000, 'the C peer exits')
      const summary = lines.at(-1)
      t.deepEqual(summary, { bytes: 'hiMANYP!', fds: SCM_MAX_FD + 1, messages: 2 })
      const fds = lines.filter((line) => 'byte' in line)
      t.is(fds.length, SCM_MAX_FD + 1)
      const many = fds.slice(0, SCM_MAX_FD)
      t.true(
        many.every((entry) => entry.byte === 2),
        'all 253 came with "M"',
      )
      t.deepEqual(
        many.map((entry) => entry.content),
        texts,
        'in enqueue order, each read through its fd',
      )
      t.deepEqual(many.map(peerIdentity), paths.map(pathIdentity))
      const last = fds[SCM_MAX_FD]
      t.like(last, { byte: 6, kind: 'pipe' }, 'the FIFO end came with "P"')
      t.is(peerIdentity(last), fdIdentity(fifo.readFd))
      t.is(readAt(fifo.readFd, 4096, null), last.wrote)
      t.false(fifo.isWriterOpen())
    } finally {
      stream.close()
    }
  } finally {
    listener.close()
    fifo.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

// ---------------------------------------------------------------------------------------
// Go: syscall.UnixRights / syscall.ParseUnixRights
// ---------------------------------------------------------------------------------------

/** An FdServer at a fresh path and the first FdSocket it accepts. */
async function serveOne(): Promise<{ server: FdServer; socketPath: string; accepted: Promise<FdSocket> }> {
  const socketPath = tmpSocketPath()
  const server = createServer()
  const accepted = new Promise<FdSocket>((resolve) => server.once('connection', resolve))
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(socketPath, resolve)
    }),
    5000,
    'listen',
  )
  return { server, socketPath, accepted }
}

function closeServer(server: FdServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

test.serial(
  'python sends a byte out of band (MSG_OOB) with an fd: AsyncUnixStream and FdSocket read it in line, with its fd',
  async (t) => {
    const { dir, paths } = files(3, 'out of band')
    const check = (what: string, data: string, fds: number[], outcome: string) => {
      if (outcome !== 'sent') t.log(`${what}: this kernel refuses MSG_OOB on a Unix socket; "!" went in line`)
      t.is(data, 'before!after', `${what}: every byte, "!" in its place`)
      t.is(fds.length, 3, `${what}: every fd, the out-of-band byte's too`)
      fds.forEach((fd, i) => {
        checkReceived(t, fd, `${what} fd ${i}`)
        t.is(fdIdentity(fd), pathIdentity(paths[i]), `${what}: fd ${i} in order`)
      })
      closeAll(fds)
    }
    try {
      // AsyncUnixStream: read to the end, dequeuing after every read.
      const socketPath = tmpSocketPath()
      const listener = AsyncUnixListener.bind(socketPath)
      const peer = startPeer('python3', ['peer.py', 'oob', socketPath, ...paths])
      const stream = await withTimeout(listener.accept(), 10_000, 'python connects')
      listener.close()
      let data = ''
      const fds: number[] = []
      try {
        for (let chunk; (chunk = await withTimeout(stream.read(), 10_000, 'python sends')).length > 0;) {
          data += chunk.toString('latin1')
          for (let fd; (fd = stream.dequeue()) !== null;) fds.push(fd)
        }
      } finally {
        stream.close()
      }
      check('AsyncUnixStream', data, fds, (await withTimeout(peer.done, 10_000, 'python exits')).at(-1).oob)

      // FdSocket, with an 'fds' listener.
      const { server, socketPath: serverPath, accepted } = await serveOne()
      const second = startPeer('python3', ['peer.py', 'oob', serverPath, ...paths])
      const socket = await withTimeout(accepted, 10_000, 'python connects')
      let text = ''
      const handed: number[] = []
      socket.on('fds', (arrived: FdsArrived) => handed.push(...arrived))
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')))
      await withTimeout(new Promise((resolve) => socket.once('close', resolve)), 10_000, 'the socket closes')
      await closeServer(server)
      check('FdSocket', text, handed, (await withTimeout(second.done, 10_000, 'python exits')).at(-1).oob)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  },
)

test.serial(
  'Go UnixRights → fd-queue (FdSocket): the fds are dequeue-able with the chunk that starts "CD"',
  async (t) => {
    const { dir, paths, texts } = files(1, 'go sends')
    const { server, socketPath, accepted } = await serveOne()
    const peer = startPeer(goPeer, ['send', socketPath, paths[0]])
    const socket = await withTimeout(accepted, 10_000, 'go connects')
    try {
      const chunks: Array<{ text: string; fds: number[]; queued: number; count: number }> = []
      // The 'fds' listener is handed the fds of the chunk whose 'data' follows.
      let handed: number[] = []
      socket.on('fds', (fds: FdsArrived) => handed.push(...fds))
      const got = new Promise<void>((resolve, reject) => {
        socket.on('error', reject)
        let length = 0
        socket.on('data', (chunk: Buffer) => {
          chunks.push({
            text: chunk.toString('latin1'),
            fds: handed,
            queued: socket.queuedInboundFds,
            count: openFds(),
          })
          handed = []
          length += chunk.length
          if (length === 2) socket.write('k') // the peer sends "CD" only after this
          if (length === 4) resolve()
        })
      })
      await withTimeout(got, 10_000, 'go sends 4 bytes')
      t.deepEqual(
        chunks.map((c) => c.text),
        ['ab', 'CD'],
      )
      t.deepEqual(chunks[0].fds, [], 'no fd with "ab"')
      const [file, pipe] = chunks[1].fds
      t.is(chunks[1].fds.length, 2, 'both fds with "CD"')
      t.is(chunks[1].queued, 0, "handed to the 'fds' listener before the data, not queued")
      t.is(chunks[1].count, chunks[0].count + 2, 'exactly the 2 fds were installed')
      checkReceived(t, file, 'file')
      checkReceived(t, pipe, 'pipe')
      t.is(fdIdentity(file), pathIdentity(paths[0]))
      t.is(readAt(file), texts[0])
      t.like(fdInfo(pipe), { kind: 'pipe', readable: false, writable: true })
      const message = `fd-queue ${process.pid} wrote into the Go pipe`
      t.is(fs.writeSync(pipe, message), message.length)
      const before = openFds()
      closeAll([file, pipe])
      // At least these two closed (closing the pipe lets the peer finish and hang up,
      // and this side then lets go of the socket's reactor registration as well).
      t.true(openFds() <= before - 2)
      const lines = await withTimeout(peer.done, 10_000, 'go exits')
      t.deepEqual(lines.at(-1), { sent: 2, oob: 24, ack: 'k', pipe: message })
    } finally {
      socket.destroy()
      await closeServer(server)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  },
)

test.serial('fd-queue (FdSocket) → Go ParseUnixRights: a file and a pipe ride on byte 2', async (t) => {
  const { dir, paths, texts } = files(1, 'go receives')
  const { server, socketPath, accepted } = await serveOne()
  const peer = startPeer(goPeer, ['recv', socketPath])
  const socket = await withTimeout(accepted, 10_000, 'go connects')
  const fifo = makeFifo()
  try {
    socket.write('hi')
    const file = fs.openSync(paths[0], 'r')
    const countWithout = openFds()
    socket.enqueue(file)
    socket.enqueue(fifo.writeFd)
    fs.closeSync(file)
    fs.closeSync(fifo.writeFd)
    fifo.writeFd = -1
    t.is(openFds(), countWithout, '2 duplicates held for the next chunk, in place of the 2 we closed')
    await withTimeout(
      new Promise<void>((resolve, reject) =>
        socket.write('Go!', (error?: Error | null) => (error ? reject(error) : resolve())),
      ),
      10_000,
      'the write goes out',
    )
    t.is(openFds(), countWithout - 2, 'sent: both duplicates closed')
    socket.end()
    const lines = await withTimeout(peer.done, 10_000, 'go exits')
    const summary = lines.at(-1)
    t.deepEqual(summary, { bytes: 'hiGo!', fds: 2 })
    const [gotFile, gotPipe] = lines.filter((line) => 'byte' in line)
    t.like(gotFile, { byte: 2, kind: 'file', content: texts[0] })
    t.is(peerIdentity(gotFile), pathIdentity(paths[0]))
    t.like(gotPipe, { byte: 2, kind: 'pipe' })
    t.is(peerIdentity(gotPipe), fdIdentity(fifo.readFd))
    t.is(readAt(fifo.readFd, 4096, null), gotPipe.wrote)
    t.false(fifo.isWriterOpen())
  } finally {
    socket.destroy()
    fifo.close()
    await closeServer(server)
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

/**
 * A plan of `count` writes for the burst tests: short texts that name their index (so a
 * misplaced byte shows), each with fds of the 3 `files` (none, one, three; once 40), and
 * now and then one longer than a `sendmmsg` run takes (so runs are cut).
 */
function burstPlan(count: number): Array<[string, number[]]> {
  const messages: Array<[string, number[]]> = []
  for (let i = 0; i < count; i++) {
    const text = i % 61 === 60 ? `${i};${'x'.repeat(3000)}` : `${i};`
    let fds = [i % 3]
    if (i % 7 === 3) fds = []
    else if (i % 11 === 5) fds = [0, 1, 2]
    else if (i === 200) fds = Array.from({ length: 40 }, (_, k) => k % 3)
    messages.push([text, fds])
  }
  return messages
}

/**
 * A burst test's files (3, their dev:ino in `identities`) and plan of `count` writes, with
 * where each write starts in the stream and the stream's text.
 */
function burstSetup(count: number, prefix: string) {
  const { dir, paths } = files(3, prefix)
  const messages = burstPlan(count)
  const starts: number[] = []
  let text = ''
  for (const [part] of messages) {
    starts.push(text.length)
    text += part
  }
  return { dir, paths, identities: paths.map(pathIdentity), messages, starts, text }
}

test.serial(
  'python burst → fd-queue (FdSocket): runs of small fd-carrying messages keep every byte in order, and each fd comes with the chunk that holds the first byte of its send',
  async (t) => {
    const { dir, paths, identities, messages, starts, text } = burstSetup(400, 'burst')
    const plan = path.join(dir, 'plan.json')
    fs.writeFileSync(plan, JSON.stringify({ files: paths, messages }))
    const { server, socketPath, accepted } = await serveOne()
    const peer = startPeer('python3', ['peer.py', 'burst', socketPath, plan])
    const socket = await withTimeout(accepted, 10_000, 'python connects')
    const got: number[] = []
    try {
      let handed: number[] = []
      let received = ''
      let chunks = 0
      const mismatches: string[] = []
      socket.on('fds', (fds: FdsArrived) => {
        t.false(fds.truncated)
        handed.push(...fds)
        got.push(...fds)
      })
      const ended = new Promise<void>((resolve, reject) => {
        socket.on('error', reject)
        socket.on('end', resolve)
      })
      socket.on('data', (chunk: Buffer) => {
        const from = received.length
        received += chunk.toString('latin1')
        chunks++
        // The fds of the sends whose first byte is in this chunk, in order.
        const expected: string[] = []
        messages.forEach(([, fds], i) => {
          if (starts[i] >= from && starts[i] < received.length) expected.push(...fds.map((k) => identities[k]))
        })
        const identitiesHanded = handed.map(fdIdentity)
        if (JSON.stringify(identitiesHanded) !== JSON.stringify(expected)) {
          mismatches.push(
            `bytes ${from}..${received.length}: ${identitiesHanded.length} fds, expected ${expected.length}`,
          )
        }
        handed = []
      })
      socket.resume()
      await withTimeout(ended, 20_000, 'python sends 400 messages')
      t.is(received, text, 'every byte, in order')
      t.deepEqual(mismatches, [], "each chunk's fds are those of the sends that start in it")
      t.is(
        got.length,
        messages.reduce((sum, [, fds]) => sum + fds.length, 0),
        'every fd',
      )
      t.true(chunks < messages.length, `several messages per chunk (${chunks} chunks)`)
      for (const fd of got.slice(0, 3)) checkReceived(t, fd, 'a burst fd')
      socket.end()
      const lines = await withTimeout(peer.done, 10_000, 'python exits')
      t.deepEqual(lines.at(-1), { sent: messages.length })
    } finally {
      closeAll(got)
      socket.destroy()
      await closeServer(server)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  },
)

linuxSerialTest(
  'sendmmsg and recvmmsg refused (seccomp, EPERM): FdSocket sends and reads one message per call instead, and loses nothing',
  async (t) => {
    const { dir, paths } = files(2, 'refused')
    // Both directions in one child: 300 writes with an fd each, read by the other end,
    // which checks each chunk's fds against the writes that start in it.
    const script = `
      const fs = require('node:fs')
      const { FdSocket } = require(${JSON.stringify(path.join(ROOT, 'index.js'))})
      const files = ${JSON.stringify(paths)}.map((p) => fs.openSync(p, 'r'))
      const ids = files.map((fd) => { const s = fs.fstatSync(fd); return s.dev + ':' + s.ino })
      const [a, b] = FdSocket.pair()
      let expected = '', starts = []
      for (let i = 0; i < 300; i++) {
        starts.push(expected.length)
        expected += i + ';'
        a.enqueue(files[i % 2])
        a.write(i + ';')
      }
      a.end()
      let received = '', handed = [], bad = 0, count = 0
      b.on('fds', (fds) => handed.push(...fds))
      b.on('data', (chunk) => {
        const from = received.length
        received += chunk
        const want = []
        starts.forEach((s, i) => { if (s >= from && s < received.length) want.push(ids[i % 2]) })
        const got = handed.map((fd) => { const s = fs.fstatSync(fd); fs.closeSync(fd); return s.dev + ':' + s.ino })
        if (JSON.stringify(got) !== JSON.stringify(want)) bad++
        count += got.length
        handed = []
      })
      b.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(1) })
      b.on('end', () => { b.end(); console.log(JSON.stringify({ same: received === expected, bad, count })) })
    `
    try {
      const result = await runProcess(noMmsg, [process.execPath, '-e', script], { cwd: dir, timeoutMs: 30_000 })
      t.is(result.status, 0, result.stderr + result.stdout)
      t.deepEqual(JSON.parse(result.stdout.trim().split('\n').at(-1)!), { same: true, bad: 0, count: 300 })
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  },
)

test.serial(
  'fd-queue (FdSocket) → python recv_fds: 1,000 writes made at once, short and long, go out in runs while the socket fills, and each fd rides on the first byte of its write',
  async (t) => {
    const { dir, paths, identities, messages, starts, text } = burstSetup(1000, 'writes')
    const { server, socketPath, accepted } = await serveOne()
    const peer = startPeer('python3', ['peer.py', 'recv', socketPath])
    const socket = await withTimeout(accepted, 10_000, 'python connects')
    const opened = paths.map((file) => fs.openSync(file, 'r'))
    try {
      const before = openFds()
      let full = false
      for (const [part, fds] of messages) {
        for (const k of fds) socket.enqueue(opened[k])
        if (!socket.write(part)) full = true
      }
      t.true(full, 'the writes went past the buffer')
      socket.end()
      const lines = await withTimeout(peer.done, 20_000, 'python reads every byte')
      const summary = lines.at(-1)
      t.is(summary.bytes, text, 'every byte, in order')
      const arrived = summary.fds.map(
        (fd: { byte: number; dev: string; ino: string }) => `${fd.byte} ${peerIdentity(fd)}`,
      )
      const expected = messages.flatMap(([, fds], i) => fds.map((k) => `${starts[i]} ${identities[k]}`))
      t.deepEqual(arrived, expected, 'each fd with the first byte of its write, in order')
      t.true(openFds() <= before, 'every duplicate was closed once sent')
    } finally {
      closeAll(opened)
      socket.destroy()
      await closeServer(server)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  },
)
