/**
 * fd-queue as the transport of a real protocol library: dbus-native (from npm) speaking
 * to a real dbus-daemon, started here on a private address. Its fd support needs a stream
 * with `writeWithFds(bytes, fds)` that emits `'fds'` with the fds that arrived: an
 * `FdSocket`. Two bus clients, each on an FdSocket: this process (dbus-native's high-level
 * bus) and a service in a child process (fixtures/dbus-service.mjs, its raw connection).
 * Every fd goes through the daemon both ways and is read through on the other side.
 */
import test from 'ava'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import dbus from 'dbus-native'
import { connect, DatagramSocket, UnixStream } from '../index.js'
import {
  fdFlags,
  fdIdentity,
  makeFifo,
  O_CLOEXEC,
  pathIdentity,
  readAt,
  ROOT,
  settledOpenFds,
  tmpDir,
  tmpFile,
  runProcess,
} from './helpers.js'
import { jsonLines, warmedUpFdBaseline } from './async-helpers.js'

const SERVICE = 'org.fdqueue.Test'

let baseline = 0
let daemon: ChildProcess | null = null
let busPath = ''
/** What the daemon said on stderr (why it dropped a connection, say). */
let daemonLog = ''
const children = new Set<ChildProcess>()

test.before(async () => {
  const version = spawnSync('dbus-daemon', ['--version'], { encoding: 'utf8' })
  if (version.error) throw new Error(`dbus-daemon is needed (Debian: apt-get install dbus-daemon): ${version.error}`)
  const dir = tmpDir('fdq-bus-')
  busPath = path.join(dir, 'bus')
  const config = path.join(dir, 'bus.conf')
  fs.writeFileSync(
    config,
    `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=${busPath}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`,
  )
  daemon = spawn('dbus-daemon', [`--config-file=${config}`, '--nofork', '--print-address'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  daemon.stderr!.setEncoding('utf8').on('data', (chunk: string) => (daemonLog += chunk))
  let address = ''
  await new Promise<void>((resolve, reject) => {
    daemon!.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      address += chunk
      if (address.includes('\n')) resolve()
    })
    daemon!.on('exit', (code) => reject(new Error(`dbus-daemon exited (${code})`)))
  })
  if (!address.startsWith(`unix:path=${busPath}`)) throw new Error(`dbus-daemon listens at ${address}`)
  baseline = await warmedUpFdBaseline()
})

// The fd count is checked while the daemon (and the pipes to it) still run; then it goes.
test.after.always('no fd of this file leaked', async (t) => {
  try {
    t.is(await settledOpenFds(baseline), baseline)
  } finally {
    for (const child of children) child.kill('SIGKILL')
    daemon?.kill()
  }
})

test.afterEach.always((t) => {
  if (!t.passed && daemonLog) t.log(`dbus-daemon said:\n${daemonLog}`)
})

/** A service in a child process, on an FdSocket transport, owning `name`. */
async function startService(name: string) {
  const script = path.join(ROOT, '__test__', 'fixtures', 'dbus-service.mjs')
  const child = spawn(process.execPath, [script, busPath, name], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(child)
  child.on('close', () => children.delete(child))
  const out = jsonLines(child)
  await out.line((l) => 'ready' in l, 'the service owns its name')
  return { child, ...out }
}

/** This process's bus client on an FdSocket transport; resolves once connected. */
async function client() {
  const stream = connect(busPath)
  const bus = dbus.createClient({ stream })
  await new Promise<void>((resolve, reject) => {
    bus.connection.once('connect', () => resolve())
    bus.connection.once('error', reject)
  })
  // One round trip before any fd is sent: dbus-daemon reads the authentication with
  // read(2), which drops the fds of a message that reaches it together with BEGIN.
  await getId(bus)
  const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()))
  return {
    bus,
    stream,
    /** Ends the connection; resolves once its socket is closed. */
    end: () => {
      stream.end()
      return closed
    },
  }
}

/** The bus's id (org.freedesktop.DBus.GetId): a round trip to the daemon. */
function getId(bus: any): Promise<string> {
  return new Promise((resolve, reject) =>
    bus.invoke(
      {
        destination: 'org.freedesktop.DBus',
        path: '/org/freedesktop/DBus',
        interface: 'org.freedesktop.DBus',
        member: 'GetId',
      },
      (error: Error | null, id: string) => (error ? reject(error) : resolve(id)),
    ),
  )
}

/** A method call of org.fdqueue.Test on `destination`; resolves with the reply's body and fds. */
function call(
  bus: any,
  destination: string,
  member: string,
  signature = '',
  body: unknown[] = [],
  fds: number[] = [],
): Promise<{ body: any[]; fds: number[] }> {
  return new Promise((resolve, reject) => {
    bus.invoke(
      { destination, path: '/org/fdqueue/Test', interface: 'org.fdqueue.Test', member, signature, body, fds },
      function (this: { message: { fds?: number[] } }, error: Error | null, ...result: any[]) {
        if (error) return reject(error)
        // dbus-native calls back with the reply message as `this.message`; its fds are on it.
        resolve({ body: result, fds: this.message.fds ?? [] })
      },
    )
  })
}

test.serial('the transport: dbus-native sees an fd-capable stream and the daemon agrees to pass fds', async (t) => {
  const { bus, end } = await client()
  t.true(bus.connection.canPassFds, 'writeWithFds is there')
  t.true(bus.connection.unixFdsAgreed, 'NEGOTIATE_UNIX_FD answered AGREE_UNIX_FD')
  await end()
})

test.serial('a method call passes a file fd through the daemon, and the reply passes one back', async (t) => {
  const service = await startService(SERVICE)
  const { bus, end } = await client()
  try {
    const dir = tmpDir('fdq-dbus-')
    const sent = tmpFile('sent through dbus-daemon', dir, 'sent')
    const fd = fs.openSync(sent, 'r')
    const described = await call(bus, SERVICE, 'Describe', 'h', [0], [fd])
    fs.closeSync(fd)
    t.is(described.body[0], 'file:sent through dbus-daemon', 'the service read through the fd')

    const back = tmpFile('opened by the service', dir, 'back')
    const opened = await call(bus, SERVICE, 'Open', 's', [back])
    t.is(opened.fds.length, 1)
    t.is(opened.body[0], 0, 'the h argument indexes the message fds')
    const [received] = opened.fds
    t.is(fdIdentity(received), pathIdentity(back))
    t.is(readAt(received), 'opened by the service')
    t.truthy(fdFlags(received) & O_CLOEXEC, 'received close-on-exec')
    fs.closeSync(received)
  } finally {
    await end()
    service.child.kill()
  }
})

test.serial(
  'many calls in a row, fds of every kind (file, pipe, socket, a memfd from Python), each read through',
  async (t) => {
    const service = await startService(SERVICE)
    const { bus, end } = await client()
    try {
      const dir = tmpDir('fdq-dbus-')
      const before = (await call(bus, SERVICE, 'OpenFds')).body[0]
      const rounds = 40
      for (let i = 0; i < rounds; i++) {
        const kind = ['file', 'pipe', 'socket', 'memfd'][i % 4]
        let fd: number
        let release = (): void => fs.closeSync(fd)
        let expected: string
        if (kind === 'file') {
          fd = fs.openSync(tmpFile(`file ${i}`, dir, `f${i}`), 'r')
          expected = `file:file ${i}`
        } else if (kind === 'pipe') {
          const fifo = makeFifo()
          fs.writeSync(fifo.writeFd, `pipe ${i}`)
          fs.closeSync(fifo.writeFd) // so the service reads to end of file
          fd = fifo.readFd
          expected = `pipe:pipe ${i}`
        } else if (kind === 'socket') {
          const [mine, theirs] = UnixStream.pair()
          mine.write(`socket ${i}`)
          mine.close() // so the service reads to end of file
          fd = theirs.fd
          release = () => theirs.close()
          expected = `unix:socket ${i}`
        } else {
          fd = await memfdFromPython(`memfd ${i}`)
          expected = `file:memfd ${i}`
        }
        try {
          const described = await call(bus, SERVICE, 'Describe', 'h', [0], [fd])
          t.is(described.body[0], expected, `call ${i} (${kind})`)
        } finally {
          release()
        }
      }
      const after = (await call(bus, SERVICE, 'OpenFds')).body[0]
      t.is(after, before, 'the service closed every fd it was passed')
    } finally {
      await end()
      service.child.kill()
    }
  },
)

/** A memfd made by a Python process (os.memfd_create) holding `content`, received here. */
async function memfdFromPython(content: string): Promise<number> {
  const receiverPath = path.join(tmpDir('fdq-memfd-'), 'r')
  const receiver = DatagramSocket.bind(receiverPath)
  try {
    const script =
      'import array, os, socket, sys\n' +
      "fd = os.memfd_create('fdq')\n" +
      'os.write(fd, sys.argv[2].encode())\n' +
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n' +
      "rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd]))]\n" +
      "s.sendmsg([b'm'], rights, 0, sys.argv[1])\n"
    const python = await runProcess('python3', ['-c', script, receiverPath, content])
    if (python.status !== 0) throw new Error(`python: ${python.stderr}`)
    const message = (await receiver.receive())!
    return message.fds[0]
  } finally {
    receiver.close()
  }
}

test.serial(
  'a bus client whose peer dies mid-call: the call fails (NoReply), nothing leaks on this side',
  async (t) => {
    const service = await startService(`${SERVICE}.Dying`)
    const { bus, end } = await client()
    try {
      const fifo = makeFifo()
      const pending = call(bus, `${SERVICE}.Dying`, 'Hang', 'h', [0], [fifo.writeFd])
      fs.closeSync(fifo.writeFd)
      fifo.writeFd = -1
      await service.line((l) => 'hanging' in l, 'the service holds the fd')
      t.true(fifo.isWriterOpen(), 'the service holds the duplicate that went through the daemon')
      service.child.kill('SIGKILL')
      const error: any = await pending.then(
        () => null,
        (e) => e,
      )
      t.truthy(error, 'the call failed')
      t.log(`the call failed with ${error?.dbusName}: ${error?.message}`)
      t.regex(String(error?.dbusName ?? error?.name ?? error), /NoReply|ServiceUnknown|Disconnected|Closed/)
      t.false(fifo.isWriterOpen(), 'every copy of the fd is gone with the service')
      fifo.close()
      // The connection is still usable.
      t.regex(await getId(bus), /^[0-9a-f]{32}$/)
    } finally {
      await end()
    }
  },
)
