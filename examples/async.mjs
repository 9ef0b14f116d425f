// examples/async.mjs: async/await with AsyncUnixListener and AsyncUnixStream.
// A server hands each client an fd of a log file it opened; the client appends through it.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { AsyncUnixListener, AsyncUnixStream } from 'fd-queue'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-async-'))
const socketPath = path.join(dir, 'server.sock')
const logPath = path.join(dir, 'app.log')

const listener = AsyncUnixListener.bind(socketPath)
const serving = (async () => {
  const conn = await listener.accept()
  const log = fs.openSync(logPath, 'a')
  conn.enqueue(log) // a duplicate rides on the next write
  fs.closeSync(log)
  await conn.write('here is your log file')
  await conn.read() // wait for the client to hang up (empty Buffer)
  conn.close()
})()

const client = await AsyncUnixStream.connect(socketPath)
const greeting = await client.read() // the fds of this message are dequeue-able now
const log = client.dequeue()
fs.writeSync(log, `client ${process.pid} got: ${greeting}\n`)
fs.closeSync(log)
client.close()

await serving
listener.close()
console.log(fs.readFileSync(logPath, 'utf8').trim())
fs.rmSync(dir, { recursive: true })
