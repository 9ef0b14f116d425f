// fd-queue benchmark: the Node peer. One process plays one side of one workload.
//
//   node node-peer.mjs API MODE PATH ARGS...
//
// API: unix (UnixStream), async (AsyncUnixStream), socket (FdSocket), net (net.Socket:
// bytes, and a round trip without fds as a reference), seqpacket (SeqpacketSocket: one
// message per send, its fds attached; the C and Python peers use SOCK_SEQPACKET when
// BENCH_SOCK_TYPE=seqpacket), floor (stream-recv and stream-send: the addon built from
// floor.c, path in BENCH_FLOOR_ADDON). MODE and ARGS as in peer.c:
// stream-recv/stream-send PATH MSGS FDS,
// rt-server PATH COUNT, rt-client PATH COUNT WARMUP, bytes-recv PATH TOTAL,
// bytes-send PATH TOTAL CHUNK. Prints "READY" once listening and one "RESULT {json}" line
// at the end; exits non-zero on any error.
import * as fs from 'node:fs'
import * as net from 'node:net'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  connect as fdConnect,
  createServer as fdCreateServer,
  SeqpacketListener,
  SeqpacketSocket,
  UnixListener,
  UnixStream,
} from 'fd-queue'

const [api, mode, path, ...rest] = process.argv.slice(2)
const args = rest.map(Number)
const env = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback)
/** Writes an AsyncUnixStream sender keeps in flight (1 = await every write). */
const WRITE_WINDOW = env('BENCH_ASYNC_WRITE_WINDOW', 1)
/** Reads an AsyncUnixStream receiver keeps in flight (1 = await every read). */
const READ_WINDOW = env('BENCH_ASYNC_READ_WINDOW', 1)
const ONE = Buffer.from('x')
const ACK = Buffer.from('A')

const now = () => process.hrtime.bigint()
const ready = () => process.stdout.write('READY\n')
const cpuNow = () => {
  const { user, system } = process.cpuUsage()
  return user + system
}
/** CPU time when the measured work started (after connect or accept). */
let cpuStart = 0
const markCpu = () => (cpuStart = cpuNow())
function result(fields) {
  // Peak RSS (KiB), and CPU time (user + system, every thread) since the work started.
  const usage = { maxRssKiB: process.resourceUsage().maxRSS, cpuUs: cpuNow() - cpuStart }
  process.stdout.write(`RESULT ${JSON.stringify({ ...fields, ...usage })}\n`)
}
function fail(message) {
  process.stderr.write(`node-peer (${api} ${mode}): ${message}\n`)
  process.exit(1)
}
function percentiles(samples) {
  samples.sort((a, b) => a - b)
  const n = samples.length
  return { p50Ns: samples[n >> 1], p99Ns: samples[Math.floor((n * 99) / 100)] }
}

/** Closes every fd waiting in `stream`'s inbound queue; counts closed and lost fds. */
function drainFds(stream, counts) {
  for (;;) {
    let fd
    try {
      fd = stream.dequeue()
    } catch (error) {
      if (error.code !== 'ERR_FD_TRUNCATED') throw error
      counts.truncated++
      continue
    }
    if (fd === null) return
    fs.closeSync(fd)
    counts.fds++
  }
}

/**
 * The AsyncUnixStream receiver's loop: reads (`read()`, Promise-returning) until `msgs`
 * bytes or the end, closing the fds of each read (`dequeue()`) before the next one.
 */
function receiveAll(stream, msgs, counts) {
  let bytes = 0
  let reads = 0
  let eof = false
  // Keeps READ_WINDOW reads in flight (served in call order) but never more than the
  // bytes still missing, since every read returns at least one byte.
  let inFlight = 0
  return new Promise((resolve, reject) => {
    const issue = () => {
      while (!eof && inFlight < READ_WINDOW && bytes + inFlight < msgs) {
        inFlight++
        stream.read().then(onRead, reject)
      }
      if ((bytes >= msgs || eof) && inFlight === 0) resolve({ bytes, reads })
    }
    const onRead = (chunk) => {
      inFlight--
      if (chunk.length === 0) eof = true
      bytes += chunk.length
      reads++
      drainFds(stream, counts)
      issue()
    }
    issue()
  })
}

/**
 * The AsyncUnixStream sender's loop: `msgs` times, `per` calls of `enqueue` and one of
 * `write` (which returns a Promise), with WRITE_WINDOW writes in flight; writes are served
 * in call order and an fd enqueued between two write calls rides on the later one.
 */
async function sendAll(msgs, per, enqueue, write) {
  const window = new Array(WRITE_WINDOW)
  for (let i = 0; i < msgs; i++) {
    const slot = i % WRITE_WINDOW
    if (window[slot]) await window[slot]
    for (let j = 0; j < per; j++) enqueue()
    window[slot] = write()
  }
  await Promise.all(window)
}

/**
 * The Promise-returning round trip's server on `io` (`read`, `write`, `dequeue`, `close`):
 * closes the fds of each read and acks every byte with one. Reports the result line.
 */
async function ackAll(io, count) {
  const counts = { fds: 0, truncated: 0 }
  let bytes = 0
  for (let chunk; (chunk = await io.read(256)).length > 0;) {
    bytes += chunk.length
    drainFds(io, counts)
    await io.write(chunk.length === 1 ? ACK : Buffer.alloc(chunk.length, 'A'))
  }
  io.close()
  result({ bytes, fdsReceived: counts.fds, fdsClosed: counts.fds, truncated: counts.truncated, expected: count })
}

/**
 * The Promise-returning round trip's client on `io` (`enqueue`, `write`, `read`, `close`):
 * per round trip an fd of /dev/null, one byte, and an awaited 1-byte ack; the first
 * `warmup` are not timed. Reports the result line.
 */
async function awaitedRoundTrips(io, count, warmup) {
  const devnull = fs.openSync('/dev/null', 'r')
  const samples = new Array(count)
  let t0 = now()
  for (let i = 0; i < warmup + count; i++) {
    if (i === warmup) t0 = now()
    const start = now()
    io.enqueue(devnull)
    await io.write(ONE)
    if ((await io.read(1)).length !== 1) fail('no ack: the server closed early')
    if (i >= warmup) samples[i - warmup] = Number(now() - start)
  }
  const elapsedNs = Number(now() - t0)
  io.close()
  result({ elapsedNs, count, fdsSent: warmup + count, ...percentiles(samples) })
}

/** Closes the fds an 'fds' event handed over (counting a truncated arrival). */
function closeHanded(fds, counts) {
  if (fds.truncated) counts.truncated++
  for (const fd of fds) fs.closeSync(fd)
  counts.fds += fds.length
}

// ---- blocking UnixStream -------------------------------------------------------------

const unix = {
  'stream-recv'(msgs, per) {
    const listener = UnixListener.bind(path)
    ready()
    const stream = listener.accept()
    markCpu()
    listener.close()
    const buf = Buffer.alloc(65536)
    const counts = { fds: 0, truncated: 0 }
    let bytes = 0
    let reads = 0
    while (bytes < msgs) {
      const n = stream.read(buf)
      if (n === 0) break
      bytes += n
      reads++
      drainFds(stream, counts)
    }
    stream.write(ACK)
    while (stream.read(buf) > 0);
    stream.close()
    result({
      bytes,
      reads,
      fdsReceived: counts.fds,
      fdsClosed: counts.fds,
      truncated: counts.truncated,
      expectedFds: msgs * per,
    })
  },
  'stream-send'(msgs, per) {
    const stream = UnixStream.connect(path)
    markCpu()
    const devnull = fs.openSync('/dev/null', 'r')
    const t0 = now()
    for (let i = 0; i < msgs; i++) {
      for (let j = 0; j < per; j++) stream.enqueue(devnull)
      stream.write(ONE)
    }
    if (stream.read(Buffer.alloc(1)) !== 1) fail('no ack: the receiver closed early')
    const elapsedNs = Number(now() - t0)
    stream.close()
    result({ elapsedNs, msgs, fdsSent: msgs * per })
  },
  'rt-server'(count) {
    const listener = UnixListener.bind(path)
    ready()
    const stream = listener.accept()
    markCpu()
    listener.close()
    const buf = Buffer.alloc(256)
    const counts = { fds: 0, truncated: 0 }
    let bytes = 0
    for (let n; (n = stream.read(buf)) > 0;) {
      bytes += n
      drainFds(stream, counts)
      for (let i = 0; i < n; i++) stream.write(ACK)
    }
    stream.close()
    result({ bytes, fdsReceived: counts.fds, fdsClosed: counts.fds, truncated: counts.truncated, expected: count })
  },
  'rt-client'(count, warmup) {
    const stream = UnixStream.connect(path)
    markCpu()
    const devnull = fs.openSync('/dev/null', 'r')
    const buf = Buffer.alloc(1)
    const samples = new Array(count)
    let t0 = now()
    for (let i = 0; i < warmup + count; i++) {
      if (i === warmup) t0 = now()
      const start = now()
      stream.enqueue(devnull)
      stream.write(ONE)
      if (stream.read(buf) !== 1) fail('no ack: the server closed early')
      if (i >= warmup) samples[i - warmup] = Number(now() - start)
    }
    const elapsedNs = Number(now() - t0)
    stream.close()
    result({ elapsedNs, count, fdsSent: warmup + count, ...percentiles(samples) })
  },
}

// ---- AsyncUnixStream -----------------------------------------------------------------

const async = {
  async 'stream-recv'(msgs, per) {
    const listener = AsyncUnixListener.bind(path)
    ready()
    const stream = await listener.accept()
    markCpu()
    listener.close()
    const counts = { fds: 0, truncated: 0 }
    const { bytes, reads } = await receiveAll(stream, msgs, counts)
    await stream.write(ACK)
    while ((await stream.read()).length > 0);
    stream.close()
    result({
      bytes,
      reads,
      fdsReceived: counts.fds,
      fdsClosed: counts.fds,
      truncated: counts.truncated,
      expectedFds: msgs * per,
    })
  },
  async 'stream-send'(msgs, per) {
    const stream = await AsyncUnixStream.connect(path)
    markCpu()
    const devnull = fs.openSync('/dev/null', 'r')
    const t0 = now()
    await sendAll(
      msgs,
      per,
      () => stream.enqueue(devnull),
      () => stream.write(ONE),
    )
    if ((await stream.read(1)).length !== 1) fail('no ack: the receiver closed early')
    const elapsedNs = Number(now() - t0)
    stream.close()
    result({ elapsedNs, msgs, fdsSent: msgs * per, writeWindow: WRITE_WINDOW })
  },
  async 'rt-server'(count) {
    const listener = AsyncUnixListener.bind(path)
    ready()
    const stream = await listener.accept()
    markCpu()
    listener.close()
    await ackAll(stream, count)
  },
  async 'rt-client'(count, warmup) {
    const stream = await AsyncUnixStream.connect(path)
    markCpu()
    await awaitedRoundTrips(stream, count, warmup)
  },
}

// ---- FdSocket / FdServer -------------------------------------------------------------

/**
 * Listens with a server from `createServer` (FdServer or net.Server); resolves with the
 * first connection and stops listening.
 */
async function acceptOne(createServer) {
  const server = createServer()
  const accepted = once(server, 'connection')
  server.listen(path)
  await once(server, 'listening')
  ready()
  const [socket] = await accepted
  markCpu()
  server.close()
  return socket
}

/** Connects with `connect` (FdSocket's or net's); resolves once connected. */
async function connected(connect) {
  const socket = connect(path)
  await once(socket, 'connect')
  markCpu()
  return socket
}

const fdAcceptOne = () => acceptOne(fdCreateServer)
const fdConnected = () => connected(fdConnect)

const socket = {
  async 'stream-recv'(msgs, per) {
    const sock = await fdAcceptOne()
    const counts = { fds: 0, truncated: 0 }
    let bytes = 0
    let chunks = 0
    let fdEvents = 0
    // 'fds' hands over the fds that arrived with the next chunk.
    sock.on('fds', (fds) => {
      fdEvents++
      closeHanded(fds, counts)
    })
    sock.on('data', (chunk) => {
      bytes += chunk.length
      chunks++
      if (bytes >= msgs && bytes - chunk.length < msgs) sock.write(ACK)
    })
    await once(sock, 'close')
    result({
      bytes,
      chunks,
      fdEvents,
      fdsReceived: counts.fds,
      fdsClosed: counts.fds,
      truncated: counts.truncated,
      expectedFds: msgs * per,
    })
  },
  async 'stream-send'(msgs, per) {
    const sock = await fdConnected()
    const devnull = fs.openSync('/dev/null', 'r')
    const acked = once(sock, 'data')
    let drains = 0
    const t0 = now()
    for (let i = 0; i < msgs; i++) {
      for (let j = 0; j < per; j++) sock.enqueue(devnull)
      if (!sock.write(ONE)) {
        drains++
        await once(sock, 'drain')
      }
    }
    await acked
    const elapsedNs = Number(now() - t0)
    sock.end()
    await once(sock, 'close')
    result({ elapsedNs, msgs, fdsSent: msgs * per, drains })
  },
  async 'rt-server'(count) {
    const sock = await fdAcceptOne()
    const counts = { fds: 0, truncated: 0 }
    let bytes = 0
    sock.on('fds', (fds) => closeHanded(fds, counts))
    sock.on('data', (chunk) => {
      bytes += chunk.length
      sock.write(chunk.length === 1 ? ACK : Buffer.alloc(chunk.length, 'A'))
    })
    sock.on('end', () => sock.end())
    await once(sock, 'close')
    result({ bytes, fdsReceived: counts.fds, fdsClosed: counts.fds, truncated: counts.truncated, expected: count })
  },
  async 'rt-client'(count, warmup) {
    const sock = await fdConnected()
    const devnull = fs.openSync('/dev/null', 'r')
    await streamRoundTrips(sock, count, warmup, () => sock.enqueue(devnull), warmup + count)
  },
}

/**
 * Round trips over a stream socket (FdSocket or net.Socket): `beforeWrite`, one byte out,
 * wait for the 1-byte ack; the first `warmup` are not timed. Reports the result line.
 */
async function streamRoundTrips(sock, count, warmup, beforeWrite, fdsSent) {
  const samples = new Array(count)
  let t0 = now()
  let i = 0
  let start = 0n
  await new Promise((resolve) => {
    const send = () => {
      if (i === warmup) t0 = now()
      start = now()
      beforeWrite()
      sock.write(ONE)
    }
    sock.on('data', (chunk) => {
      for (let k = 0; k < chunk.length; k++) {
        if (i >= warmup) samples[i - warmup] = Number(now() - start)
        i++
      }
      if (i < warmup + count) send()
      else resolve()
    })
    send()
  })
  const elapsedNs = Number(now() - t0)
  sock.end()
  await once(sock, 'close')
  result({ elapsedNs, count, fdsSent, ...percentiles(samples) })
}

// ---- bytes, for FdSocket and net.Socket alike ------------------------------------------

function bytesModes(listen, dial) {
  return {
    async 'bytes-recv'(total) {
      const sock = await listen()
      let bytes = 0
      let chunks = 0
      sock.on('data', (chunk) => {
        bytes += chunk.length
        chunks++
        if (bytes >= total && bytes - chunk.length < total) sock.write(ACK)
      })
      await once(sock, 'close')
      result({ bytes, chunks })
    },
    async 'bytes-send'(total, chunkSize) {
      const sock = await dial()
      const chunk = Buffer.alloc(chunkSize, 'b')
      const acked = once(sock, 'data')
      let drains = 0
      const t0 = now()
      for (let sent = 0; sent < total; sent += chunkSize) {
        const ok = sock.write(total - sent < chunkSize ? chunk.subarray(0, total - sent) : chunk)
        if (!ok) {
          drains++
          await once(sock, 'drain')
        }
      }
      await acked
      const elapsedNs = Number(now() - t0)
      sock.end()
      await once(sock, 'close')
      result({ elapsedNs, bytes: total, drains })
    },
  }
}

Object.assign(socket, bytesModes(fdAcceptOne, fdConnected))

const netAcceptOne = () => acceptOne(() => net.createServer())
const netConnected = () => connected(net.connect)

const netSocket = {
  ...bytesModes(netAcceptOne, netConnected),
  // Round trip without fds (net.Socket cannot carry them): Node's own libuv path, as a
  // reference for what the event loop costs.
  async 'rt-server'(count) {
    const sock = await netAcceptOne()
    let bytes = 0
    sock.on('data', (chunk) => {
      bytes += chunk.length
      sock.write(chunk.length === 1 ? ACK : Buffer.alloc(chunk.length, 'A'))
    })
    sock.on('end', () => sock.end())
    await once(sock, 'close')
    result({ bytes, fdsReceived: 0, fdsClosed: 0, truncated: 0, expected: count })
  },
  async 'rt-client'(count, warmup) {
    await streamRoundTrips(await netConnected(), count, warmup, () => {}, 0)
  },
}

// ---- scale: many FdSocket connections to one FdServer ----------------------------------

/** Open fds of this process (sampled to report the peak next to the fd limit). */
const openFds = () => fs.readdirSync('/proc/self/fd').length

/** RSS and V8's view of memory (KiB): what the JS heap and external buffers hold. */
function memory() {
  const { rss, heapTotal, heapUsed, external, arrayBuffers } = process.memoryUsage()
  const kib = (n) => Math.round(n / 1024)
  return {
    rssKiB: kib(rss),
    heapTotalKiB: kib(heapTotal),
    heapUsedKiB: kib(heapUsed),
    externalKiB: kib(external),
    arrayBuffersKiB: kib(arrayBuffers),
  }
}

function fdSampler() {
  let peak = openFds()
  const timer = setInterval(() => (peak = Math.max(peak, openFds())), 50)
  return {
    stop() {
      clearInterval(timer)
      return Math.max(peak, openFds())
    },
  }
}

Object.assign(socket, {
  // Accepts CONNS connections; on each, closes every fd that arrives and acks every
  // complete MSG_BYTES-byte message with one byte. Reports once all CONNS have closed.
  async 'scale-server'(conns, rounds, per, msgBytes) {
    const counts = { fds: 0, truncated: 0 }
    let accepted = 0
    let closed = 0
    let bytes = 0
    let maxLive = 0
    const sampler = fdSampler()
    const done = new Promise((resolve) => {
      const server = fdCreateServer((sock) => {
        accepted++
        maxLive = Math.max(maxLive, accepted - closed)
        let mine = 0
        sock.on('fds', (fds) => closeHanded(fds, counts))
        sock.on('data', (chunk) => {
          const before = Math.floor(mine / msgBytes)
          mine += chunk.length
          bytes += chunk.length
          const complete = Math.floor(mine / msgBytes) - before
          if (complete > 0) sock.write(complete === 1 ? ACK : Buffer.alloc(complete, 'A'))
        })
        sock.on('error', (error) => fail(`server socket: ${error.stack}`))
        sock.on('close', () => {
          if (++closed === conns) {
            server.close()
            resolve()
          }
        })
      })
      server.on('error', (error) => fail(`server: ${error.stack}`))
      server.listen(path, () => {
        markCpu()
        ready()
      })
    })
    await done
    const busy = memory()
    const peakOpenFds = sampler.stop()
    result({
      connections: accepted,
      maxLive,
      bytes,
      fdsReceived: counts.fds,
      fdsClosed: counts.fds,
      truncated: counts.truncated,
      expectedFds: conns * rounds * per,
      peakOpenFds,
      busy,
    })
  },
  // Opens CONNS connections (at most CONNECT_CONCURRENCY connects at a time), then each
  // sends ROUNDS messages of MSG_BYTES bytes carrying PER fds, with at most WINDOW
  // messages unacknowledged per connection. Times from the first message to the last ack.
  async 'scale-client'(conns, rounds, per, msgBytes, window) {
    const devnull = fs.openSync('/dev/null', 'r')
    const message = Buffer.alloc(msgBytes, 'm')
    const sampler = fdSampler()
    const concurrency = env('BENCH_SCALE_CONNECT_CONCURRENCY', 64)
    const sockets = []
    let retries = 0
    const connectOne = async () => {
      for (let attempt = 0; ; attempt++) {
        const sock = fdConnect(path)
        try {
          await once(sock, 'connect')
          return sock
        } catch (error) {
          // A full accept backlog answers EAGAIN to a non-blocking Unix connect.
          if (error.code !== 'EAGAIN' || attempt >= 1000) throw error
          retries++
          await new Promise((r) => setTimeout(r, 2))
        }
      }
    }
    const tc = now()
    let next = 0
    await Promise.all(
      Array.from({ length: Math.min(concurrency, conns) }, async () => {
        while (next < conns) {
          next++
          sockets.push(await connectOne())
        }
      }),
    )
    const connectNs = Number(now() - tc)
    const rssConnectedKiB = Math.round(process.memoryUsage().rss / 1024)
    markCpu()
    const t0 = now()
    await Promise.all(
      sockets.map(
        (sock) =>
          new Promise((resolve, reject) => {
            let sent = 0
            let acked = 0
            const send = () => {
              while (sent < rounds && sent - acked < window) {
                for (let j = 0; j < per; j++) sock.enqueue(devnull)
                sock.write(message)
                sent++
              }
            }
            sock.on('data', (chunk) => {
              acked += chunk.length
              if (acked >= rounds) resolve()
              else send()
            })
            sock.on('error', reject)
            sock.on('close', () => (acked < rounds ? reject(new Error('closed before every ack')) : undefined))
            send()
          }),
      ),
    )
    const elapsedNs = Number(now() - t0)
    const busy = memory()
    await Promise.all(
      sockets.map((sock) => {
        const closed = once(sock, 'close')
        sock.end()
        return closed
      }),
    )
    const peakOpenFds = sampler.stop()
    result({
      connections: sockets.length,
      connectNs,
      connectRetries: retries,
      elapsedNs,
      msgs: conns * rounds,
      fdsSent: conns * rounds * per,
      rssConnectedKiB,
      busy,
      peakOpenFds,
    })
  },
})

// ---- SeqpacketSocket: one message per send, its fds attached --------------------------

/** Accepts the one connection of a seqpacket workload. */
async function seqpacketAccept() {
  const listener = SeqpacketListener.bind(path)
  ready()
  const socket = await listener.accept()
  markCpu()
  listener.close()
  return socket
}

const seqpacket = {
  async 'stream-recv'(msgs, per) {
    const socket = await seqpacketAccept()
    let bytes = 0
    let reads = 0
    let fds = 0
    // READ_WINDOW receives in flight (settled in call order), never more than the messages
    // still to come.
    let inFlight = 0
    await new Promise((resolve, reject) => {
      const issue = () => {
        while (inFlight < READ_WINDOW && reads + inFlight < msgs) {
          inFlight++
          socket.receive().then(onMessage, reject)
        }
        if (reads >= msgs && inFlight === 0) resolve()
      }
      const onMessage = (message) => {
        inFlight--
        if (message === null) return reject(new Error(`the sender closed after ${reads} messages`))
        bytes += message.data.length
        reads++
        for (const fd of message.fds) fs.closeSync(fd)
        fds += message.fds.length
        issue()
      }
      issue()
    })
    await socket.send(ACK)
    while ((await socket.receive()) !== null);
    socket.close()
    result({ bytes, reads, fdsReceived: fds, fdsClosed: fds, expectedFds: msgs * per })
  },
  async 'stream-send'(msgs, per) {
    const socket = await SeqpacketSocket.connect(path)
    markCpu()
    const devnull = fs.openSync('/dev/null', 'r')
    const fds = new Array(per).fill(devnull)
    const window = new Array(WRITE_WINDOW)
    const t0 = now()
    for (let i = 0; i < msgs; i++) {
      const slot = i % WRITE_WINDOW
      if (window[slot]) await window[slot]
      window[slot] = socket.send(ONE, fds)
    }
    await Promise.all(window)
    if ((await socket.receive()) === null) fail('no ack: the receiver closed early')
    const elapsedNs = Number(now() - t0)
    socket.close()
    result({ elapsedNs, msgs, fdsSent: msgs * per, writeWindow: WRITE_WINDOW })
  },
  async 'rt-server'(count) {
    const socket = await seqpacketAccept()
    let bytes = 0
    let fds = 0
    for (let message; (message = await socket.receive()) !== null;) {
      bytes += message.data.length
      for (const fd of message.fds) fs.closeSync(fd)
      fds += message.fds.length
      await socket.send(ACK)
    }
    socket.close()
    result({ bytes, fdsReceived: fds, fdsClosed: fds, expected: count })
  },
  async 'rt-client'(count, warmup) {
    const socket = await SeqpacketSocket.connect(path)
    markCpu()
    const devnull = fs.openSync('/dev/null', 'r')
    const fds = [devnull]
    const samples = new Array(count)
    let t0 = now()
    for (let i = 0; i < warmup + count; i++) {
      if (i === warmup) t0 = now()
      const start = now()
      await socket.send(ONE, fds)
      if ((await socket.receive()) === null) fail('no ack: the server closed early')
      if (i >= warmup) samples[i - warmup] = Number(now() - start)
    }
    const elapsedNs = Number(now() - t0)
    socket.close()
    result({ elapsedNs, count, fdsSent: warmup + count, ...percentiles(samples) })
  },
}

// ---- main ------------------------------------------------------------------------------

// A watchdog in case the harness itself dies (it cannot fire while a blocking call waits).
if (process.env.BENCH_PEER_TIMEOUT_S) {
  setTimeout(() => fail('watchdog timeout'), Number(process.env.BENCH_PEER_TIMEOUT_S) * 1000).unref()
}
// ---- the Node floor (bench/peers/floor.c) --------------------------------------------

const floorAddon = () => createRequire(import.meta.url)(process.env.BENCH_FLOOR_ADDON)

const floor = {
  // The AsyncUnixStream receiver's loop on the floor addon: a Promise, a Buffer and one
  // blocking recvmsg per read, a call per fd (see floor.c).
  async 'stream-recv'(msgs, per) {
    const addon = floorAddon()
    const listener = UnixListener.bind(path)
    ready()
    const stream = listener.accept()
    markCpu()
    listener.close()
    const fd = stream.fd
    const scratch = Buffer.allocUnsafe(65536)
    const reader = {
      read() {
        let count
        try {
          count = addon.recv(fd, scratch)
        } catch (error) {
          return Promise.reject(error)
        }
        const chunk = Buffer.allocUnsafe(count)
        for (let i = 0; i < count; i++) chunk[i] = scratch[i]
        return Promise.resolve(chunk)
      },
      dequeue: addon.take,
    }
    const counts = { fds: 0, truncated: 0 }
    const { bytes, reads } = await receiveAll(reader, msgs, counts)
    stream.write(ACK)
    while (stream.read(scratch) > 0);
    stream.close()
    result({ bytes, reads, fdsReceived: counts.fds, fdsClosed: counts.fds, truncated: 0, expectedFds: msgs * per })
  },
  // The AsyncUnixStream sender's loop on the floor addon: a call per fd (a duplicate), and
  // per write a blocking sendmsg and a Promise, awaited as the async sender awaits its.
  async 'stream-send'(msgs, per) {
    const addon = floorAddon()
    const stream = UnixStream.connect(path)
    markCpu()
    const fd = stream.fd
    const devnull = fs.openSync('/dev/null', 'r')
    const t0 = now()
    await sendAll(
      msgs,
      per,
      () => addon.enqueue(devnull),
      () => Promise.resolve(addon.send(fd, ONE)),
    )
    if (stream.read(Buffer.alloc(1)) !== 1) fail('no ack: the receiver closed early')
    const elapsedNs = Number(now() - t0)
    stream.close()
    result({ elapsedNs, msgs, fdsSent: msgs * per, writeWindow: WRITE_WINDOW })
  },
  // AsyncUnixStream's round trip on the floor addon: a read waits in a uv_poll_t on the
  // socket (one recvmsg and one callback per readiness, see floor.c), a write is a
  // sendmsg and a settled Promise, each fd a duplicate and a dequeue call.
  async 'rt-server'(count) {
    const listener = UnixListener.bind(path)
    ready()
    const stream = listener.accept()
    markCpu()
    listener.close()
    await ackAll(floorStream(stream), count)
  },
  async 'rt-client'(count, warmup) {
    const io = floorStream(UnixStream.connect(path))
    markCpu()
    await awaitedRoundTrips(io, count, warmup)
  },
}

/** A connected UnixStream's socket driven by the floor addon's watch: Promise-returning read and write. */
function floorStream(stream) {
  const addon = floorAddon()
  const fd = stream.fd
  const scratch = Buffer.allocUnsafe(65536)
  let waiting = null
  addon.watch(fd, scratch, (count) => {
    const { resolve, reject } = waiting
    waiting = null
    if (count < 0) return reject(new Error(`recvmsg: errno ${-count}`))
    const chunk = Buffer.allocUnsafe(count)
    for (let i = 0; i < count; i++) chunk[i] = scratch[i]
    resolve(chunk)
  })
  return {
    // One recvmsg of whatever came (the size is the scratch Buffer's).
    read: () =>
      new Promise((resolve, reject) => {
        waiting = { resolve, reject }
        addon.wait()
      }),
    write: (data) => Promise.resolve(addon.send(fd, data)),
    enqueue: addon.enqueue,
    dequeue: addon.take,
    close() {
      addon.unwatch()
      stream.close()
    },
  }
}

const apis = { unix, async, socket, net: netSocket, seqpacket, floor }
const run = apis[api]?.[mode]
if (!run) fail(`unknown api/mode`)
try {
  await run(...args)
} catch (error) {
  fail(error?.stack ?? String(error))
}
