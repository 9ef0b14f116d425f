// Zero-downtime restart: a running HTTP server hands its LISTENING socket to its
// successor process, so that no connection is ever refused while the code is replaced.
//
//   node examples/zero-downtime.mjs                    generation 1 listens on 127.0.0.1
//   node examples/zero-downtime.mjs serve 2 <control>  generation 2 takes over from the
//                                                      process whose control socket is <control>
//   node examples/zero-downtime.mjs --self-test        both, with a client loop across the
//                                                      switch; exits 0 only if 0 requests failed
//
// Every generation prints its control socket (an fd-queue FdServer). A successor connects
// to it; the running process enqueues its listening socket and writes one line for the fd
// to ride on. The successor adopts the fd with `toNetServer`, starts accepting, and
// answers `adopted`. Only then does the old process close its listener: that closes its
// own fd, not the socket, which lives on in the successor. Connections that arrive during
// the switch wait in the kernel's backlog of that one socket and are accepted by whichever
// process calls accept(), so none is refused. The old process then finishes the requests
// it already accepted and exits.
//
// Each generation answers with a different body (`gen <n> (pid <pid>)`). Responses carry
// `Connection: close`, so a finished request leaves no idle keep-alive connection behind.
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
const TIMEOUT_MS = 10_000

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
  const app = http.createServer((req, res) => {
    inFlight++
    res.on('close', () => inFlight--)
    // A little work per request, so that some are in flight during the switch.
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain', connection: 'close' })
      res.end(`gen ${generation} (pid ${process.pid})\n`)
    }, 5)
  })

  let listener
  if (previousControl) {
    let fd
    ;({ listener, fd } = await takeOver(previousControl))
    const { address, port } = listener.address()
    console.log(`${name} adopted listening fd ${fd} on ${address}:${port}`)
  } else {
    listener = net.createServer()
    await new Promise((resolve, reject) => {
      listener.once('error', reject)
      listener.listen({ host: '127.0.0.1', port: 0 }, resolve)
    })
  }
  // The listener only accepts; the HTTP server (which never listens itself) serves.
  listener.on('connection', (socket) => app.emit('connection', socket))

  // The control socket a successor connects to.
  const control = createServer((successor) => handOver(successor))
  await new Promise((resolve, reject) => {
    control.once('error', reject)
    control.listen(controlPath, resolve)
  })
  const { port } = listener.address()
  console.log(`${name} listening on http://127.0.0.1:${port}; control socket ${controlPath}`)

  let handedOver = false
  const stop = () => {
    if (handedOver) return
    handedOver = true
    control.close()
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
      successor.enqueue(listener) // a duplicate of the listening socket's fd...
      successor.write('listen-fd\n') // ...rides on this line
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
    console.log(`${name} handed over its listening socket`)
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
      fs.rmSync(dir, { recursive: true, force: true })
    })
  }
}

/** Connects to the running generation's control socket and adopts its listening socket. */
async function takeOver(controlPath) {
  const channel = connect(controlPath)
  channel.on('error', (error) => {
    console.error(`taking over from ${controlPath}: ${error.message}`)
    process.exit(1)
  })
  await withTimeout(readLine(channel), TIMEOUT_MS, 'no listening socket arrived')
  const fd = channel.dequeue() // it rode on the line we just read
  if (fd === null) throw new Error('the line arrived without an fd')
  const info = fdInfo(fd)
  if (info.kind !== 'tcp' || !info.listening) throw new Error(`fd ${fd} is a ${info.kind}, not a listening TCP socket`)
  const listener = await toNetServer(fd) // the server owns the fd now
  channel.end('adopted\n') // the old process may close its copy now
  return { listener, fd }
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
  const deadline = Date.now() + 20_000
  const children = []
  const stats = { total: 0, failed: 0, byGeneration: [0, 0, 0], errors: [] }
  let stopClients = false
  let exitCode = 1
  try {
    const gen1 = startGeneration(['serve', '1'], children)
    const [, port, gen1Control] = await gen1.waitFor(
      /^gen 1 \(pid \d+\) listening on http:\/\/127\.0\.0\.1:(\d+); control socket (.+)$/,
    )

    const clients = Array.from({ length: 4 }, async () => {
      while (!stopClients && Date.now() < deadline) await request(Number(port), stats)
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
    stopClients = true
    await Promise.all(clients)

    gen2.child.kill('SIGTERM')
    const gen2Exit = await withTimeout(gen2.exited, TIMEOUT_MS, 'gen 2 did not exit on SIGTERM')
    for (const error of stats.errors.slice(0, 5)) console.log(`  failed: ${error}`)
    console.log(
      `self-test: ${stats.total} requests, ${stats.failed} failed, gen 1: ${stats.byGeneration[1]}, gen 2: ${stats.byGeneration[2]}`,
    )
    const ok =
      stats.failed === 0 &&
      stats.byGeneration[1] > 0 &&
      stats.byGeneration[2] > 0 &&
      gen1Exit.code === 0 &&
      gen2Exit.code === 0
    exitCode = ok ? 0 : 1
  } catch (error) {
    console.log(`self-test failed: ${error.message}`)
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

/** One GET without keep-alive; counts the generation that answered, or a failure. */
function request(port, stats) {
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
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 5000 }, (res) => {
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
    req.on('error', (error) => fail(`${error.code ?? ''} ${error.message}`))
  })
}

function withTimeout(promise, ms, message) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
