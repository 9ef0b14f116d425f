/**
 * A short soak (issue #6): `bench/soak.mjs --fds=50000` passes 50k fds through FdSocket
 * between two processes, checking each one, and samples RSS and open fds in both. Both
 * must stay bounded: the open fds never beyond what the queues may hold (maxQueuedFds +
 * one message), the fds held outside the sender's queue flat, RSS growth after warm-up
 * small. `npm run soak` runs the full 1,000,000.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import * as path from 'node:path'
import { ROOT, scaled } from './helpers.js'

const FDS = 50_000
/** Default maxQueuedFds + one message of 253 + a few of the runtime's own. */
const QUEUE_BOUND = 1024 + 253 + 16

test('soak: 50k fds through FdSocket between two processes, RSS and fd count bounded', async (t) => {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'bench', 'soak.mjs'), `--fds=${FDS}`, '--every=5000', '--json'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c) => (stdout += c))
  child.stderr.on('data', (c) => (stderr += c))
  const timer = setTimeout(() => child.kill('SIGKILL'), scaled(60_000))
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  clearTimeout(timer)
  t.is(code, 0, stderr)
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '))
  t.truthy(line, stdout)
  const result = JSON.parse(line!.slice('RESULT '.length))
  t.log(
    `${result.received} fds in ${result.seconds} s; receiver RSS growth ${result.receiver.rssGrowthMiB.toFixed(1)} MiB, open max ${result.receiver.openMax}; sender RSS growth ${result.sender.rssGrowthMiB.toFixed(1)} MiB, open max ${result.sender.openMax}`,
  )
  t.true(result.ok)
  t.is(result.sent, FDS)
  t.is(result.received, FDS, 'every fd arrived')
  t.is(result.badFds, 0, 'each was the file sent, in order')
  t.is(result.badBytes, 0)
  t.is(result.receiver.samples.length, FDS / 5000 + 1)
  t.is(result.sender.samples.length, FDS / 5000 + 1)
  for (const who of ['receiver', 'sender'] as const) {
    const report = result[who]
    const start = report.samples[0].open
    t.true(report.openMax <= start + QUEUE_BOUND, `${who}: ${report.openMax} open fds, started with ${start}`)
    t.true(report.rssGrowthMiB < 32, `${who}: RSS grew ${report.rssGrowthMiB} MiB after warm-up`)
  }
  // what the sender holds besides the fds waiting in its queue: flat (a write in flight
  // carries at most one message's fds)
  t.true(result.sender.heldRange <= 1 + 4, `sender open - queued ranged over ${result.sender.heldRange}`)
})
