// examples/receiver.mjs: node examples/receiver.mjs /tmp/demo.sock
import * as fs from 'node:fs'
import { UnixListener } from 'fd-queue'

const listener = UnixListener.bind(process.argv[2])
const stream = listener.accept() // blocks until the sender connects
const buf = Buffer.alloc(4096)
while (stream.read(buf) > 0) {
  // fds arrive with the read that returns the first byte of the write that carried them
  for (let fd; (fd = stream.dequeue()) !== null;) {
    console.log(`fd ${fd}: ${fs.fstatSync(fd).size} bytes`)
    fs.closeSync(fd)
  }
}
stream.close()
listener.close() // also removes the socket file
