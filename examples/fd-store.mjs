// examples/fd-store.mjs: a service keeps its listening socket across its own restarts in
// systemd's fd store. The first generation hands the socket to the service manager with
// sdNotify({ FDSTORE: 1, FDNAME: 'http' }, [server]); every later one gets it back from
// listenFds(). The port never changes, and a client that connects while no generation
// runs waits in the socket's backlog instead of being refused.
//
// Under systemd (Type=notify, FileDescriptorStoreMax=1) the `service` part runs as is.
// Run without arguments, this file also plays the service manager: a small stand-in for
// systemd (a datagram socket named by NOTIFY_SOCKET that keeps the fds it is sent, and
// starts the service again with them as LISTEN_FDS), which restarts the service once.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { closeFd, DatagramSocket, listenFds, sdNotify } from 'fd-queue'

if (process.argv[2] === 'service') {
  const stored = listenFds().find((entry) => entry.name === 'http')
  const server = net.createServer((socket) => socket.end(`generation ${process.env.GENERATION} (pid ${process.pid})`))
  if (stored) server.listen({ fd: stored.fd })
  else server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  // The store keeps a duplicate: it outlives this process.
  if (!stored) await sdNotify({ FDSTORE: 1, FDNAME: 'http' }, [server])
  await sdNotify({ READY: 1, STATUS: `listening on port ${server.address().port}` })
  process.on('SIGTERM', () => server.close()) // closes this process's copy only
} else {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-fd-store-'))
  const notifyPath = path.join(dir, 'notify')
  const notifications = DatagramSocket.bind(notifyPath)
  const store = new Map() // FDNAME → fd

  const start = (generation) =>
    // LISTEN_PID must be the service's pid: the shell sets it and execs, as systemd does after fork.
    spawn('sh', ['-c', 'LISTEN_PID=$$ exec "$0" "$@"', process.execPath, fileURLToPath(import.meta.url), 'service'], {
      env: {
        ...process.env,
        NOTIFY_SOCKET: notifyPath,
        GENERATION: String(generation),
        ...(store.size && { LISTEN_FDS: String(store.size), LISTEN_FDNAMES: [...store.keys()].join(':') }),
      },
      stdio: ['ignore', 'inherit', 'inherit', ...store.values()], // the stored fds become 3, 4, ...
    })

  // Reads notifications until READY=1, keeping the fds of FDSTORE=1 ones.
  const ready = async () => {
    for (;;) {
      const message = await notifications.receive()
      const state = Object.fromEntries(
        message.data
          .toString()
          .split('\n')
          .map((line) => line.split(/=(.*)/s)),
      )
      if (state.FDSTORE === '1' && message.fds.length === 1) store.set(state.FDNAME || 'stored', message.fds[0])
      else for (const fd of message.fds) closeFd(fd)
      if (state.READY === '1') return state.STATUS
    }
  }
  const get = (port) =>
    new Promise((resolve, reject) => {
      let reply = ''
      net
        .connect(port, '127.0.0.1')
        .setEncoding('utf8')
        .on('data', (chunk) => (reply += chunk))
        .on('end', () => resolve(reply))
        .on('error', reject)
    })
  const stop = async (service) => {
    service.kill('SIGTERM')
    await once(service, 'exit')
  }

  const first = start(1)
  const status = await ready()
  const port = Number(/port (\d+)/.exec(status)[1])
  console.log(`manager: generation 1 is ${status}; the fd store holds: ${[...store.keys()].join(', ')}`)
  console.log(`client: ${await get(port)}`)
  await stop(first)
  const meanwhile = get(port) // no generation runs: it waits in the backlog
  const second = start(2)
  console.log(`manager: generation 2 is ${await ready()}`)
  console.log(`client that connected between generations: ${await meanwhile}`)
  console.log(`client: ${await get(port)}`)
  await stop(second)
  for (const fd of store.values()) closeFd(fd)
  notifications.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
