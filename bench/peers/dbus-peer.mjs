// fd-queue benchmark: D-Bus method calls through a dbus-daemon, with dbus-native.
//
//   node dbus-peer.mjs service BUS_PATH TRANSPORT NAME
//   node dbus-peer.mjs client  BUS_PATH TRANSPORT NAME COUNT WARMUP
//
// TRANSPORT: `fdqueue` (an FdSocket as dbus-native's stream; every call carries 1 fd, an
// fd of /dev/null, which the service closes) or `net` (dbus-native's own net.Socket
// transport; the same calls without an fd: what fd passing adds is the difference).
// The service (raw connection) owns NAME and answers `Ping` with a 1-byte string; it
// prints READY once the name is its own, and on SIGTERM a RESULT with the fds it received.
// The client awaits each call before the next and prints one RESULT line.
import * as fs from 'node:fs'
import dbus from 'dbus-native'
import { connect } from 'fd-queue'

const [mode, busPath, transport, name, ...rest] = process.argv.slice(2)
const [count, warmup] = rest.map(Number)
const stream = () => (transport === 'fdqueue' ? { stream: connect(busPath) } : { socket: busPath })
const now = () => process.hrtime.bigint()
const cpuNow = () => {
  const { user, system } = process.cpuUsage()
  return user + system
}
function result(fields, cpuStart) {
  const usage = { maxRssKiB: process.resourceUsage().maxRSS, cpuUs: cpuNow() - cpuStart }
  process.stdout.write(`RESULT ${JSON.stringify({ ...fields, ...usage })}\n`)
}
function fail(message) {
  process.stderr.write(`dbus-peer (${mode} ${transport}): ${message}\n`)
  process.exit(1)
}
if (process.env.BENCH_PEER_TIMEOUT_S) {
  setTimeout(() => fail('watchdog timeout'), Number(process.env.BENCH_PEER_TIMEOUT_S) * 1000).unref()
}

if (mode === 'service') {
  const connection = dbus.createConnection(stream())
  let serial = 1
  let fdsReceived = 0
  let calls = 0
  let cpuStart = 0
  const busCall = (member, signature, body) =>
    connection.message({
      type: 1,
      serial: serial++,
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member,
      ...(signature && { signature, body }),
    })
  connection.on('message', (msg) => {
    if (msg.type === 4 && msg.member === 'NameAcquired' && msg.body[0] === name) {
      cpuStart = cpuNow()
      process.stdout.write('READY\n')
    }
    if (msg.type !== 1 || msg.member !== 'Ping') return
    calls++
    for (const fd of msg.fds ?? []) {
      fs.closeSync(fd)
      fdsReceived++
    }
    connection.message({
      type: 2,
      serial: serial++,
      replySerial: msg.serial,
      destination: msg.sender,
      signature: 's',
      body: ['A'],
    })
  })
  connection.once('connect', () => {
    busCall('Hello')
    busCall('RequestName', 'su', [name, 4])
  })
  connection.on('error', (error) => fail(error.stack))
  // The harness stops the service once the client is done.
  process.on('SIGTERM', () => {
    result({ calls, fdsReceived, fdsClosed: fdsReceived }, cpuStart)
    process.exit(0)
  })
} else if (mode === 'client') {
  const bus = dbus.createClient(stream())
  await new Promise((resolve, reject) => {
    bus.connection.once('connect', resolve)
    bus.connection.once('error', reject)
  })
  if (transport === 'fdqueue' && !bus.connection.unixFdsAgreed) fail('the bus did not agree to pass fds')
  // A round trip before the first fd: dbus-daemon reads the authentication with read(2),
  // which drops the fds of a message that reaches it together with BEGIN.
  await new Promise((resolve, reject) =>
    bus.invoke(
      {
        destination: 'org.freedesktop.DBus',
        path: '/org/freedesktop/DBus',
        interface: 'org.freedesktop.DBus',
        member: 'GetId',
      },
      (error) => (error ? reject(error) : resolve()),
    ),
  )
  const devnull = fs.openSync('/dev/null', 'r')
  const message =
    transport === 'fdqueue' ? { signature: 'h', body: [0], fds: [devnull] } : { signature: 's', body: ['x'] }
  const ping = () =>
    new Promise((resolve, reject) =>
      bus.invoke(
        { destination: name, path: '/', interface: 'org.fdqueue.Bench', member: 'Ping', ...message },
        (error) => (error ? reject(error) : resolve()),
      ),
    )
  for (let i = 0; i < warmup; i++) await ping()
  const cpuStart = cpuNow()
  const samples = new Array(count)
  const t0 = now()
  for (let i = 0; i < count; i++) {
    const start = now()
    await ping()
    samples[i] = Number(now() - start)
  }
  const elapsedNs = Number(now() - t0)
  samples.sort((a, b) => a - b)
  result(
    {
      calls: count,
      fdsSent: transport === 'fdqueue' ? count + warmup : 0,
      elapsedNs,
      p50Ns: samples[count >> 1],
      p99Ns: samples[Math.floor((count * 99) / 100)],
    },
    cpuStart,
  )
  bus.connection.end()
} else fail('unknown mode')
