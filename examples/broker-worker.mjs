// examples/broker-worker.mjs: serves the connections broker-minimal.mjs hands over.
import { connect, toNetSocket } from 'fd-queue'

const broker = connect(process.env.BROKER_SOCKET ?? '/tmp/broker.sock')
broker.on('data', () => {
  // the fds that came with these bytes can be dequeued by now
  for (let fd; (fd = broker.dequeue()) !== null;) {
    const client = toNetSocket(fd) // owns the fd from now on
    client.end(`served by worker ${process.pid}\n`)
  }
})
broker.on('error', (error) => {
  console.error(`worker ${process.pid}: ${error.message}`)
  process.exitCode = 1
})
