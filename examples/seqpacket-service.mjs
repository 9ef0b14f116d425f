// examples/seqpacket-service.mjs: a request/response service on SOCK_SEQPACKET that
// passes files. One message is one request or one reply, and the fds in a message belong
// to it alone: no framing, no matching fds to bytes. The service opens files for its
// clients ("open <name>" is answered with the fd) and counts the lines of a file a client
// sends it ("lines" with the fd). Run as is, it starts the service and a client process.
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { SeqpacketListener, SeqpacketSocket } from 'fd-queue'

if (process.argv[2] === 'client') {
  const [servicePath, myFile] = process.argv.slice(3)
  const service = await SeqpacketSocket.connect(servicePath)
  await service.send('open motd')
  const opened = await service.receive()
  console.log(`open motd: ${opened.data}, read through the fd: ${fs.readFileSync(opened.fds[0], 'utf8').trim()}`)
  fs.closeSync(opened.fds[0])
  const mine = fs.openSync(myFile, 'r')
  await service.send('lines', [mine]) // a duplicate travels with this message
  fs.closeSync(mine)
  console.log(`lines of ${path.basename(myFile)}: ${(await service.receive()).data}`)
  service.close()
} else {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-queue-seqpacket-'))
  fs.writeFileSync(path.join(dir, 'motd'), 'hello from the service\n')
  const notes = path.join(dir, 'notes.txt')
  fs.writeFileSync(notes, 'one\ntwo\nthree\n')
  const listener = SeqpacketListener.bind(path.join(dir, 'service.sock'))
  const client = spawn(process.execPath, [fileURLToPath(import.meta.url), 'client', listener.path, notes], {
    stdio: 'inherit',
  })
  const connection = await listener.accept()
  // One request per message, until the client closes its end.
  for await (const request of connection) {
    const [verb, name] = request.data.toString().split(' ')
    if (verb === 'open') {
      const fd = fs.openSync(path.join(dir, path.basename(name)), 'r')
      await connection.send('ok', [fd])
      fs.closeSync(fd)
    } else if (verb === 'lines' && request.fds.length === 1) {
      const text = fs.readFileSync(request.fds[0], 'utf8')
      await connection.send(String(text.split('\n').length - 1))
    } else {
      await connection.send('bad request')
    }
    for (const fd of request.fds) fs.closeSync(fd)
  }
  connection.close()
  listener.close()
  process.exitCode = await new Promise((resolve) => client.on('exit', resolve))
  fs.rmSync(dir, { recursive: true, force: true })
}
