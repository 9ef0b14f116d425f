// examples/dbus-fd.mjs: fd-queue as the transport of a D-Bus library. dbus-native
// (npm install dbus-native) passes fds (the D-Bus type `h`) over any stream that has
// writeWithFds(bytes, fds) and emits 'fds': an FdSocket is one. This starts a private
// dbus-daemon, a service that hands out files by fd, and a client that sends one of its
// own; every fd goes through the daemon.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import dbus from 'dbus-native'
import { connect } from 'fd-queue'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-dbus-'))
const busPath = path.join(dir, 'bus')
fs.writeFileSync(
  path.join(dir, 'bus.conf'),
  `<busconfig><type>session</type><listen>unix:path=${busPath}</listen><auth>EXTERNAL</auth>
   <policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
   <allow own="*"/></policy></busconfig>`,
)
const daemon = spawn('dbus-daemon', [`--config-file=${path.join(dir, 'bus.conf')}`, '--nofork', '--print-address'], {
  stdio: ['ignore', 'pipe', 'ignore'],
})
await once(daemon.stdout, 'data') // it prints its address once it listens

// The service: dbus-native's raw connection, answering with fds itself.
const service = dbus.createConnection({ stream: connect(busPath) })
let serial = 1
const busCall = (member, signature, body) =>
  service.message({
    type: 1, // method call
    serial: serial++,
    destination: 'org.freedesktop.DBus',
    path: '/org/freedesktop/DBus',
    interface: 'org.freedesktop.DBus',
    member,
    ...(signature && { signature, body }),
  })
const named = new Promise((resolve) => service.on('message', (msg) => msg.member === 'NameAcquired' && resolve()))
service.on('message', (msg) => {
  if (msg.type !== 1 || msg.interface !== 'org.example.Files') return
  const answer = (signature, body, fds) =>
    service.message({
      type: 2,
      serial: serial++,
      replySerial: msg.serial,
      destination: msg.sender,
      signature,
      body,
      fds,
    })
  if (msg.member === 'Open') {
    const fd = fs.openSync(path.join(dir, path.basename(msg.body[0])), 'r')
    answer('h', [0], [fd]) // `h` is an index into the message's fds
    fs.closeSync(fd)
  } else if (msg.member === 'CountLines') {
    const text = fs.readFileSync(msg.fds[0], 'utf8') // the fd the caller sent, ours to close
    fs.closeSync(msg.fds[0])
    answer('u', [text.split('\n').length - 1])
  }
})
service.once('connect', () => {
  busCall('Hello')
  busCall('RequestName', 'su', ['org.example.Files', 4])
})
await named

// The client: dbus-native's bus, on an FdSocket.
fs.writeFileSync(path.join(dir, 'motd'), 'hello through dbus-daemon\n')
const bus = dbus.createClient({ stream: connect(busPath) })
const invoke = (member, signature, body, fds) =>
  new Promise((resolve, reject) =>
    bus.invoke(
      { destination: 'org.example.Files', path: '/', interface: 'org.example.Files', member, signature, body, fds },
      function (error, ...values) {
        if (error) reject(error)
        else resolve({ values, fds: this.message.fds }) // the reply's fds are on the message
      },
    ),
  )
const opened = await invoke('Open', 's', ['motd'])
console.log(`Open('motd') → fd, read through it: ${fs.readFileSync(opened.fds[0], 'utf8').trim()}`)
fs.closeSync(opened.fds[0])
const mine = fs.openSync(fileURLToPath(import.meta.url), 'r')
const counted = await invoke('CountLines', 'h', [0], [mine])
fs.closeSync(mine)
console.log(`CountLines(this file's fd) → ${counted.values[0]} lines`)

bus.connection.end()
service.end()
daemon.kill()
fs.rmSync(dir, { recursive: true, force: true })
