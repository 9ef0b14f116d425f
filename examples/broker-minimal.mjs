// examples/broker-minimal.mjs: hands each TCP connection to a worker (broker-worker.mjs).
import * as fs from 'node:fs'
import * as net from 'node:net'
import { connect, createServer } from 'fd-queue'

const controlPath = process.env.BROKER_SOCKET ?? '/tmp/broker.sock'
const workers = new Set()

const control = createServer((worker) => {
  workers.add(worker)
  worker.on('close', () => workers.delete(worker)) // a worker that exits is forgotten
  worker.on('error', () => {}) // (and 'close' follows)
})
control.on('error', (error) => {
  if (error.code !== 'EADDRINUSE') throw error
  // The socket file of a broker that died? Remove it, unless a live broker answers there.
  connect(controlPath)
    .on('connect', () => {
      console.error(`another broker is listening on ${controlPath}`)
      process.exit(1)
    })
    .on('error', () => {
      fs.rmSync(controlPath, { force: true })
      control.listen(controlPath)
    })
})
control.listen(controlPath)

let next = 0
net
  .createServer({ pauseOnConnect: true }, (connection) => {
    const ready = [...workers].filter((worker) => worker.writable)
    if (ready.length === 0) return connection.destroy()
    const worker = ready[next++ % ready.length]
    worker.enqueue(connection) // a close-on-exec duplicate of the connection's fd ...
    worker.write('c') // ... rides on this byte
    connection.destroy() // our copy only: the worker has the connection now
  })
  .listen(Number(process.env.PORT ?? 8080), '127.0.0.1', function () {
    console.log(`broker listening on port ${this.address().port}`)
  })
