// A connection broker: one process accepts TCP connections and hands each live
// connection, as an open fd, to one of two worker processes, which serve it.
//
//   node examples/broker.mjs              serve on 127.0.0.1 until Ctrl-C
//                                         (try: nc 127.0.0.1 <port>, then type lines)
//   node examples/broker.mjs --self-test  run 20 client connections, print a summary,
//                                         exit 0 only if both workers served and none failed
//
// The broker runs an fd-queue FdServer on a Unix socket and starts its workers (this same
// file, with the argument `worker`), which connect to it and say `ready <pid>`. For every
// TCP connection the broker enqueues the connection on one worker's FdSocket (round
// robin), writes one byte for the fd to ride on, and closes its own copy at once: the
// worker's fd is the connection from then on. The broker never reads from a connection
// (`pauseOnConnect`), so every byte the client sends reaches the worker.
//
// A worker turns each fd it dequeues into a net.Socket with `toNetSocket` and answers
// every line with `worker <pid>: <line>`.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { connect, createServer, toNetSocket } from 'fd-queue'

const thisFile = fileURLToPath(import.meta.url)
const WORKERS = 2
const SELF_TEST_CONNECTIONS = 20
// Hang guards of the self-test, scaled on a slow machine (FDQ_TIME_SCALE=10 under emulation).
const SCALE = Number(process.env.FDQ_TIME_SCALE) > 0 ? Number(process.env.FDQ_TIME_SCALE) : 1
const TIMEOUT_MS = 10_000 * SCALE

if (process.argv[2] === 'worker') {
  worker(process.argv[3])
} else {
  await broker(process.argv.includes('--self-test'))
}

/** A worker: receives connections from the broker and serves them. */
function worker(controlPath) {
  const connections = new Set()
  const control = connect(controlPath, () => control.write(`ready ${process.pid}\n`))
  control.on('data', () => {
    // The fds that rode on these bytes are dequeue-able by now; each one is a connection.
    for (let fd; (fd = control.dequeue()) !== null;) serve(toNetSocket(fd))
  })
  control.on('end', () => {
    // The broker is shutting down: finish politely.
    for (const socket of connections) socket.end()
  })
  control.on('error', (error) => {
    console.error(`worker ${process.pid}: ${error.message}`)
    process.exitCode = 1
  })

  /** The line protocol: every line gets `worker <pid>: <line>` back. */
  function serve(socket) {
    connections.add(socket)
    socket.on('close', () => connections.delete(socket))
    socket.on('error', () => socket.destroy())
    socket.setEncoding('utf8')
    let pending = ''
    socket.on('data', (text) => {
      pending += text
      for (let end; (end = pending.indexOf('\n')) >= 0;) {
        socket.write(`worker ${process.pid}: ${pending.slice(0, end)}\n`)
        pending = pending.slice(end + 1)
      }
    })
    socket.on('end', () => socket.end())
  }
}

/** The broker: starts the workers, accepts TCP connections and hands them over. */
async function broker(selfTest) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-broker-'))
  const controlPath = path.join(dir, 'control.sock')
  /** @type {Array<{ pid: number, socket: import('fd-queue').FdSocket, handed: number }>} */
  const workers = []
  let allReady
  const ready = new Promise((resolve) => (allReady = resolve))

  const control = createServer((socket) => {
    socket.on('error', (error) => console.error(`broker: a worker connection failed: ${error.message}`))
    // A worker that exits is forgotten: enqueueing on its closed socket would throw.
    socket.on('close', () => {
      const at = workers.findIndex((w) => w.socket === socket)
      if (at >= 0) workers.splice(at, 1)
    })
    let hello = ''
    socket.on('data', function onHello(chunk) {
      hello += chunk
      const match = /^ready (\d+)\n/.exec(hello)
      if (!match) return
      socket.off('data', onHello)
      workers.push({ pid: Number(match[1]), socket, handed: 0 })
      if (workers.length === WORKERS) allReady()
    })
  })
  await new Promise((resolve, reject) => {
    control.once('error', reject)
    control.listen(controlPath, resolve)
  })

  const children = []
  for (let i = 0; i < WORKERS; i++) {
    const child = spawn(process.execPath, [thisFile, 'worker', controlPath], {
      stdio: ['ignore', 'inherit', 'inherit'],
    })
    children.push({ child, exited: once(child, 'exit') })
  }

  let tcp
  let exitCode = 0
  try {
    await withTimeout(ready, TIMEOUT_MS, 'the workers did not connect')

    let next = 0
    tcp = net.createServer({ pauseOnConnect: true }, (connection) => {
      const ready = workers.filter((w) => w.socket.writable)
      if (ready.length === 0) return connection.destroy()
      const target = ready[next++ % ready.length]
      target.socket.enqueue(connection) // a close-on-exec duplicate of the connection's fd...
      target.socket.write('c') // ...rides on this byte to the worker,
      connection.destroy() // and our own copy goes at once: the worker has the connection now.
      target.handed++
    })
    await new Promise((resolve, reject) => {
      tcp.once('error', reject)
      tcp.listen({ host: '127.0.0.1', port: 0 }, resolve)
    })
    const { port } = tcp.address()
    console.log(
      `broker ${process.pid} listening on 127.0.0.1:${port}, workers ${workers.map((w) => w.pid).join(' and ')}`,
    )

    if (!selfTest) {
      console.log(`try: nc 127.0.0.1 ${port}   (Ctrl-C stops the broker)`)
      await Promise.race([once(process, 'SIGINT'), once(process, 'SIGTERM')])
    } else {
      const result = await clients(port, SELF_TEST_CONNECTIONS)
      // The broker kept none of the connections it handed over.
      const stillOpen = await new Promise((resolve, reject) =>
        tcp.getConnections((error, count) => (error ? reject(error) : resolve(count))),
      )
      const perWorker = workers.map((w) => `worker ${w.pid}: ${result.byPid.get(w.pid) ?? 0}`).join(', ')
      for (const error of result.errors.slice(0, 5)) console.log(`  failed: ${error}`)
      console.log(
        `self-test: ${result.served}/${SELF_TEST_CONNECTIONS} connections served, ${result.failed} failed; ${perWorker}; ${stillOpen} open in the broker`,
      )
      const everyWorkerServed = workers.every((w) => (result.byPid.get(w.pid) ?? 0) > 0)
      if (result.failed > 0 || result.served !== SELF_TEST_CONNECTIONS || !everyWorkerServed || stillOpen !== 0) {
        exitCode = 1
      }
    }
  } catch (error) {
    console.error(`broker: ${error.message}`)
    exitCode = 1
  } finally {
    // Shut down: stop accepting, end each worker's channel (the worker then finishes and exits).
    tcp?.close()
    for (const w of workers) w.socket.end()
    const exited = Promise.all(children.map((c) => c.exited))
    try {
      await withTimeout(exited, 5000, 'the workers did not exit')
    } catch {
      for (const { child } of children) child.kill('SIGKILL')
    }
    control.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  process.exitCode = exitCode
}

/** Connects `count` clients (4 at a time); each sends two lines and checks both replies. */
async function clients(port, count) {
  const byPid = new Map()
  const errors = []
  let served = 0
  let started = 0
  async function one(i) {
    const socket = net.connect({ host: '127.0.0.1', port })
    try {
      socket.setEncoding('utf8')
      const lines = lineReader(socket)
      await withTimeout(once(socket, 'connect'), TIMEOUT_MS, 'connect')
      let pid
      for (const message of [`hello ${i}`, `bye ${i}`]) {
        socket.write(`${message}\n`)
        const reply = await withTimeout(lines.next(), TIMEOUT_MS, `the reply to "${message}"`)
        const match = /^worker (\d+): (.*)$/.exec(reply)
        if (!match || match[2] !== message)
          throw new Error(`connection ${i}: unexpected reply ${JSON.stringify(reply)}`)
        if (pid !== undefined && Number(match[1]) !== pid) throw new Error(`connection ${i}: two workers answered`)
        pid = Number(match[1])
      }
      socket.end()
      await withTimeout(once(socket, 'close'), TIMEOUT_MS, 'close')
      byPid.set(pid, (byPid.get(pid) ?? 0) + 1)
      served++
    } catch (error) {
      errors.push(error.message)
      socket.destroy()
    }
  }
  async function loop() {
    while (started < count) await one(started++)
  }
  await Promise.all([loop(), loop(), loop(), loop()])
  return { served, failed: count - served, byPid, errors }
}

/** `next()` resolves with the next line the socket receives, and rejects once it failed or closed. */
function lineReader(socket) {
  let pending = ''
  let failure = null
  const lines = []
  const waiting = []
  socket.on('data', (text) => {
    pending += text
    for (let end; (end = pending.indexOf('\n')) >= 0;) {
      lines.push(pending.slice(0, end))
      pending = pending.slice(end + 1)
    }
    while (lines.length > 0 && waiting.length > 0) waiting.shift().resolve(lines.shift())
  })
  const fail = (error) => {
    failure ??= error
    for (const waiter of waiting.splice(0)) waiter.reject(failure)
  }
  socket.on('error', fail)
  socket.on('close', () => fail(new Error('the connection closed before a reply')))
  return {
    next() {
      if (lines.length > 0) return Promise.resolve(lines.shift())
      if (failure) return Promise.reject(failure)
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }))
    },
  }
}

function withTimeout(promise, ms, message) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
