/**
 * The blocking classes: UnixStream / UnixListener. Fds travel through real sockets, in this
 * process and between processes, and every received fd is checked by reading the file
 * through it and by dev:ino equality with the original.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { UnixListener, UnixStream } from '../index.js'
import { startDriver } from './fixtures/driver.js'
import {
  closeAll,
  fdFlags,
  fdIdentity,
  lastJson,
  makeFifo,
  O_CLOEXEC,
  openFdNumbers,
  openFds,
  pathIdentity,
  settledOpenFds,
  readAt,
  ROOT,
  runProcess,
  scaled,
  startFixture,
  thrown,
  tmpDir,
  tmpFile,
  tmpSocketPath,
} from './helpers.js'
import { checkNoFdLeaked } from './async-helpers.js'

const ERRNO = os.constants.errno

checkNoFdLeaked(settledOpenFds)

/** One read, as a string (streams from `pair()` have a read timeout as a safety net). */
function readString(stream: UnixStream, size = 4096): string {
  const buf = Buffer.alloc(size)
  const n = stream.read(buf)
  return buf.subarray(0, n).toString('utf8')
}

/** Dequeues until null. */
function dequeueAll(stream: UnixStream): number[] {
  const fds: number[] = []
  for (let fd = stream.dequeue(); fd !== null; fd = stream.dequeue()) fds.push(fd)
  return fds
}

function pair(timeoutMs = 5000): [UnixStream, UnixStream] {
  const [a, b] = UnixStream.pair()
  a.setReadTimeout(timeoutMs)
  b.setReadTimeout(timeoutMs)
  return [a, b]
}

test.serial('pair: bytes go both ways, write returns the bytes written', (t) => {
  const [a, b] = pair()
  t.is(a.write('hello'), 5)
  t.is(readString(b), 'hello')
  t.is(b.write(Buffer.from([0, 1, 2, 255])), 4)
  const buf = new Uint8Array(16)
  t.is(a.read(buf), 4)
  t.deepEqual([...buf.subarray(0, 4)], [0, 1, 2, 255])
  t.is(a.dequeue(), null)
  t.is(b.dequeue(), null)
  a.close()
  b.close()
})

test.serial('pair: strings are UTF-8, views write and read their own bytes only, flush is a no-op', (t) => {
  const [a, b] = pair()
  t.is(a.write('héllo'), 6)
  t.is(readString(b), 'héllo')
  const source = Buffer.from('xxviewxx')
  t.is(a.write(source.subarray(2, 6)), 4)
  const target = Buffer.alloc(10, '-')
  t.is(b.read(target.subarray(3, 8)), 4)
  t.is(target.toString(), '---view---')
  t.notThrows(() => a.flush())
  a.close()
  b.close()
})

test.serial("shutdown('read') makes this side's reads return end of stream", (t) => {
  const [a, b] = pair()
  b.shutdown('read')
  t.is(b.read(Buffer.alloc(4)), 0)
  b.write('other way')
  t.is(readString(a), 'other way')
  a.close()
  b.close()
})

test.serial('pair: an fd passed in-process reads the same file (content and dev:ino)', (t) => {
  const file = tmpFile('content of the passed file')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  t.is(b.dequeue(), null)
  a.enqueue(fd)
  t.is(a.write('x'), 1)
  t.is(readString(b), 'x')
  const got = b.dequeue()
  t.not(got, null)
  t.not(got, fd, 'the receiver gets its own fd, not the sender number')
  t.is(readAt(got!), 'content of the passed file')
  t.is(fdIdentity(got!), pathIdentity(file))
  t.is(fdIdentity(got!), fdIdentity(fd))
  t.is(b.dequeue(), null, 'exactly one fd arrived')
  closeAll([got, fd])
  a.close()
  b.close()
})

test.serial('enqueue accepts an object with an fd', (t) => {
  const file = tmpFile('via { fd }')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  a.enqueue({ fd })
  a.write('o')
  t.is(readString(b), 'o')
  const got = b.dequeue()!
  t.is(readAt(got), 'via { fd }')
  t.is(fdIdentity(got), pathIdentity(file))
  closeAll([got, fd])
  a.close()
  b.close()
})

test.serial('the caller may close its own fd right after enqueue; the fd still arrives and works', (t) => {
  const original = tmpFile('the original file')
  const other = tmpFile('a different file')
  const [a, b] = pair()
  const fd = fs.openSync(original, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  // reuse the number for something else: the queue must hold a duplicate, not the number
  const reused = fs.openSync(other, 'r')
  a.write('z')
  t.is(readString(b), 'z')
  const got = b.dequeue()!
  t.is(readAt(got), 'the original file')
  t.is(fdIdentity(got), pathIdentity(original))
  t.not(fdIdentity(got), pathIdentity(other))
  closeAll([got, reused])
  a.close()
  b.close()
})

test.serial('several fds in one write arrive in order', (t) => {
  const dir = tmpDir()
  const files = ['first', 'second', 'third', 'fourth'].map((name) => tmpFile(`file ${name}`, dir, name))
  const [a, b] = pair()
  for (const file of files) {
    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
  }
  a.write('four fds')
  t.is(readString(b), 'four fds')
  const got = dequeueAll(b)
  t.is(got.length, 4)
  t.deepEqual(
    got.map((fd) => readAt(fd)),
    ['file first', 'file second', 'file third', 'file fourth'],
  )
  t.deepEqual(got.map(fdIdentity), files.map(pathIdentity))
  closeAll(got)
  a.close()
  b.close()
})

test.serial('enqueued fds ride on the next write only, once', (t) => {
  const file = tmpFile('rides on write 1')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('1')
  a.write('2')
  // the kernel ends a read right after the data of a send that carried fds: if the fd had
  // ridden on '2', this read would return '12'
  t.is(readString(b), '1')
  const got = dequeueAll(b)
  t.is(got.length, 1)
  t.is(readAt(got[0]), 'rides on write 1')
  t.is(readString(b), '2')
  t.deepEqual(dequeueAll(b), [], 'the second write carried nothing')
  closeAll(got)
  a.close()
  b.close()
})

test.serial('fds are dequeue-able after the read that returns the first byte of their write, not before', (t) => {
  const file = tmpFile('arrives with b')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  a.write('a')
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('b')
  const one = new Uint8Array(1)
  t.is(b.read(one), 1)
  t.is(String.fromCharCode(one[0]), 'a')
  t.is(b.dequeue(), null, 'no fd before the byte that carried it was read')
  t.is(b.read(one), 1)
  t.is(String.fromCharCode(one[0]), 'b')
  const got = b.dequeue()
  t.not(got, null)
  t.is(readAt(got!), 'arrives with b')
  t.is(b.dequeue(), null)
  closeAll([got])
  a.close()
  b.close()
})

test.serial('fds on a multi-byte write arrive with its first byte even when read one byte at a time', (t) => {
  const file = tmpFile('multi')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('xyz')
  const one = new Uint8Array(1)
  t.is(b.read(one), 1)
  const got = b.dequeue()
  t.not(got, null)
  t.is(readAt(got!), 'multi')
  t.is(b.read(one), 1)
  t.is(b.read(one), 1)
  t.is(String.fromCharCode(one[0]), 'z')
  t.is(b.dequeue(), null, 'no duplicate with the later bytes of the same write')
  closeAll([got])
  a.close()
  b.close()
})

test.serial('a pipe (FIFO) fd and a socket fd pass too and stay usable', (t) => {
  const fifo = makeFifo()
  const [p, q] = pair()
  const [a, b] = pair()
  a.enqueue(fifo.writeFd)
  a.enqueue(p.fd)
  a.write('pipe+socket')
  t.is(readString(b), 'pipe+socket')
  const [pipeFd, sockFd] = dequeueAll(b)
  t.true(fs.fstatSync(pipeFd).isFIFO())
  t.is(fdIdentity(pipeFd), fdIdentity(fifo.writeFd))
  fs.writeSync(pipeFd, 'through the pipe')
  t.is(readAt(fifo.readFd, 64, null), 'through the pipe')

  t.true(fs.fstatSync(sockFd).isSocket())
  t.is(fdIdentity(sockFd), fdIdentity(p.fd))
  fs.writeSync(sockFd, 'through the socket')
  t.is(readString(q), 'through the socket')
  q.write('and back')
  t.is(readAt(sockFd, 64, null), 'and back')

  closeAll([pipeFd, sockFd])
  fifo.close()
  for (const s of [a, b, p, q]) s.close()
})

test.serial('received fds are close-on-exec: a child process does not inherit them', (t) => {
  const file = tmpFile('cloexec')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  a.enqueue(fd)
  a.write('c')
  readString(b)
  const got = b.dequeue()!
  t.is(fdIdentity(got), pathIdentity(file))
  t.not(fdFlags(got) & O_CLOEXEC, 0, 'close-on-exec is set (on Linux: O_CLOEXEC in /proc/self/fdinfo flags)')

  // A Python child looks at fd `got` in its own table: F_GETFD answers EBADF when the fd was
  // not inherited, else the fd's flags there.
  const PROBE = [
    'import fcntl, sys',
    'try:',
    '    flags = fcntl.fcntl(int(sys.argv[1]), fcntl.F_GETFD)',
    'except OSError:',
    '    print("closed")',
    'else:',
    '    print("open", flags & fcntl.FD_CLOEXEC)',
  ].join('\n')
  const look = (fd: number, stdio: (string | number)[]) => {
    const run = spawnSync('python3', ['-c', PROBE, String(fd)], { stdio: stdio as any, encoding: 'utf8' })
    t.is(run.status, 0, run.stderr)
    return run.stdout.trim()
  }
  t.is(look(1, ['ignore', 'pipe', 'pipe']), 'open 0', 'the probe sees an inherited fd')
  t.is(look(got, ['ignore', 'pipe', 'pipe']), 'closed', `fd ${got} was inherited by the child`)

  // Negative control: the same fd handed to the child at the same number WITHOUT
  // close-on-exec (libuv dup2s it) is seen there, without close-on-exec.
  const mapped: (string | number)[] = ['ignore', 'pipe', 'pipe']
  while (mapped.length < got) mapped.push('ignore')
  mapped.push(got)
  t.is(look(got, mapped), 'open 0', 'a non-close-on-exec fd at that number would be seen')

  closeAll([got, fd])
  a.close()
  b.close()
})

test.serial('the duplicate enqueue keeps is close-on-exec, and so are the sockets themselves', (t) => {
  const file = tmpFile('queued duplicate')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  const before = openFdNumbers()
  a.enqueue(fd)
  const added = openFdNumbers().filter((n) => !before.includes(n))
  t.is(added.length, 1, 'enqueue made exactly one duplicate')
  t.is(fdIdentity(added[0]), pathIdentity(file))
  t.not(fdFlags(added[0]) & O_CLOEXEC, 0)
  fs.closeSync(fd)

  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const client = UnixStream.connect(socketPath)
  const server = listener.accept()
  for (const s of [a, b, listener, client, server]) t.not(fdFlags(s.fd) & O_CLOEXEC, 0)
  for (const s of [a, b, listener, client, server]) s.close()
})

test.serial("shutdown('write') gives the peer end of stream; the other direction keeps working", (t) => {
  const [a, b] = pair()
  a.write('before')
  a.shutdown('write')
  t.is(readString(b), 'before')
  t.is(b.read(Buffer.alloc(8)), 0)
  t.is(b.read(Buffer.alloc(8)), 0, 'end of stream stays end of stream')
  b.write('still open')
  t.is(readString(a), 'still open')
  const error = thrown(() => a.write('x'))
  t.is(error.code, 'EPIPE')
  t.is(error.errno, -ERRNO.EPIPE)
  t.is(error.syscall, 'sendmsg')
  a.close()
  b.close()
})

test.serial('shutdown() (both) gives end of stream both ways', (t) => {
  const [a, b] = pair()
  a.shutdown()
  t.is(b.read(Buffer.alloc(8)), 0)
  t.is(a.read(Buffer.alloc(8)), 0)
  a.close()
  b.close()
})

test.serial('read returns 0 at end of stream, after the last bytes and their fds', (t) => {
  const file = tmpFile('sent just before close')
  const fd = fs.openSync(file, 'r')
  const [a, b] = pair()
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('last')
  a.close()
  t.is(readString(b), 'last')
  const got = b.dequeue()!
  t.is(readAt(got), 'sent just before close')
  t.is(b.read(Buffer.alloc(8)), 0)
  t.is(b.read(Buffer.alloc(8)), 0)
  closeAll([got])
  b.close()
})

test.serial('setReadTimeout: a read with no data throws ETIMEDOUT and loses nothing', (t) => {
  const dir = tmpDir()
  const early = tmpFile('queued before the timeout', dir, 'early')
  const late = tmpFile('sent after the timeout', dir, 'late')
  const [a, b] = pair()
  let fd = fs.openSync(early, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('1')
  t.is(readString(b), '1') // its fd stays in b's inbound queue

  b.setReadTimeout(60)
  const started = Date.now()
  const error = thrown(() => b.read(Buffer.alloc(8)))
  const elapsed = Date.now() - started
  t.is(error.code, 'ETIMEDOUT')
  t.is(error.errno, -ERRNO.ETIMEDOUT)
  t.is(error.syscall, 'recvmsg')
  t.true(elapsed >= 50 && elapsed < scaled(3000), `timed out after ${elapsed} ms`)

  fd = fs.openSync(late, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  a.write('after the timeout')
  t.is(readString(b), 'after the timeout')
  const got = dequeueAll(b)
  t.is(got.length, 2)
  t.is(readAt(got[0]), 'queued before the timeout')
  t.is(readAt(got[1]), 'sent after the timeout')
  t.is(fdIdentity(got[1]), pathIdentity(late))

  // A fraction of a millisecond is a timeout too (not rounded down to none).
  b.setReadTimeout(0.5)
  t.is(thrown(() => b.read(Buffer.alloc(8))).code, 'ETIMEDOUT', 'setReadTimeout(0.5)')
  b.setReadTimeout(null) // clearing the timeout is allowed
  closeAll(got)
  a.close()
  b.close()
})

test.serial('setReadTimeout: reads that time out while a peer process is slow lose nothing', async (t) => {
  const file = tmpFile('sent late by a child')
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  // The child sends only once it got a byte from us, which we write after two timeouts.
  const child = startFixture('send-fds', [
    JSON.stringify({ connect: socketPath, messages: [{ data: 'late data', files: [file], afterByte: true }] }),
  ])
  await child.waitForLine(/^connected$/)
  const stream = listener.accept()
  stream.setReadTimeout(50)
  let timeouts = 0
  let data = ''
  const deadline = Date.now() + scaled(10_000)
  while (data.length < 'late data'.length && Date.now() < deadline) {
    try {
      const part = readString(stream)
      if (part === '') break // end of stream: the child failed (its stderr says why)
      data += part
    } catch (error) {
      if ((error as { code?: string }).code !== 'ETIMEDOUT') throw error
      timeouts += 1
      if (timeouts === 2) stream.write('!')
    }
  }
  t.true(timeouts >= 2, `only ${timeouts} timeouts before the data`)
  t.is(data, 'late data')
  const got = dequeueAll(stream)
  t.is(got.length, 1)
  t.is(readAt(got[0]), 'sent late by a child')
  t.is(fdIdentity(got[0]), pathIdentity(file))
  const result = await child.done
  t.is(result.code, 0, result.stderr)
  closeAll(got)
  stream.close()
  listener.close()
})

test.serial(
  'setWriteTimeout: a full socket throws ETIMEDOUT, the queued fd rides on the next write exactly once',
  (t) => {
    const file = tmpFile('survived a write timeout')
    const [a, b] = pair()
    a.setWriteTimeout(50)
    const chunk = Buffer.alloc(65536, 0x2e)
    let written = 0
    let error: any
    for (let i = 0; i < 10_000 && !error; i++) {
      try {
        written += a.write(chunk)
      } catch (e) {
        error = e
      }
    }
    t.truthy(error, 'the socket never filled up')
    t.is(error.code, 'ETIMEDOUT')
    t.is(error.errno, -ERRNO.ETIMEDOUT)

    const fd = fs.openSync(file, 'r')
    a.enqueue(fd)
    fs.closeSync(fd)
    const before = openFds()
    const again = thrown(() => a.write('Z'))
    t.is(again.code, 'ETIMEDOUT', 'the fd-carrying write timed out too')
    t.is(openFds(), before, 'the duplicate is still queued (neither closed nor duplicated)')

    // drain the peer: no fd may come with the filler bytes
    const buf = Buffer.alloc(1 << 20)
    let drained = 0
    while (drained < written) {
      const n = b.read(buf.subarray(0, Math.min(buf.length, written - drained)))
      t.not(n, 0)
      t.true(buf.subarray(0, n).every((byte) => byte === 0x2e))
      drained += n
      t.is(b.dequeue(), null)
    }
    t.is(a.write('Z'), 1)
    t.is(readString(b), 'Z')
    const got = dequeueAll(b)
    t.is(got.length, 1)
    t.is(readAt(got[0]), 'survived a write timeout')
    t.is(fdIdentity(got[0]), pathIdentity(file))
    a.write('W')
    t.is(readString(b), 'W')
    t.is(b.dequeue(), null, 'no duplicate on the following write')
    a.setWriteTimeout(null)
    closeAll(got)
    a.close()
    b.close()
  },
)

test.serial('a partial write carries the fds once; the rest of the bytes goes without them', (t) => {
  const file = tmpFile('rides on a partial write')
  const [a, b] = pair()
  a.setWriteTimeout(50)
  b.setReadTimeout(50)
  const total = 4 << 20
  const data = Buffer.alloc(total)
  for (let i = 0; i < total; i++) data[i] = i % 251
  const fd = fs.openSync(file, 'r')
  a.enqueue(fd)
  fs.closeSync(fd)
  let sent = 0
  let partials = 0
  const received: Buffer[] = []
  let receivedBytes = 0
  const fds: number[][] = []
  const buf = Buffer.alloc(1 << 20)
  while (receivedBytes < total) {
    if (sent < total) {
      try {
        const n = a.write(data.subarray(sent))
        if (n < total - sent) partials += 1
        sent += n
      } catch (error) {
        if ((error as { code?: string }).code !== 'ETIMEDOUT') throw error
      }
    }
    // drain what is there
    for (;;) {
      let n: number
      try {
        n = b.read(buf)
      } catch (error) {
        if ((error as { code?: string }).code !== 'ETIMEDOUT') throw error
        break
      }
      t.not(n, 0)
      received.push(Buffer.from(buf.subarray(0, n)))
      fds.push(dequeueAll(b))
      receivedBytes += n
    }
  }
  t.true(partials >= 1, 'the big write was never partial')
  t.true(Buffer.concat(received).equals(data), 'every byte in order')
  t.is(fds[0].length, 1, 'the fd came with the first read')
  t.deepEqual(
    fds.slice(1).map((f) => f.length),
    fds.slice(1).map(() => 0),
    'no duplicate with the rest',
  )
  t.is(readAt(fds[0][0]), 'rides on a partial write')
  t.is(fdIdentity(fds[0][0]), pathIdentity(file))
  closeAll(fds.flat())
  a.close()
  b.close()
})

test.serial('a read interrupted by signals (EINTR) is retried and loses nothing', async (t) => {
  const file = tmpFile('after the signals')
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const child = startFixture('signal-read', [socketPath])
  await child.waitForLine(/^connected$/)
  const stream = listener.accept()
  await child.waitForLine(/^reading$/)
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 80))
    child.child.kill('SIGUSR2')
  }
  await new Promise((resolve) => setTimeout(resolve, 80))
  const fd = fs.openSync(file, 'r')
  stream.enqueue(fd)
  fs.closeSync(fd)
  stream.write('after signals')
  const result = await child.done
  t.is(result.code, 0, result.stderr)
  const report = lastJson(result)
  t.is(report.error, undefined, 'the read did not fail with EINTR')
  t.is(report.data, 'after signals')
  t.deepEqual(report.contents, ['after the signals'])
  t.true(report.signals >= 1 && report.signals <= 3, `${report.signals} signals handled`)
  stream.close()
  listener.close()
})

test.serial('connect({ timeout }) to a full backlog times out under a signal storm (EINTR)', async (t) => {
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const child = startFixture('signal-connect', [socketPath], { timeoutMs: 30_000 })
  await child.waitForLine(/^filled$/)
  // A signal every millisecond: a timeout that started over at each would never run out.
  const storm = startDriver(['signals', child.child.pid!, 1000])
  const result = await child.done
  storm.kill()
  await storm.exited
  listener.close()
  t.false(result.timedOut, 'the connect returned')
  t.is(result.code, 0, result.stderr)
  const report = lastJson(result)
  t.is(report.code, 'ETIMEDOUT')
  t.true(report.signalsMeanwhile, 'signals came during the connect')
  t.true(report.waitedMs >= 299, `waited ${report.waitedMs} ms in all, the whole timeout`)
})

test.serial('a listener bound to a relative path removes its own file on close(), after a chdir too', async (t) => {
  // In a child: a test worker cannot change directory.
  const script = `
    const fs = require('node:fs')
    const m = require(${JSON.stringify(path.join(ROOT, 'index.js'))})
    const kinds = {
      UnixListener: (p) => m.UnixListener.bind(p),
      AsyncUnixListener: (p) => m.AsyncUnixListener.bind(p),
      SeqpacketListener: (p) => m.SeqpacketListener.bind(p),
      DatagramSocket: (p) => m.DatagramSocket.bind(p),
    }
    const left = {}
    for (const [kind, bind] of Object.entries(kinds)) {
      const dir = fs.mkdtempSync('/tmp/fdq-rel-')
      process.chdir(dir)
      const listener = bind(kind + '.sock')
      process.chdir('/')
      listener.close()
      left[kind] = fs.existsSync(dir + '/' + kind + '.sock')
      fs.rmSync(dir, { recursive: true, force: true })
    }
    const dir = fs.mkdtempSync('/tmp/fdq-rel-')
    process.chdir(dir)
    const server = m.createServer().listen('FdServer.sock', () => {
      process.chdir('/')
      server.close(() => {
        left.FdServer = fs.existsSync(dir + '/FdServer.sock')
        fs.rmSync(dir, { recursive: true, force: true })
        console.log(JSON.stringify(left))
      })
    })
  `
  const result = await runProcess(process.execPath, ['-e', script], { cwd: tmpDir(), timeoutMs: 30_000 })
  t.is(result.status, 0, result.stderr)
  t.deepEqual(JSON.parse(result.stdout.trim().split('\n').at(-1)!), {
    UnixListener: false,
    AsyncUnixListener: false,
    SeqpacketListener: false,
    DatagramSocket: false,
    FdServer: false,
  })
})

test.serial('UnixListener: bind, accept, pass an fd, close removes the socket file', (t) => {
  const socketPath = tmpSocketPath()
  const file = tmpFile('over a bound socket')
  const listener = UnixListener.bind(socketPath)
  t.true(fs.lstatSync(socketPath).isSocket())
  t.true(fs.fstatSync(listener.fd).isSocket())
  t.is(listener.path, socketPath)
  const client = UnixStream.connect(socketPath)
  const server = listener.accept()
  server.setReadTimeout(5000)
  client.setReadTimeout(5000)
  const fd = fs.openSync(file, 'r')
  client.enqueue(fd)
  fs.closeSync(fd)
  client.write('hi')
  t.is(readString(server), 'hi')
  const got = server.dequeue()!
  t.is(readAt(got), 'over a bound socket')
  t.is(fdIdentity(got), pathIdentity(file))
  server.write('ho')
  t.is(readString(client), 'ho')
  listener.close()
  t.false(fs.existsSync(socketPath))
  t.is(listener.fd, -1)
  // accepted connections outlive their listener
  client.write('still')
  t.is(readString(server), 'still')
  closeAll([got])
  client.close()
  server.close()
})

test.serial('UnixListener.bind on an existing path throws EADDRINUSE with errno, syscall and path', (t) => {
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const before = openFds()
  const error = thrown(() => UnixListener.bind(socketPath))
  t.true(error instanceof Error)
  t.is(error.code, 'EADDRINUSE')
  t.is(error.errno, -ERRNO.EADDRINUSE)
  t.is(error.syscall, 'bind')
  t.is(error.path, socketPath)
  t.is(openFds(), before, 'the failed bind leaked no socket')
  // the first listener and its file are untouched
  t.true(fs.lstatSync(socketPath).isSocket())
  const client = UnixStream.connect(socketPath)
  const server = listener.accept()
  client.write('ok')
  server.setReadTimeout(5000)
  t.is(readString(server), 'ok')
  client.close()
  server.close()
  listener.close()

  // a regular file in the way is not replaced either
  const regular = tmpFile('not a socket')
  const blocked = thrown(() => UnixListener.bind(regular))
  t.is(blocked.code, 'EADDRINUSE')
  t.is(blocked.path, regular)
  t.is(fs.readFileSync(regular, 'utf8'), 'not a socket')
})

test.serial('a second listener close() does not remove a newer socket file at the same path', (t) => {
  const socketPath = tmpSocketPath()
  const first = UnixListener.bind(socketPath)
  first.close()
  t.false(fs.existsSync(socketPath))
  const second = UnixListener.bind(socketPath)
  first.close()
  t.true(fs.lstatSync(socketPath).isSocket(), 'the second listener’s file survived')
  const client = UnixStream.connect(socketPath)
  const server = second.accept()
  client.write('second')
  server.setReadTimeout(5000)
  t.is(readString(server), 'second')
  client.close()
  server.close()
  second.close()
  t.false(fs.existsSync(socketPath))
})

test.serial('connect to a missing path throws ENOENT with errno, syscall and path', (t) => {
  const socketPath = tmpSocketPath()
  const before = openFds()
  const error = thrown(() => UnixStream.connect(socketPath))
  t.true(error instanceof Error)
  t.is(error.code, 'ENOENT')
  t.is(error.errno, -ERRNO.ENOENT)
  t.is(error.syscall, 'connect')
  t.is(error.path, socketPath)
  t.is(openFds(), before, 'the failed connect leaked no socket')
})

test.serial('bind in a missing directory throws ENOENT with syscall bind and the path', (t) => {
  const socketPath = path.join(tmpDir(), 'missing', 's')
  const error = thrown(() => UnixListener.bind(socketPath))
  t.is(error.code, 'ENOENT')
  t.is(error.errno, -ERRNO.ENOENT)
  t.is(error.syscall, 'bind')
  t.is(error.path, socketPath)
})

test.serial('connect to a socket file nobody listens on throws ECONNREFUSED', (t) => {
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  // keep a dead socket file: move it away before the listener closes (close only removes
  // the file at its own path)
  const dead = path.join(path.dirname(socketPath), 'dead')
  fs.renameSync(socketPath, dead)
  listener.close()
  t.true(fs.lstatSync(dead).isSocket())
  const before = openFds()
  const error = thrown(() => UnixStream.connect(dead))
  t.is(error.code, 'ECONNREFUSED')
  t.is(error.errno, -ERRNO.ECONNREFUSED)
  t.is(error.syscall, 'connect')
  t.is(error.path, dead)
  t.is(openFds(), before)
})

test.serial('the fd property is the open socket, read-only, and -1 after close', (t) => {
  const [a, b] = pair()
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  for (const s of [a, b, listener]) {
    t.true(fs.fstatSync(s.fd).isSocket())
    t.false(Reflect.set(s, 'fd', 12345))
  }
  t.not(fdIdentity(a.fd), fdIdentity(b.fd))
  // the fd really is a's end: bytes written to it with write(2) come out of b
  fs.writeSync(a.fd, 'raw')
  t.is(readString(b), 'raw')
  const aFd = a.fd
  a.close()
  b.close()
  listener.close()
  t.is(a.fd, -1)
  t.is(b.fd, -1)
  t.is(listener.fd, -1)
  t.throws(() => fs.fstatSync(aFd), { code: 'EBADF' }, 'the socket itself was closed')
})

test.serial('across processes: a child connects to our listener and sends fds of its files', async (t) => {
  const dir = tmpDir()
  const files = ['one', 'two', 'three'].map((name) => tmpFile(`child file ${name}`, dir, name))
  const extra = tmpFile('second message', dir, 'extra')
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const child = startFixture('send-fds', [
    JSON.stringify({
      connect: socketPath,
      messages: [{ data: 'plain' }, { data: 'three fds', files }, { data: 'one more', files: [extra] }],
    }),
  ])
  // once the child printed this its connection is in the backlog: accept cannot hang
  await child.waitForLine(/^connected$/)
  const stream = listener.accept()
  stream.setReadTimeout(10_000)
  const result = await child.done
  t.is(result.code, 0, result.stderr)
  t.deepEqual(lastJson(result), { sent: 3 })

  // the child is gone; its data and fds wait in the socket
  const one = new Uint8Array(1)
  let text = ''
  const fdsAfterByte: number[][] = []
  for (;;) {
    const n = stream.read(one)
    if (n === 0) break
    text += String.fromCharCode(one[0])
    fdsAfterByte.push(dequeueAll(stream))
  }
  t.is(text, 'plainthree fdsone more')
  const carriers = fdsAfterByte.map((fds, i) => [i, fds.length]).filter(([, n]) => n > 0)
  t.deepEqual(
    carriers,
    [
      [5, 3],
      [14, 1],
    ],
    'fds arrive exactly with the first byte of their write',
  )
  const [first, second] = [fdsAfterByte[5], fdsAfterByte[14]]
  t.deepEqual(
    first.map((fd) => readAt(fd)),
    ['child file one', 'child file two', 'child file three'],
  )
  t.deepEqual(first.map(fdIdentity), files.map(pathIdentity))
  t.is(readAt(second[0]), 'second message')
  t.is(fdIdentity(second[0]), pathIdentity(extra))
  closeAll([...first, ...second])
  stream.close()
  listener.close()
})

test.serial('across processes: we connect to a child listener and send it fds', async (t) => {
  const dir = tmpDir()
  const files = ['alpha', 'beta'].map((name) => tmpFile(`parent file ${name}`, dir, name))
  const fifo = makeFifo()
  const socketPath = tmpSocketPath()
  const child = startFixture('recv-fds', ['listen', socketPath])
  await child.waitForLine(/^listening$/)
  const stream = UnixStream.connect(socketPath)
  const fds = files.map((file) => fs.openSync(file, 'r'))
  for (const fd of fds) stream.enqueue(fd)
  closeAll(fds)
  stream.write('two files')
  stream.write('no fds')
  stream.enqueue(fifo.writeFd)
  stream.write('a pipe')
  stream.close()
  const result = await child.done
  t.is(result.code, 0, result.stderr)
  const { reads } = lastJson(result)
  t.is(reads.map((r: { data: string }) => r.data).join(''), 'two filesno fdsa pipe')
  const withFds = reads.filter((r: { fds: unknown[] }) => r.fds.length > 0)
  t.is(withFds.length, 2)
  // a read ends right after the data of a send that carried fds
  t.is(withFds[0].data, 'two files')
  t.deepEqual(
    withFds[0].fds.map((f: { content: string }) => f.content),
    ['parent file alpha', 'parent file beta'],
  )
  t.deepEqual(
    withFds[0].fds.map((f: { identity: string }) => f.identity),
    files.map(pathIdentity),
  )
  // 'no fds' may be glued in front (it carried nothing), but the pipe came with 'a pipe'
  t.true(withFds[1].data === 'a pipe' || withFds[1].data === 'no fdsa pipe', withFds[1].data)
  t.is(withFds[1].fds.length, 1)
  t.true(withFds[1].fds[0].isFIFO)
  t.is(withFds[1].fds[0].identity, fdIdentity(fifo.writeFd))
  t.true(
    withFds.every((r: { fds: { cloexec: boolean }[] }) => r.fds.every((f) => f.cloexec)),
    'close-on-exec in the child too',
  )
  fifo.close()
})

test.serial('across processes: a child connects to our listener and receives fds', async (t) => {
  const file = tmpFile('parent to connecting child')
  const socketPath = tmpSocketPath()
  const listener = UnixListener.bind(socketPath)
  const child = startFixture('recv-fds', ['connect', socketPath])
  await child.waitForLine(/^connected$/)
  const stream = listener.accept()
  const fd = fs.openSync(file, 'r')
  stream.enqueue(fd)
  fs.closeSync(fd)
  stream.write('for you')
  stream.shutdown('write')
  const result = await child.done
  t.is(result.code, 0, result.stderr)
  const { reads } = lastJson(result)
  t.is(reads.length, 1)
  t.is(reads[0].data, 'for you')
  t.is(reads[0].fds.length, 1)
  t.is(reads[0].fds[0].content, 'parent to connecting child')
  t.is(reads[0].fds[0].identity, pathIdentity(file))
  stream.close()
  listener.close()
})

// ---------------------------------------------------------------------------------------
// Timeouts on the calls that wait for another process (SPEC §3): a blocked worker thread
// can always get out.
// ---------------------------------------------------------------------------------------

test('accept({ timeout }) throws ETIMEDOUT when nobody connects, loses nothing, and returns a connection that arrives in time', (t) => {
  const sock = tmpSocketPath()
  const listener = UnixListener.bind(sock)
  const error = thrown(() => listener.accept({ timeout: 30 }))
  t.is(error.code, 'ETIMEDOUT')
  t.is(error.syscall, 'accept')
  // A client that connected meanwhile waits in the backlog: the next accept takes it at once.
  const client = UnixStream.connect(sock)
  const accepted = listener.accept({ timeout: scaled(60_000) })
  client.write('after a timeout')
  const buf = Buffer.alloc(64)
  t.is(buf.subarray(0, accepted.read(buf)).toString(), 'after a timeout')
  t.is(thrown(() => listener.accept({ timeout: -1 })).code, 'ERR_OUT_OF_RANGE')
  t.is(thrown(() => listener.accept({ timeout: '5' as unknown as number })).code, 'ERR_INVALID_ARG_TYPE')
  t.is(thrown(() => listener.accept(null as unknown as { timeout: number })).code, 'ERR_INVALID_ARG_TYPE')
  accepted.close()
  client.close()
  listener.close()
})

test('UnixStream.connect(path, { timeout }) to a listener whose backlog is full throws ETIMEDOUT instead of blocking', (t) => {
  const sock = tmpSocketPath()
  const listener = UnixListener.bind(sock)
  // Nobody accepts: fill the backlog (511, Node's default) until a connect would block.
  const clients: UnixStream[] = []
  let error: any
  for (let i = 0; i < 2048 && !error; i++) {
    try {
      clients.push(UnixStream.connect(sock, { timeout: 50 }))
    } catch (caught) {
      error = caught
    }
  }
  t.truthy(error, 'some connect found the backlog full')
  t.is(error.code, 'ETIMEDOUT')
  t.is(error.syscall, 'connect')
  t.is(error.path, sock)
  t.true(clients.length >= 511, `${clients.length} connections fit in the backlog first`)
  // One accept makes room: the next connect with a timeout goes through, and the stream
  // it made has no timeout left on its writes.
  listener.accept().close()
  const last = UnixStream.connect(sock, { timeout: scaled(60_000) })
  t.is(last.write('x'), 1)
  last.close()
  closeAll(clients.map((c) => c.fd))
  listener.close()
})

test('a UnixStream iterates (for...of and for await): every chunk until the end, its fds dequeue-able in the body; break leaves the rest', async (t) => {
  const dir = tmpDir('fdq-iter-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = tmpFile('iterated', dir)
  for (const kind of ['sync', 'async'] as const) {
    const [a, b] = pair()
    try {
      const fd = fs.openSync(file, 'r')
      a.enqueue(fd)
      fs.closeSync(fd)
      a.write('one')
      a.write('two')
      a.shutdown('write')
      let text = ''
      const got: number[] = []
      const take = (chunk: Buffer) => {
        text += chunk.toString()
        got.push(...dequeueAll(b))
      }
      if (kind === 'sync') for (const chunk of b) take(chunk)
      else for await (const chunk of b) take(chunk)
      try {
        t.is(text, 'onetwo', kind)
        t.is(got.length, 1, kind)
        t.is(readAt(got[0]!), 'iterated', kind)
      } finally {
        closeAll(got)
      }
    } finally {
      a.close()
      b.close()
    }
    // A break stops reading: what follows is there for the next read.
    const [c, d] = pair()
    try {
      c.write('first')
      if (kind === 'sync') {
        for (const chunk of d) {
          t.is(chunk.toString(), 'first')
          break
        }
      } else {
        for await (const chunk of d) {
          t.is(chunk.toString(), 'first')
          break
        }
      }
      c.write('second')
      t.is(readString(d), 'second', kind)
    } finally {
      c.close()
      d.close()
    }
  }
})
