// A short fd-passing workload for scripts/memcheck.sh to run under valgrind: every class
// passes fds (with truncation-free, full and bounded queues), errors are provoked, and
// everything is closed. It prints the fd count before and after.
'use strict'
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { UnixStream, AsyncUnixStream, FdSocket, UnixListener, AsyncUnixListener, createServer, connect } = require(
  path.join(__dirname, '..', 'index.js'),
)

const ROUNDS = Number(process.env.MEMCHECK_ROUNDS ?? 50)
const count = () => fs.readdirSync('/proc/self/fd').length
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdq-memcheck-'))
const file = path.join(dir, 'f')
fs.writeFileSync(file, 'memcheck')

function drain(stream) {
  const got = []
  for (let fd = stream.dequeue(); fd !== null; fd = stream.dequeue()) got.push(fd)
  for (const fd of got) fs.closeSync(fd)
  return got.length
}

async function main() {
  const fd = fs.openSync(file, 'r')
  // warm the runtime before counting
  const [wa, wb] = AsyncUnixStream.pair()
  await wa.write('w')
  await wb.read()
  wa.close()
  wb.close()
  const before = count()
  let passed = 0

  // blocking: 253 fds per message, a bounded inbound queue, a closed peer (EPIPE)
  for (let r = 0; r < ROUNDS; r++) {
    const [a, b] = UnixStream.pair()
    for (let i = 0; i < 253; i++) a.enqueue(fd)
    a.write('m')
    b.read(Buffer.alloc(4))
    passed += drain(b)
    b.maxQueuedFds = 1
    a.enqueue(fd)
    a.write('x')
    b.read(Buffer.alloc(4))
    try {
      b.read(Buffer.alloc(4))
    } catch {}
    passed += drain(b)
    b.close()
    a.enqueue(fd)
    try {
      a.write('y')
    } catch {}
    a.close()
  }

  // async: reads and writes in flight, close with pending operations
  for (let r = 0; r < ROUNDS; r++) {
    const [a, b] = AsyncUnixStream.pair()
    for (let i = 0; i < 16; i++) a.enqueue(fd)
    await a.write('async')
    await b.read()
    passed += drain(b)
    const pending = b.read().catch(() => {})
    a.enqueue(fd)
    const w = a.write('z').catch(() => {})
    b.close()
    a.close()
    await pending
    await w
  }

  // FdSocket over a listener, and a pair destroyed mid-stream
  const sock = path.join(dir, 's')
  const server = createServer()
  await new Promise((resolve) => server.listen(sock, resolve))
  const accepted = new Promise((resolve) => server.once('connection', resolve))
  const client = connect(sock)
  const peer = await accepted
  let received = 0
  const done = new Promise((resolve) => {
    peer.on('data', () => {
      received += drain(peer)
    })
    peer.on('end', resolve)
  })
  for (let r = 0; r < ROUNDS * 4; r++) {
    client.enqueue(fd)
    client.write(`c${r}`)
  }
  client.end()
  await done
  passed += received
  peer.destroy()
  server.close()
  for (let r = 0; r < ROUNDS; r++) {
    const [a, b] = FdSocket.pair()
    a.enqueue(fd)
    a.write('q')
    b.destroy()
    a.destroy()
  }

  // listeners
  const l = UnixListener.bind(path.join(dir, 'l'))
  const c = UnixStream.connect(l.path)
  l.accept().close()
  c.close()
  l.close()
  const al = AsyncUnixListener.bind(path.join(dir, 'al'))
  const pendingAccept = al.accept().catch(() => {})
  al.close()
  await pendingAccept

  fs.closeSync(fd)
  await new Promise((resolve) => setTimeout(resolve, 200))
  const after = count()
  console.log(JSON.stringify({ passed, before, after }))
  fs.rmSync(dir, { recursive: true, force: true })
  if (after > before) process.exitCode = 3
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
