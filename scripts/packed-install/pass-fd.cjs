'use strict'
// Shared by the packed-install probes: a parent process binds a socket, starts a child (the
// same probe file, with `receiver <socket>`) that connects, and passes it the fd of a temp
// file whose name it then deletes. The child can only read the text through that fd. Each
// probe hands in the classes it got from the installed package (by `require` or `import`).
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

// A hang guard, scaled like the test suite's (FDQ_TIME_SCALE=10 under emulation).
const TIMEOUT_MS = 20_000 * (Number(process.env.FDQ_TIME_SCALE) || 1)

/**
 * @param {{ UnixStream: any, UnixListener: any }} fdQueue the installed package's exports
 * @param {string} probeFile the probe to start again as the receiver
 * @param {string[]} args `[]` for the parent, `['receiver', socketPath]` for the child
 */
async function main(fdQueue, probeFile, args) {
  try {
    if (args[0] === 'receiver') {
      receive(fdQueue, args[1])
    } else {
      await send(fdQueue, probeFile)
    }
  } catch (error) {
    console.error(`${args[0] === 'receiver' ? 'receiver' : 'parent'}: ${error.stack ?? error}`)
    process.exitCode = 1
  }
}

/** The child: connect, read the byte that carries the fd, read the file through the fd. */
function receive({ UnixStream }, socketPath) {
  const stream = UnixStream.connect(socketPath)
  // The parent's accept() blocks its thread, so it waits for this line before calling it.
  console.log('connected')
  try {
    stream.setReadTimeout(TIMEOUT_MS)
    if (stream.read(new Uint8Array(1)) !== 1) throw new Error('the parent hung up before sending')
    const fd = stream.dequeue()
    if (fd === null) throw new Error('the byte arrived without an fd')
    let text
    try {
      text = fs.readFileSync(fd, 'utf8')
    } finally {
      fs.closeSync(fd)
    }
    console.log(JSON.stringify({ text, addons: loadedAddons() }))
  } finally {
    stream.close()
  }
}

/** The parent: bind, start the receiver, send it the fd of a file that then loses its name. */
async function send({ UnixListener }, probeFile) {
  const platformDir = process.env.FD_QUEUE_PLATFORM_DIR
  if (!platformDir) throw new Error('FD_QUEUE_PLATFORM_DIR is not set')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-packed-'))
  const socketPath = path.join(dir, 'socket')
  const filePath = path.join(dir, 'message.txt')
  const text = `sent by pid ${process.pid} through SCM_RIGHTS`
  let listener
  let child
  try {
    fs.writeFileSync(filePath, text)
    listener = UnixListener.bind(socketPath)
    child = spawn(process.execPath, [probeFile, 'receiver', socketPath], { stdio: ['ignore', 'pipe', 'inherit'] })
    const lines = readLines(child.stdout)
    const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
    const childFailed = exited.then(({ code, signal }) => {
      throw new Error(`the receiver exited early (code ${code}, signal ${signal})`)
    })

    if ((await within(Promise.race([lines.next(), childFailed]))) !== 'connected') {
      throw new Error('the receiver did not say it connected')
    }
    const stream = listener.accept()
    try {
      const fd = fs.openSync(filePath, 'r')
      stream.enqueue(fd)
      fs.closeSync(fd)
      fs.rmSync(filePath)
      stream.write('!')
    } finally {
      stream.close()
    }

    const report = JSON.parse(await within(Promise.race([lines.next(), childFailed])))
    const { code } = await within(exited)
    if (code !== 0) throw new Error(`the receiver exited with code ${code}`)
    if (report.text !== text)
      throw new Error(`the receiver read ${JSON.stringify(report.text)}, not ${JSON.stringify(text)}`)
    for (const [who, addons] of [
      ['parent', loadedAddons()],
      ['receiver', report.addons],
    ]) {
      const outside = addons.filter((file) => !file.startsWith(platformDir + path.sep))
      if (addons.length !== 1 || outside.length > 0) {
        throw new Error(`the ${who} loaded ${JSON.stringify(addons)}, not one binary from ${platformDir}`)
      }
    }
    console.log(`fd passed between two processes; both loaded ${path.relative(process.cwd(), loadedAddons()[0])}`)
  } finally {
    if (child && child.exitCode === null) child.kill()
    listener?.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** The native binaries this process loaded: the CommonJS cache is shared with ESM imports. */
function loadedAddons() {
  return Object.keys(require.cache)
    .filter((file) => file.endsWith('.node'))
    .map((file) => fs.realpathSync(file))
}

/** One line of a stream at a time; `next()` resolves with `null` at its end. */
function readLines(readable) {
  const waiting = []
  const ready = []
  let rest = ''
  const deliver = (line) => (waiting.length > 0 ? waiting.shift()(line) : ready.push(line))
  readable.setEncoding('utf8')
  readable.on('data', (chunk) => {
    const parts = (rest + chunk).split('\n')
    rest = parts.pop()
    parts.forEach(deliver)
  })
  readable.on('end', () => deliver(null))
  return { next: () => (ready.length > 0 ? Promise.resolve(ready.shift()) : new Promise((r) => waiting.push(r))) }
}

function within(promise) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${TIMEOUT_MS} ms`)), TIMEOUT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

module.exports = { main }
