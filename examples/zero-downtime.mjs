// Zero-downtime restart: a running server hands its LISTENING sockets to its successor
// process, so that no connection is ever refused while the code is replaced. It has two:
// an HTTP listener on 127.0.0.1 (a net.Server) and a Unix socket service at a fixed path
// (an fd-queue FdServer that answers every client with a line and an fd).
//
//   node examples/zero-downtime.mjs                    generation 1 listens
//   node examples/zero-downtime.mjs serve 2 <control>  generation 2 takes over from the
//                                                      process whose control socket is <control>
//   node examples/zero-downtime.mjs --self-test        both, with clients of both services
//                                                      across the switch; exits 0 only if
//                                                      0 requests failed
//
// Every generation prints its control socket (another FdServer). A successor connects to
// it; the running process enqueues both listening sockets (`enqueue(server)` works for a
// net.Server and an FdServer alike) and writes one line for the fds to ride on. The
// successor adopts them (`toNetServer(fd)`, `createServer().listen({ fd })`), starts
// accepting, and answers `adopted`. Only then does the old process close its listeners:
// that closes its own fds, not the sockets, which live on in the successor. Connections
// that arrive during the switch wait in the kernel's backlog of each socket and are
// accepted by whichever process calls accept(), so none is refused. The FdServer is closed
// with `setUnlinkOnClose(false)`: its socket file is the successor's now, and must stay.
//
// Keep-alive: HTTP clients keep their connections open between requests, and a connection
// stays with the process that accepted it. After the hand-over, the old process answers
// the requests it still has with `Connection: close` and closes idle connections at once,
// so clients reconnect, to the successor. A client that sends a request on an idle
// connection just as it is closed sees a reset and retries (`req.reusedSocket`), as any
// keep-alive client must. The old process exits once its last connection is done.
//
// Each generation answers with a different body (`gen <n> (pid <pid>)`).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { connect, createServer, fdInfo, toNetServer } from 'fd-queue'

const thisFile = fileURLToPath(import.meta.url)
// Hang guards of the self-test, scaled on a slow machine (FDQ_TIME_SCALE=10 under emulation).
const SCALE = Number(process.env.FDQ_TIME_SCALE) > 0 ? Number(process.env.FDQ_TIME_SCALE) : 1
const TIMEOUT_MS = 10_000 * SCALE

if (process.argv[2] === '--self-test') {
  await selfTest()
} else if (process.argv[2] === 'serve') {
  await serve(Number(process.argv[3]), process.argv[4])
} else {
  await serve(1)
}

/** One generation of the server: listens (gen 1) or takes over (later ones), then can hand over. */
async function serve(generation, previousControl) {
  const name = `gen ${generation} (pid ${process.pid})`
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-zero-downtime-'))
  const controlPath = path.join(dir, 'control.sock')

  let inFlight = 0
  let handedOver = false
  /**
   * Requests in progress per connection. A kept-alive connection is one with none in
   * progress that has served one already (a brand-new connection's first request may be
   * on its way: it is answered, with `Connection: close`).
   */
  const busy = new Map()
  const keptAlive = (socket) => busy.get(socket)?.active === 0 && busy.get(socket).served > 0
  const app = http.createServer((req, res) => {
    inFlight++
    // Held here: the connection's own 'close' may run (and forget it) before this one's.
    const connection = busy.get(req.socket) ?? { active: 0, served: 0 }
    connection.active++
    res.on('close', () => {
      inFlight--
      connection.active--
      connection.served++
      // Handed over: a connection that just went idle is closed, its client reconnects.
      if (handedOver && keptAlive(req.socket)) req.socket.end()
    })
    // A little work per request, so that some are in flight during the switch.
    setTimeout(() => {
      const headers = { 'content-type': 'text/plain' }
      if (handedOver) headers.connection = 'close'
      res.writeHead(200, headers)
      res.end(`gen ${generation} (pid ${process.pid})\n`)
    }, 5)
  })

  /** The Unix socket service: each client gets a line and an fd of this generation's banner. */
  const banner = bannerFile(`banner of gen ${generation} (pid ${process.pid})`)
  const service = createServer((client) => {
    client.on('error', () => {})
    client.enqueue(banner)
    client.end(`${name}\n`)
  })

  let listener
  if (previousControl) {
    const adopted = await takeOver(previousControl)
    listener = adopted.listener
    const { address, port } = listener.address()
    console.log(`${name} adopted listening fd ${adopted.fd} on ${address}:${port}`)
    service.listen({ fd: adopted.serviceFd })
    await once(service, 'listening')
    console.log(`${name} adopted service fd ${adopted.serviceFd} on ${service.address()}`)
  } else {
    listener = net.createServer()
    await new Promise((resolve, reject) => {
      listener.once('error', reject)
      listener.listen({ host: '127.0.0.1', port: 0 }, resolve)
    })
    const serviceDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-zero-downtime-service-'))
    await new Promise((resolve, reject) => {
      service.once('error', reject)
      service.listen(path.join(serviceDir, 'service.sock'), resolve)
    })
  }
  // The listener only accepts; the HTTP server (which never listens itself) serves.
  listener.on('connection', (socket) => {
    busy.set(socket, { active: 0, served: 0 })
    socket.on('close', () => busy.delete(socket))
    app.emit('connection', socket)
  })

  // The control socket a successor connects to.
  const control = createServer((successor) => handOver(successor))
  await new Promise((resolve, reject) => {
    control.once('error', reject)
    control.listen(controlPath, resolve)
  })
  const { port } = listener.address()
  console.log(
    `${name} listening on http://127.0.0.1:${port}; control socket ${controlPath}; service socket ${service.address()}`,
  )

  const stop = () => {
    if (handedOver) return
    handedOver = true
    control.close()
    // The last generation removes the service's socket file (and its directory): an
    // adopted listener never removes a file itself.
    const servicePath = service.address()
    service.close(() => fs.rmSync(path.dirname(servicePath), { recursive: true, force: true }))
    finish('stopped')
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)

  async function handOver(successor) {
    if (handedOver) return successor.destroy()
    handedOver = true
    control.close() // one successor only
    successor.on('error', (error) => console.error(`${name}: control connection: ${error.message}`))
    try {
      successor.enqueue(listener) // a duplicate of the HTTP listening socket's fd...
      successor.enqueue(service) // ...and of the service's (an FdServer has an fd too)...
      successor.write('listen-fds\n') // ...ride on this line
      // Keep accepting until the successor says it accepts too: nothing is ever refused.
      const reply = await withTimeout(readLine(successor), TIMEOUT_MS, 'the successor did not adopt the socket')
      if (reply !== 'adopted') throw new Error(`unexpected reply ${JSON.stringify(reply)}`)
    } catch (error) {
      console.error(`${name}: hand-over failed, still serving: ${error.message}`)
      successor.destroy()
      handedOver = false
      return
    }
    successor.end()
    console.log(`${name} handed over its listening sockets`)
    // The successor accepts on the service socket now: close our fd, keep its file.
    service.setUnlinkOnClose(false)
    service.close()
    // Keep-alive connections stay with us: close the idle ones now, the busy ones after
    // their response (which says `Connection: close`). Their clients reconnect to the
    // successor.
    for (const socket of busy.keys()) if (keptAlive(socket)) socket.end()
    finish('exited')
  }

  /** Stops accepting (closes our fd of the listening socket), finishes in-flight requests, exits. */
  function finish(how) {
    const pending = inFlight
    process.off('SIGTERM', stop)
    process.off('SIGINT', stop)
    // close() stops accepting at once and calls back once every accepted connection has
    // closed, that is, once every request already accepted has been answered.
    listener.close(() => {
      console.log(`${name} finished ${pending} in-flight request${pending === 1 ? '' : 's'} and ${how}`)
      fs.closeSync(banner)
      fs.rmSync(dir, { recursive: true, force: true })
    })
  }
}

/** A file holding `text`, opened for reading; only the fd remains. */
function bannerFile(text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-banner-'))
  fs.writeFileSync(path.join(dir, 'banner'), text)
  const fd = fs.openSync(path.join(dir, 'banner'), 'r')
  fs.rmSync(dir, { recursive: true })
  return fd
}

/** Connects to the running generation's control socket and adopts its listening sockets. */
async function takeOver(controlPath) {
  const channel = connect(controlPath)
  channel.on('error', (error) => {
    console.error(`taking over from ${controlPath}: ${error.message}`)
    process.exit(1)
  })
  await withTimeout(readLine(channel), TIMEOUT_MS, 'no listening socket arrived')
  // Both rode on the line we just read, in the order they were enqueued.
  const fd = channel.dequeue()
  const serviceFd = channel.dequeue()
  if (fd === null || serviceFd === null) throw new Error('the line arrived without its two fds')
  const info = fdInfo(fd)
  if (info.kind !== 'tcp' || !info.listening) throw new Error(`fd ${fd} is a ${info.kind}, not a listening TCP socket`)
  const listener = await toNetServer(fd) // the server owns the fd now
  channel.end('adopted\n') // the old process may close its copies now
  return { listener, fd, serviceFd }
}

/** The next line a socket receives (bytes after it stay in the socket's buffer). */
function readLine(socket) {
  return new Promise((resolve, reject) => {
    let text = ''
    const onData = (chunk) => {
      text += chunk
      const end = text.indexOf('\n')
      if (end < 0) return
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('error', reject)
      if (end + 1 < text.length) socket.unshift(Buffer.from(text.slice(end + 1)))
      resolve(text.slice(0, end))
    }
    const onEnd = () => reject(new Error('the other side hung up'))
    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('error', reject)
  })
}

/**
 * The self-test: starts gen 1, runs requests (4 at a time, no keep-alive), starts gen 2
 * in the middle, keeps the requests going until gen 1 has exited and gen 2 has served a
 * while, then stops gen 2 and prints a summary.
 */
async function selfTest() {
  const deadline = Date.now() + 20_000 * SCALE
  const children = []
  const stats = { total: 0, failed: 0, byGeneration: [0, 0, 0], errors: [], reused: 0, retried: 0 }
  const serviceStats = { total: 0, failed: 0, byGeneration: [0, 0, 0], errors: [] }
  let stopClients = false
  let exitCode = 1
  try {
    const gen1 = startGeneration(['serve', '1'], children)
    const [, port, gen1Control, servicePath] = await gen1.waitFor(
      /^gen 1 \(pid \d+\) listening on http:\/\/127\.0\.0\.1:(\d+); control socket (.+); service socket (.+)$/,
    )

    // Two HTTP clients without keep-alive, two with (one connection each, reused).
    const clients = Array.from({ length: 4 }, async (_, i) => {
      const agent = i < 2 ? false : new http.Agent({ keepAlive: true, maxSockets: 1 })
      while (!stopClients && Date.now() < deadline) await request(Number(port), stats, agent)
      if (agent) agent.destroy()
    })
    const serviceClients = Array.from({ length: 2 }, async () => {
      while (!stopClients && Date.now() < deadline) await askService(servicePath, serviceStats)
    })
    const until = async (condition, what) => {
      while (!condition()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
        await new Promise((resolve) => setTimeout(resolve, 5))
      }
    }

    await until(() => stats.total >= 100, 'gen 1 served 100 requests')
    const gen2 = startGeneration(['serve', '2', gen1Control], children)
    await gen2.waitFor(/^gen 2 \(pid \d+\) listening on/)
    const gen1Exit = await withTimeout(gen1.exited, TIMEOUT_MS, 'gen 1 did not exit after the hand-over')
    const servedBeforeGen1Exit = stats.total
    await until(() => stats.total >= Math.max(300, servedBeforeGen1Exit + 100), 'gen 2 served 100 more requests')
    await until(() => serviceStats.byGeneration[2] >= 10, 'gen 2 answered 10 service clients')
    stopClients = true
    await Promise.all([...clients, ...serviceClients])

    gen2.child.kill('SIGTERM')
    const gen2Exit = await withTimeout(gen2.exited, TIMEOUT_MS, 'gen 2 did not exit on SIGTERM')
    for (const error of [...stats.errors, ...serviceStats.errors].slice(0, 5)) console.log(`  failed: ${error}`)
    console.log(
      `self-test: ${stats.total} requests, ${stats.failed} failed, gen 1: ${stats.byGeneration[1]}, gen 2: ${stats.byGeneration[2]}`,
    )
    console.log(`self-test keep-alive: ${stats.reused} requests on reused connections, ${stats.retried} retried`)
    console.log(
      `self-test service: ${serviceStats.total} connections, ${serviceStats.failed} failed, gen 1: ${serviceStats.byGeneration[1]}, gen 2: ${serviceStats.byGeneration[2]}`,
    )
    const ok =
      stats.failed === 0 &&
      serviceStats.failed === 0 &&
      stats.byGeneration[1] > 0 &&
      stats.byGeneration[2] > 0 &&
      serviceStats.byGeneration[1] > 0 &&
      serviceStats.byGeneration[2] > 0 &&
      !fs.existsSync(servicePath) &&
      gen1Exit.code === 0 &&
      gen2Exit.code === 0
    exitCode = ok ? 0 : 1
  } catch (error) {
    console.log(`self-test failed: ${error.message}`)
    console.log(JSON.stringify({ stats, serviceStats }).slice(0, 2000))
  } finally {
    stopClients = true
    for (const { child } of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  process.exitCode = exitCode
}

/** Starts `node zero-downtime.mjs <args>`; its stdout is copied to ours, line by line. */
function startGeneration(args, children) {
  const child = spawn(process.execPath, [thisFile, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  children.push({ child })
  const lines = []
  const watchers = new Set()
  let pending = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (text) => {
    pending += text
    for (let end; (end = pending.indexOf('\n')) >= 0;) {
      const line = pending.slice(0, end)
      pending = pending.slice(end + 1)
      console.log(line)
      lines.push(line)
      for (const watch of watchers) watch()
    }
  })
  function waitFor(pattern) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const watch = () => {
          const match = lines.map((line) => pattern.exec(line)).find(Boolean)
          if (match) {
            watchers.delete(watch)
            resolve(match)
          }
        }
        watchers.add(watch)
        exited.then(() => {
          watchers.delete(watch)
          reject(new Error(`${args.join(' ')} exited before printing ${pattern}`))
        })
        watch()
      }),
      TIMEOUT_MS,
      `no line matching ${pattern}`,
    )
  }
  return { child, exited, waitFor }
}

/**
 * One GET (on `agent`'s kept-alive connection, or a new one); counts the generation that
 * answered, or a failure. A request that met a reset on a reused connection (the server
 * closed it as idle just as we sent) is retried once on a new one, as keep-alive clients
 * must.
 */
async function request(port, stats, agent) {
  const outcome = await attempt(port, stats, agent)
  if (outcome === 'retry') {
    stats.retried++
    await attempt(port, stats, false)
  }
}

function attempt(port, stats, agent) {
  return new Promise((resolve) => {
    let counted = false
    const fail = (why) => {
      if (counted) return
      counted = true
      stats.total++
      stats.failed++
      stats.errors.push(why)
      resolve()
    }
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent, timeout: 5000 * SCALE }, (res) => {
      if (req.reusedSocket) stats.reused++
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (text) => (body += text))
      res.on('error', (error) => fail(error.message))
      res.on('end', () => {
        const match = /^gen (\d) \(pid \d+\)\n$/.exec(body)
        if (res.statusCode !== 200 || !match) return fail(`status ${res.statusCode}, body ${JSON.stringify(body)}`)
        if (counted) return
        counted = true
        stats.total++
        stats.byGeneration[Number(match[1])]++
        resolve()
      })
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', (error) => {
      if (req.reusedSocket && error.code === 'ECONNRESET' && !counted) {
        counted = true
        return resolve('retry')
      }
      fail(`${error.code ?? ''} ${error.message} (reused ${req.reusedSocket}, agent ${agent ? 'keep-alive' : 'none'})`)
    })
  })
}

/** One client of the Unix socket service: the line and the banner fd that came with it. */
async function askService(servicePath, stats) {
  const fail = (why) => {
    stats.total++
    stats.failed++
    stats.errors.push(`service: ${why}`)
  }
  const client = connect(servicePath)
  let line = ''
  let banner = null
  try {
    await new Promise((resolve, reject) => {
      client.on('data', (chunk) => {
        line += chunk
        banner ??= client.dequeue()
      })
      client.on('end', resolve)
      client.on('error', reject)
    })
  } catch (error) {
    client.destroy()
    return fail(`${error.code ?? ''} ${error.message}`)
  }
  client.destroy()
  const match = /^gen (\d) \(pid (\d+)\)\n$/.exec(line)
  if (!match || banner === null) return fail(`line ${JSON.stringify(line)}, fd ${banner}`)
  // Read at offset 0: every client's fd shares one open file description (and its offset).
  const buffer = Buffer.alloc(256)
  const text = buffer.subarray(0, fs.readSync(banner, buffer, 0, buffer.length, 0)).toString()
  fs.closeSync(banner)
  if (text !== `banner of gen ${match[1]} (pid ${match[2]})`) return fail(`banner ${JSON.stringify(text)}`)
  stats.total++
  stats.byGeneration[Number(match[1])]++
}

function withTimeout(promise, ms, message) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
