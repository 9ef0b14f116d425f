// examples/stream.mjs: FdServer and FdSocket, piped like net.Socket, carrying fds.
// The client sends the server open files; the server streams each one back, uppercased.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { connect, createServer } from 'fd-queue'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-stream-'))
const socketPath = path.join(dir, 'server.sock')
for (const name of ['a.txt', 'b.txt']) fs.writeFileSync(path.join(dir, name), `contents of ${name}\n`)

const server = createServer((socket) => {
  // 'fds' hands over the fds that came with the chunk whose 'data' follows: ours now.
  socket.on('fds', async (fds) => {
    for (const fd of fds) {
      const upper = new Transform({ transform: (chunk, _, done) => done(null, chunk.toString().toUpperCase()) })
      await pipeline(fs.createReadStream('', { fd }), upper, socket, { end: false })
    }
    socket.end()
  })
  socket.resume() // the bytes themselves are just a marker here
})
server.listen(socketPath)

const client = connect(socketPath)
for (const name of ['a.txt', 'b.txt']) {
  const fd = fs.openSync(path.join(dir, name), 'r')
  client.enqueue(fd) // rides on the next chunk written after this call
  fs.closeSync(fd)
}
client.write('files attached')

let reply = ''
for await (const chunk of client) reply += chunk
console.log(reply.trim())
server.close(() => fs.rmSync(dir, { recursive: true }))
