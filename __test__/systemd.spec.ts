/**
 * systemd's protocols (SPEC §10), against stand-ins that speak them as the service manager
 * does: socket activation (fds from 3 on, LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES) and
 * sd_notify datagrams to $NOTIFY_SOCKET, with the fd store's FDSTORE=1 and its fds.
 */
import test from 'ava'
import { linuxSerialTest } from './platform.js'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import { DatagramSocket, listenFds, sdNotify, UnixListener } from '../index.js'
import { closeAll, fdIdentity, pathIdentity, readAt, ROOT, tmpDir, tmpFile, tmpSocketPath } from './helpers.js'
import { checkNoFdLeaked, codeOf, jsonLines, rejection } from './async-helpers.js'

checkNoFdLeaked()

interface Activation {
  env: Record<string, string>
  fds: number[]
  /** LISTEN_PID: the child's own pid (`$$` of the shell it execs from), unless given. */
  pid?: string
}

/** Starts fixtures/systemd-child.ts as socket activation would; resolves with its JSON lines. */
function activate(mode: string, { env, fds, pid }: Activation) {
  const script = path.join(ROOT, '__test__', 'fixtures', 'systemd-child.ts')
  const setPid = pid === undefined ? 'LISTEN_PID=$$' : `LISTEN_PID=${pid}`
  const child = spawn('sh', ['-c', `${setPid} exec "$0" "$@"`, process.execPath, '--import', 'tsx', script, mode], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe', ...fds],
  })
  return { child, ...jsonLines(child) }
}

test('listenFds(): the activated sockets from fd 3 with their names, close-on-exec, variables unset; each can be adopted', async (t) => {
  const webPath = tmpSocketPath()
  const web = UnixListener.bind(webPath)
  web.setUnlinkOnClose(false)
  const pingPath = tmpSocketPath()
  const ping = DatagramSocket.bind(pingPath).setUnlinkOnClose(false)
  const service = activate('serve', {
    env: { LISTEN_FDS: '2', LISTEN_FDNAMES: 'web:ping' },
    fds: [web.fd, ping.fd],
  })
  // The manager's copies go: the service holds the sockets now.
  web.close()
  ping.close()
  try {
    const report = await service.line((l) => 'fds' in l)
    t.deepEqual(report.fds, [
      { fd: 3, name: 'web' },
      { fd: 4, name: 'ping' },
    ])
    t.deepEqual(report.cloexec, [true, true])
    t.is(report.before.fds, '2')
    t.deepEqual(report.after, {}, 'LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are unset')
    t.deepEqual(report.again, [], 'a second call finds nothing')
    t.is(report.childEnv, 'unset unset', 'a child inherits neither the variables nor the fds')
    const { serving } = await service.line((l) => 'serving' in l)

    // The adopted stream listener (createServer().listen({ fd })) answers a net client.
    const reply = await new Promise<string>((resolve, reject) => {
      let text = ''
      net
        .connect(webPath)
        .setEncoding('utf8')
        .on('data', (chunk) => (text += chunk))
        .on('end', () => resolve(text))
        .on('error', reject)
    })
    t.is(reply, `served by ${serving}`)
    // The adopted datagram socket (DatagramSocket.fromFd) answers a datagram.
    const clientPath = tmpSocketPath()
    const client = DatagramSocket.bind(clientPath)
    try {
      await client.sendTo(pingPath, 'hello')
      const pong = (await client.receive())!
      t.is(pong.data.toString(), 'pong hello')
      t.is(pong.from, pingPath)
    } finally {
      client.close()
    }
    t.is(await service.exited, 0, service.stderr())
  } finally {
    service.child.kill()
    for (const p of [webPath, pingPath]) fs.rmSync(p, { force: true })
  }
})

test('listenFds(): names default to "unknown"; LISTEN_PID of another process or no LISTEN_FDS gives [] and still unsets', async (t) => {
  const file = tmpFile('activation')
  const fd = fs.openSync(file, 'r')
  try {
    const unnamed = activate('report', { env: { LISTEN_FDS: '1' }, fds: [fd] })
    const report = await unnamed.line((l) => 'fds' in l)
    t.deepEqual(report.fds, [{ fd: 3, name: 'unknown' }])
    t.is(await unnamed.exited, 0)

    const other = activate('report', { env: { LISTEN_FDS: '1', LISTEN_FDNAMES: 'x' }, fds: [fd], pid: '1' })
    const notOurs = await other.line((l) => 'fds' in l)
    t.deepEqual(notOurs.fds, [])
    t.deepEqual(notOurs.cloexec, [])
    t.deepEqual(notOurs.after, {}, 'unset even when they were for another process')
    t.is(await other.exited, 0)
  } finally {
    fs.closeSync(fd)
  }
  // A count past what fd numbers can hold (it wrapped modulo 2^32 on its way to native code).
  const huge = activate('report', { env: { LISTEN_FDS: String(2 ** 32 + 3) }, fds: [] })
  t.deepEqual(await huge.line((l) => 'error' in l), { error: 'ERR_OUT_OF_RANGE', after: {} })
  t.is(await huge.exited, 0)
  // In this process: nothing was passed.
  t.deepEqual(listenFds(), [])
})

/** Runs `body` with NOTIFY_SOCKET set to `value` (serial tests only: the variable is process-wide). */
async function withNotifySocket<T>(value: string | undefined, body: () => Promise<T>): Promise<T> {
  const saved = process.env.NOTIFY_SOCKET
  if (value === undefined) delete process.env.NOTIFY_SOCKET
  else process.env.NOTIFY_SOCKET = value
  try {
    return await body()
  } finally {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET
    else process.env.NOTIFY_SOCKET = saved
  }
}

test.serial('sdNotify(): one datagram to $NOTIFY_SOCKET (a path), state as text or KEY=value lines', async (t) => {
  const managerPath = path.join(tmpDir('fdq-notify-'), 'notify')
  const manager = DatagramSocket.bind(managerPath)
  try {
    t.true(await withNotifySocket(managerPath, () => sdNotify('READY=1\nSTATUS=up')))
    t.true(
      await withNotifySocket(managerPath, () =>
        sdNotify({ READY: true, STATUS: 'serving', MAINPID: 42, WATCHDOG: false }),
      ),
    )
    const first = (await manager.receive())!
    t.is(first.data.toString(), 'READY=1\nSTATUS=up')
    t.deepEqual(first.fds, [])
    const second = (await manager.receive())!
    t.is(second.data.toString(), 'READY=1\nSTATUS=serving\nMAINPID=42\nWATCHDOG=0')
  } finally {
    manager.close()
  }
})

linuxSerialTest(
  'sdNotify(): FDSTORE=1 with fds: the manager gets duplicates of exactly those fds, with FDNAME',
  async (t) => {
    const name = `fdq-notify-${process.pid}-${Date.now()}`
    const manager = DatagramSocket.bind(`\0${name}`)
    const files = [tmpFile('stored one'), tmpFile('stored two')]
    const fds = files.map((f) => fs.openSync(f, 'r'))
    try {
      // An abstract NOTIFY_SOCKET is spelled "@name".
      t.true(await withNotifySocket(`@${name}`, () => sdNotify({ FDSTORE: 1, FDNAME: 'files' }, fds)))
      const message = (await manager.receive())!
      t.is(message.data.toString(), 'FDSTORE=1\nFDNAME=files')
      t.deepEqual(
        message.fds.map((fd) => fdIdentity(fd)),
        files.map((f) => pathIdentity(f)),
      )
      t.deepEqual(
        message.fds.map((fd) => readAt(fd)),
        ['stored one', 'stored two'],
      )
      closeAll(message.fds)
    } finally {
      closeAll(fds)
      manager.close()
    }
  },
)

test.serial(
  'sdNotify(): false when NOTIFY_SOCKET is unset; typed errors for a missing socket, bad state or fds',
  async (t) => {
    t.false(await withNotifySocket(undefined, () => sdNotify('READY=1')))
    const missing = path.join(tmpDir(), 'no-manager')
    const error = await withNotifySocket(missing, () => rejection(sdNotify('READY=1')))
    t.is(error.code, 'ENOENT')
    t.is(error.path, missing)
    t.is(codeOf(await withNotifySocket('relative/path', () => rejection(sdNotify('READY=1')))), 'ERR_INVALID_ARG_VALUE')
    // Bad arguments throw at the call (SPEC section 6), whatever NOTIFY_SOCKET is. (An fd
    // above any fd limit here is never open.)
    const closedFd = 999_999
    for (const [args, code] of [
      [[42], 'ERR_INVALID_ARG_TYPE'],
      [[{ 'bad key': 1 }], 'ERR_INVALID_ARG_VALUE'],
      [[{ STATUS: 'a\nb' }], 'ERR_INVALID_ARG_VALUE'],
      [[{ FDSTORE: 1, FDNAME: 'a:b' }], 'ERR_INVALID_ARG_VALUE'],
      [[{ FDSTORE: 1, FDNAME: 'x'.repeat(256) }], 'ERR_INVALID_ARG_VALUE'],
      [[{ FDSTORE: 1, FDNAME: 'tab\there' }], 'ERR_INVALID_ARG_VALUE'],
      [[{ STATUS: {} }], 'ERR_INVALID_ARG_TYPE'],
      [['FDSTORE=1', [-1]], 'ERR_OUT_OF_RANGE'],
      [['FDSTORE=1', 3], 'ERR_INVALID_ARG_TYPE'],
      [['FDSTORE=1', [closedFd]], 'EBADF'],
    ] as const) {
      const saved = process.env.NOTIFY_SOCKET
      for (const socket of [missing, undefined]) {
        if (socket === undefined) delete process.env.NOTIFY_SOCKET
        else process.env.NOTIFY_SOCKET = socket
        try {
          t.throws(
            () => (sdNotify as (...a: unknown[]) => unknown)(...args),
            { code },
            `${code} for ${String(args[0])}`,
          )
        } finally {
          if (saved === undefined) delete process.env.NOTIFY_SOCKET
          else process.env.NOTIFY_SOCKET = saved
        }
      }
    }
  },
)
