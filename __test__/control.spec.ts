/**
 * Control messages other than SCM_RIGHTS that install fds. A socket that whoever held it
 * set `SO_PASSPIDFD` on (Linux 6.5+: the peer that handed it over, a supervisor that set
 * it on a listener) gets a pidfd of the sender with every message it receives. fd-queue
 * never asked for them: every read path closes them at once, and keeps the SCM_RIGHTS fds.
 * The option is set by a Python child that shares the socket (its fd 3), as such a holder
 * would.
 */
import test, { type ExecutionContext } from 'ava'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { AsyncUnixStream, FdSocket, SeqpacketSocket, UnixStream } from '../index.js'
import { closeAll, fdIdentity, openFdNumbers, readExactlySync, tmpFile } from './helpers.js'
import { checkNoFdLeaked, dequeueAll, readExactly, receiveExactly } from './async-helpers.js'

const SO_PASSPIDFD = 76
const MESSAGES = 5

/** Sets SO_PASSPIDFD on `fd` (or on a fresh socket, without one): false when the kernel has no such option. */
function passPidfd(fd?: number): boolean {
  const code = [
    'import socket, sys',
    `s = socket.socket(fileno=3) if len(sys.argv) > 1 else socket.socketpair()[0]`,
    'try:',
    `    s.setsockopt(socket.SOL_SOCKET, ${SO_PASSPIDFD}, 1)`,
    'except OSError:',
    '    print("unsupported")',
    'else:',
    '    print("set")',
  ].join('\n')
  const child = spawnSync('python3', ['-c', code, ...(fd === undefined ? [] : ['fd3'])], {
    stdio: ['ignore', 'pipe', 'inherit', fd ?? 'ignore'],
    encoding: 'utf8',
  })
  if (child.error || child.status !== 0) throw new Error(`python3: ${child.error ?? `exit ${child.status}`}`)
  return child.stdout.trim() === 'set'
}

const supported = process.platform === 'linux' && passPidfd()
const linuxTest = supported ? test.serial : test.serial.skip

/** The pidfds this process holds. */
function pidfds(): number[] {
  return openFdNumbers().filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[pidfd]'
    } catch {
      return false
    }
  })
}

checkNoFdLeaked()

/**
 * Runs `exchange` (MESSAGES messages of 1 byte + 1 fd of a file, sent to a receiver with
 * SO_PASSPIDFD set on it) and checks that every fd it received is the file's, and that no
 * pidfd is left.
 */
async function noPidfdLeft(
  t: ExecutionContext,
  exchange: (file: number, setOn: (fd: number) => void) => Promise<number[]>,
) {
  const file = fs.openSync(tmpFile('pidfd test'), 'r')
  t.teardown(() => fs.closeSync(file))
  const before = pidfds().length
  const received = await exchange(file, (fd) => t.true(passPidfd(fd), 'SO_PASSPIDFD set on the receiver'))
  t.teardown(() => closeAll(received))
  t.is(received.length, MESSAGES)
  for (const fd of received) t.is(fdIdentity(fd), fdIdentity(file))
  t.is(pidfds().length, before, `pidfds left open: ${pidfds().join(', ')}`)
}

linuxTest('AsyncUnixStream closes the pidfds that SO_PASSPIDFD adds to each read', (t) =>
  noPidfdLeft(t, async (file, setOn) => {
    const [a, b] = AsyncUnixStream.pair()
    t.teardown(() => (a.close(), b.close()))
    setOn(b.fd)
    for (let i = 0; i < MESSAGES; i++) {
      a.enqueue(file)
      await a.write('m')
    }
    t.is((await readExactly(b, MESSAGES)).toString(), 'm'.repeat(MESSAGES))
    return dequeueAll(b)
  }),
)

linuxTest('UnixStream (blocking) closes the pidfds that SO_PASSPIDFD adds to each read', (t) =>
  noPidfdLeft(t, async (file, setOn) => {
    const [a, b] = UnixStream.pair()
    t.teardown(() => (a.close(), b.close()))
    setOn(b.fd)
    for (let i = 0; i < MESSAGES; i++) {
      a.enqueue(file)
      a.write('m')
    }
    t.is(readExactlySync(b, MESSAGES).toString(), 'm'.repeat(MESSAGES))
    return dequeueAll(b)
  }),
)

linuxTest('FdSocket closes the pidfds that SO_PASSPIDFD adds to each read', (t) =>
  noPidfdLeft(t, async (file, setOn) => {
    const [a, b] = FdSocket.pair()
    t.teardown(() => (a.destroy(), b.destroy()))
    setOn(b.fd)
    const data = receiveExactly(b, MESSAGES)
    for (let i = 0; i < MESSAGES; i++) a.writeWithFds('m', [file])
    t.is((await data).toString(), 'm'.repeat(MESSAGES))
    return dequeueAll(b)
  }),
)

linuxTest('SeqpacketSocket closes the pidfds that SO_PASSPIDFD adds to each message', (t) =>
  noPidfdLeft(t, async (file, setOn) => {
    const [a, b] = SeqpacketSocket.pair()
    t.teardown(() => (a.close(), b.close()))
    setOn(b.fd)
    const fds: number[] = []
    for (let i = 0; i < MESSAGES; i++) {
      await a.send('m', [file])
      const message = await b.receive()
      t.is(message?.data.toString(), 'm')
      fds.push(...(message?.fds ?? []))
    }
    return fds
  }),
)
