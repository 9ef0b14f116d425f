// examples/sender.mjs: node examples/sender.mjs /tmp/demo.sock some-file...
import * as fs from 'node:fs'
import { UnixStream } from 'fd-queue'

const [socketPath, ...files] = process.argv.slice(2)
const stream = UnixStream.connect(socketPath)
for (const file of files) {
  const fd = fs.openSync(file, 'r')
  stream.enqueue(fd)
  fs.closeSync(fd)
}
stream.write(`${files.length} files`) // every queued fd rides on the first byte of this write
stream.close()
