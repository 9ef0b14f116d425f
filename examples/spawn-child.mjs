// examples/spawn-child.mjs: a parent hands files to a child over a socket pair whose other end the child inherits as fd 3.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { AsyncUnixStream } from 'fd-queue'

/** Reads up to and including the next newline (a read may return part of a line). */
async function readLine(stream) {
  let line = ''
  while (!line.endsWith('\n')) line += await stream.read()
  return line.trim()
}

/** A file holding `text`, opened for reading; the name is gone, the fd is all there is. */
function fileWith(text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-spawn-'))
  fs.writeFileSync(path.join(dir, 'f'), text)
  const fd = fs.openSync(path.join(dir, 'f'), 'r')
  fs.rmSync(dir, { recursive: true })
  return fd
}

if (process.argv[2] === 'child') {
  // fd 3 is the child's end of the pair: adopting it makes it an fd-queue stream.
  const parent = AsyncUnixStream.fromFd(3)
  const line = await readLine(parent)
  const received = parent.dequeue() // it rode on that line
  console.log(`child got "${line}" and read: ${fs.readFileSync(received, 'utf8')}`)
  fs.closeSync(received)
  const mine = fileWith(`an answer from child ${process.pid}`)
  parent.enqueue(mine)
  fs.closeSync(mine)
  await parent.write('here is mine\n')
  parent.close()
} else {
  const [ours, theirs] = AsyncUnixStream.pair()
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child'], {
    stdio: ['ignore', 'inherit', 'inherit', theirs.fd], // the child's fd 3
  })
  theirs.close() // the child has its own copy now
  const file = fileWith('a file from the parent')
  ours.enqueue(file)
  fs.closeSync(file)
  await ours.write('take this\n')
  const line = await readLine(ours)
  const answer = ours.dequeue()
  console.log(`parent got "${line}" and read: ${fs.readFileSync(answer, 'utf8')}`)
  fs.closeSync(answer)
  ours.close()
  await once(child, 'exit')
}
