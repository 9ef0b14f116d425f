// Pass an open file from one process to another over a Unix socket, with the blocking API.
//
//   node examples/pass-file.mjs
//
// The parent writes a temp file, binds a listener and starts a second process (this same
// file, with the argument `receiver`) that connects to it. The parent enqueues the file's
// fd, closes its own copy, deletes the file and writes one byte: the fd rides on that
// byte. The receiver reads the byte, dequeues the fd and reads the (now nameless) file
// through it. Neither side can wait forever: the parent accepts only once the receiver
// said it is connected, and the receiver's read has a timeout.
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { UnixListener, UnixStream } from 'fd-queue'

const thisFile = fileURLToPath(import.meta.url)
// Hang guards of the self-test, scaled on a slow machine (FDQ_TIME_SCALE=10 under emulation).
const SCALE = Number(process.env.FDQ_TIME_SCALE) > 0 ? Number(process.env.FDQ_TIME_SCALE) : 1
const TIMEOUT_MS = 10_000 * SCALE

if (process.argv[2] === 'receiver') {
  receiver(process.argv[3])
} else {
  await parent()
}

/** The second process: connect, read one byte, dequeue the fd that came with it, read the file. */
function receiver(socketPath) {
  const stream = UnixStream.connect(socketPath)
  // The parent waits for this line before it calls the (blocking) accept().
  console.log(`[receiver] pid ${process.pid} connected to ${socketPath}`)
  try {
    stream.setReadTimeout(TIMEOUT_MS)
    const byte = new Uint8Array(1)
    if (stream.read(byte) !== 1) throw new Error('the parent hung up before sending anything')

    // The fds sent with a byte are dequeue-able as soon as the read of that byte returns.
    const fd = stream.dequeue()
    if (fd === null) throw new Error('a byte arrived without a file descriptor')
    try {
      const { ino } = fs.fstatSync(fd)
      const chunks = []
      const buf = Buffer.alloc(4096)
      let position = 0
      for (;;) {
        const n = fs.readSync(fd, buf, 0, buf.length, position)
        if (n === 0) break
        chunks.push(Buffer.from(buf.subarray(0, n)))
        position += n
      }
      const text = Buffer.concat(chunks).toString('utf8')
      console.log(`[receiver] got fd ${fd} (inode ${ino}); read through it: ${JSON.stringify(text)}`)
    } finally {
      fs.closeSync(fd) // dequeue() made the fd ours to close.
    }
  } finally {
    stream.close()
  }
}

/** The first process: make a file, hand its fd to the receiver, check what it read. */
async function parent() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-example-'))
  const socketPath = path.join(dir, 'socket')
  const filePath = path.join(dir, 'message.txt')
  const text = `Hello from process ${process.pid}, through SCM_RIGHTS.`
  let listener
  let child
  try {
    fs.writeFileSync(filePath, text)
    listener = UnixListener.bind(socketPath) // bound before the receiver starts, so it can connect at once

    child = spawn(process.execPath, [thisFile, 'receiver', socketPath], { stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
    let output = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      output += chunk
      process.stdout.write(chunk)
    })

    // accept() blocks this thread, so call it only once the receiver's connection is waiting.
    await Promise.race([
      new Promise((resolve) =>
        child.stdout.on('data', () => output.includes(` connected to ${socketPath}`) && resolve()),
      ),
      exited.then(({ code, signal }) => {
        throw new Error(`the receiver exited (code ${code}, signal ${signal}) before connecting`)
      }),
      rejectAfter(TIMEOUT_MS, 'the receiver did not connect'),
    ])
    const stream = listener.accept()
    let ino
    try {
      const fd = fs.openSync(filePath, 'r')
      ino = fs.fstatSync(fd).ino
      stream.enqueue(fd) // the queue holds its own duplicate ...
      fs.closeSync(fd) // ... so ours can go at once,
      fs.rmSync(filePath) // and so can the file's name: the receiver gets the open file itself.
      console.log(`[parent]   pid ${process.pid} sending fd of ${filePath} (inode ${ino}), then deleted the file`)
      stream.write('!') // the queued fd rides on this byte
    } finally {
      stream.close()
    }

    const { code, signal } = await Promise.race([exited, rejectAfter(TIMEOUT_MS, 'the receiver did not finish')])
    if (code !== 0) throw new Error(`the receiver failed (code ${code}, signal ${signal})`)
    if (!output.includes(`(inode ${ino}); read through it: ${JSON.stringify(text)}`)) {
      throw new Error('the receiver did not read the text that was sent')
    }
    console.log('[parent]   the receiver read the file through the fd it was sent: OK')
  } catch (error) {
    console.error(`[parent]   FAILED: ${error.message}`)
    child?.kill()
    process.exitCode = 1
  } finally {
    listener?.close() // also removes the socket file
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

function rejectAfter(ms, message) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms).unref())
}
