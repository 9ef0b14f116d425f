#!/usr/bin/env node
// fd-queue soak test (issue #6). `npm run soak` or `node bench/soak.mjs [options]`.
//
// Passes --fds file descriptors (default 1,000,000) through FdSocket from a child process
// (the sender, connect()) to this one (the receiver, an FdServer). Message i is i as 4
// bytes little-endian carrying --per-write fds, each a duplicate of file (i % 8) of a
// small set; the receiver checks every byte and every fd (st_dev/st_ino, in order) and
// closes each one. Both processes sample their RSS and open-fd count every --every fds;
// the table and the least-squares slopes (after the first 20% of samples, the warm-up)
// show whether either grows. Exit status 1 if an fd was lost, duplicated or out of order,
// or a process failed.
//
//   --fds=N        fds to pass (default 1000000)
//   --every=N      sample every N fds (default fds / 20)
//   --per-write=N  fds per message, 1..253 (default 1)
//   --json         print only the RESULT line
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)
const { connect, createServer } = require(path.join(HERE, '..', 'index.js'))

const FILES = 8

function option(name, fallback) {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`))
  return arg === undefined ? fallback : arg.slice(name.length + 3)
}
const flag = (name) => process.argv.includes(`--${name}`)

const total = Number(option('fds', 1_000_000))
const perWrite = Number(option('per-write', 1))
const every = Number(option('every', Math.max(perWrite, Math.floor(total / 20))))
if (!(Number.isInteger(total) && total > 0 && Number.isInteger(perWrite) && perWrite >= 1 && perWrite <= 253)) {
  console.error('usage: node bench/soak.mjs [--fds=N] [--every=N] [--per-write=1..253] [--json]')
  process.exit(2)
}

function openFdCount() {
  return fs.readdirSync('/proc/self/fd').length
}

/** RSS, open fds, and how many of those the socket's queues hold at that moment. */
function sample(fds, queued = 0) {
  return { fds, rss: process.memoryUsage.rss(), open: openFdCount(), queued }
}

function u32(i) {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(i >>> 0)
  return b
}

// ---- sender (child) ----------------------------------------------------------------------

async function sender(socketPath, files) {
  const fds = files.map((f) => fs.openSync(f, 'r'))
  const socket = connect(socketPath)
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  const messages = Math.ceil(total / perWrite)
  let sent = 0
  let next = every
  const samples = [sample(0)]
  for (let i = 0; i < messages; i++) {
    const carry = Math.min(perWrite, total - sent)
    for (let k = 0; k < carry; k++) socket.enqueue(fds[(sent + k) % FILES])
    sent += carry
    const ok = socket.write(u32(i))
    if (sent >= next) {
      samples.push(sample(sent, socket.queuedOutboundFds))
      next += every
    }
    if (!ok) await new Promise((resolve) => socket.once('drain', resolve))
  }
  socket.end()
  await new Promise((resolve) => socket.once('close', resolve))
  for (const fd of fds) fs.closeSync(fd)
  process.stdout.write(`${JSON.stringify({ samples, sent })}\n`)
}

// ---- receiver (this process) -------------------------------------------------------------

function slope(points) {
  // least squares of y over x
  const n = points.length
  if (n < 2) return 0
  const mx = points.reduce((s, p) => s + p[0], 0) / n
  const my = points.reduce((s, p) => s + p[1], 0) / n
  let num = 0
  let den = 0
  for (const [x, y] of points) {
    num += (x - mx) * (y - my)
    den += (x - mx) ** 2
  }
  return den === 0 ? 0 : num / den
}

/**
 * Slopes after the warm-up (the first 20% of samples): RSS in KiB and open fds per 100k
 * fds passed. `open` swings with the fds waiting in the socket's queues (bounded by
 * maxQueuedFds); `held` = open - queued is what the process holds besides them, and must
 * stay flat.
 */
function slopes(samples) {
  const steady = samples.slice(Math.floor(samples.length / 5))
  const range = (values) => Math.max(...values) - Math.min(...values)
  return {
    rssKiBPer100k: (slope(steady.map((s) => [s.fds, s.rss])) * 100_000) / 1024,
    rssGrowthMiB: (steady[steady.length - 1].rss - steady[0].rss) / 2 ** 20,
    openPer100k: slope(steady.map((s) => [s.fds, s.open])) * 100_000,
    heldPer100k: slope(steady.map((s) => [s.fds, s.open - s.queued])) * 100_000,
    openMax: Math.max(...samples.map((s) => s.open)),
    heldRange: range(samples.slice(1).map((s) => s.open - s.queued)),
  }
}

async function receiver() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdq-soak-'))
  const files = Array.from({ length: FILES }, (_, i) => {
    const file = path.join(dir, `f${i}`)
    fs.writeFileSync(file, `soak file ${i}`)
    return file
  })
  const identities = files.map((f) => {
    const st = fs.statSync(f, { bigint: true })
    return `${st.dev}:${st.ino}`
  })
  const socketPath = path.join(dir, 's')
  const server = createServer()
  await new Promise((resolve) => server.listen(socketPath, resolve))
  const started = process.hrtime.bigint()
  const child = spawn(
    process.execPath,
    [fileURLToPath(import.meta.url), '--child', socketPath, ...files, ...process.argv.slice(2)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  let childOut = ''
  child.stdout.on('data', (c) => (childOut += c))
  const childDone = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))

  const [socket] = await new Promise((resolve) => server.once('connection', (...args) => resolve(args)))
  server.close()
  let received = 0
  let bytes = 0
  let badBytes = 0
  let badFds = 0
  let next = every
  const samples = [sample(0)]
  socket.on('data', (data) => {
    for (let fd = socket.dequeue(); fd !== null; fd = socket.dequeue()) {
      const st = fs.fstatSync(fd, { bigint: true })
      if (`${st.dev}:${st.ino}` !== identities[received % FILES]) badFds++
      fs.closeSync(fd)
      received++
      if (received >= next) {
        samples.push(sample(received, socket.queuedInboundFds))
        next += every
      }
    }
    for (let i = 0; i < data.length; i++, bytes++) {
      const seq = Math.floor(bytes / 4)
      if (data[i] !== ((seq >>> (8 * (bytes % 4))) & 0xff)) badBytes++
    }
  })
  await new Promise((resolve, reject) => {
    socket.on('end', resolve)
    socket.on('error', reject)
  })
  socket.destroy()
  const exit = await childDone
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  fs.rmSync(dir, { recursive: true, force: true })
  let senderReport = { samples: [], sent: 0 }
  try {
    senderReport = JSON.parse(childOut.trim().split('\n').pop())
  } catch {
    // reported below as a failed sender
  }
  const result = {
    fds: total,
    perWrite,
    sent: senderReport.sent,
    received,
    messages: bytes / 4,
    badBytes,
    badFds,
    seconds: Number(seconds.toFixed(1)),
    fdsPerSecond: Math.round(received / seconds),
    senderExit: exit.code,
    receiver: { samples, ...slopes(samples) },
    sender: { samples: senderReport.samples, ...(senderReport.samples.length ? slopes(senderReport.samples) : {}) },
  }
  result.ok =
    exit.code === 0 &&
    result.sent === total &&
    received === total &&
    result.messages === Math.ceil(total / perWrite) &&
    badBytes === 0 &&
    badFds === 0
  return result
}

function mib(bytes) {
  return (bytes / 2 ** 20).toFixed(1)
}

function printTable(result) {
  const rows = [
    ['fds passed', 'recv RSS MiB', 'recv open fds', 'recv queued', 'send RSS MiB', 'send open fds', 'send queued'],
  ]
  const bySender = new Map(result.sender.samples.map((s) => [s.fds, s]))
  for (const r of result.receiver.samples) {
    const s = bySender.get(r.fds)
    rows.push([
      String(r.fds),
      mib(r.rss),
      String(r.open),
      String(r.queued),
      s ? mib(s.rss) : '',
      s ? String(s.open) : '',
      s ? String(s.queued) : '',
    ])
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)))
  for (const [i, row] of rows.entries()) {
    console.log(`| ${row.map((cell, c) => cell.padStart(widths[c])).join(' | ')} |`)
    if (i === 0) console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`)
  }
  const describe = (who, s) =>
    `${who}: RSS slope ${s.rssKiBPer100k.toFixed(1)} KiB per 100k fds (growth ${s.rssGrowthMiB.toFixed(1)} MiB after warm-up); ` +
    `open fds slope ${s.openPer100k.toFixed(1)} per 100k (max ${s.openMax}, swings with the queues), ` +
    `open - queued slope ${s.heldPer100k.toFixed(2)} per 100k (range ${s.heldRange})`
  console.log()
  console.log(describe('receiver', result.receiver))
  if (result.sender.rssKiBPer100k !== undefined) console.log(describe('sender  ', result.sender))
  console.log(
    `${result.received} of ${result.fds} fds received in ${result.messages} messages, ${result.seconds} s (${result.fdsPerSecond} fds/s); ` +
      `bad bytes ${result.badBytes}, bad fds ${result.badFds}: ${result.ok ? 'OK' : 'FAILED'}`,
  )
}

if (flag('child')) {
  const at = process.argv.indexOf('--child')
  const socketPath = process.argv[at + 1]
  const files = process.argv.slice(at + 2, at + 2 + FILES)
  sender(socketPath, files).catch((error) => {
    console.error(error)
    process.exit(1)
  })
} else {
  receiver().then(
    (result) => {
      if (!flag('json')) printTable(result)
      console.log(`RESULT ${JSON.stringify(result)}`)
      process.exitCode = result.ok ? 0 : 1
    },
    (error) => {
      console.error(error)
      process.exitCode = 1
    },
  )
}
