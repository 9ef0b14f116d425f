// examples/pair.mjs: the model, with both ends of a socket pair in one process.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { UnixStream } from 'fd-queue'

const file = path.join(os.tmpdir(), `fd-queue-readme-${process.pid}.txt`)
fs.writeFileSync(file, 'hello through SCM_RIGHTS\n')

const [left, right] = UnixStream.pair()

const fd = fs.openSync(file, 'r')
left.enqueue(fd) // a close-on-exec duplicate joins the outbound queue
fs.closeSync(fd) // so our own fd can go at once
fs.unlinkSync(file) // and the name too: what travels is the open file
left.write('!') // the queued fd rides on this byte

const buf = Buffer.alloc(64)
const n = right.read(buf) // 1: the byte, and with it the fd
const received = right.dequeue() // an fd number, now ours to close
console.log(n, fs.readFileSync(received, 'utf8')) // 1 hello through SCM_RIGHTS
fs.closeSync(received)

left.close()
right.close()
