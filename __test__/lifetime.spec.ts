/**
 * Process lifetime: each scenario runs in a child process (`node --import tsx
 * fixtures/lifetime.ts <scenario>`) that must exit by itself, code 0 (it is killed and the
 * test fails if it is still running after a generous budget, which only catches a hang);
 * the controls must stay alive.
 */
import test, { type ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { spawnSync } from 'node:child_process'
import { lastJson, scaled, settledOpenFds, startFixture, tmpDir, type ChildResult } from './helpers.js'
import { checkNoFdLeaked, sleep } from './async-helpers.js'

checkNoFdLeaked(settledOpenFds)

/**
 * A child needs ~0.5 s to start with tsx and exits within a few seconds; it gets this long
 * from spawn to exit before it counts as hanging (startFixture scales it by FDQ_TIME_SCALE).
 */
const EXIT_WITHIN_MS = 30_000

/**
 * At most two children at a time, so that startup under load does not eat the time each
 * one has to exit in (ava runs the tests of this file concurrently).
 */
let running = 0
const waiting: Array<() => void> = []
async function slot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= 2) await new Promise<void>((resolve) => waiting.push(resolve))
  running++
  try {
    return await work()
  } finally {
    running--
    waiting.shift()?.()
  }
}

/** Scratch directory with a socket path and a small file for the scenario. */
function scratch(t: ExecutionContext) {
  const dir = tmpDir('fdq-life-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'f')
  fs.writeFileSync(file, 'lifetime-content')
  return { dir, sock: path.join(dir, 's'), file }
}

function assertCleanExit(t: ExecutionContext, result: ChildResult): void {
  const info = `stdout: ${result.stdout}\nstderr: ${result.stderr}`
  t.false(result.timedOut, `the process did not exit by itself within ${scaled(EXIT_WITHIN_MS)} ms\n${info}`)
  t.is(result.signal, null, info)
  t.is(result.code, 0, info)
  t.notRegex(result.stderr, /Abort|panicked|FATAL|Segmentation|core dumped/i, info)
}

/** Runs a scenario that must exit by itself. */
async function exitsByItself(t: ExecutionContext, scenario: string, args: string[]): Promise<ChildResult> {
  const result = await slot(() => startFixture('lifetime', [scenario, ...args], { timeoutMs: EXIT_WITHIN_MS }).done)
  assertCleanExit(t, result)
  if (result.stderr.trim()) t.log(`stderr: ${result.stderr.trim()}`)
  return result
}

/** Runs a control scenario that must still be running ~1 s after `readyLine`; then kills it. */
async function staysAlive(t: ExecutionContext, scenario: string, args: string[], readyLine: RegExp): Promise<void> {
  await slot(async () => {
    const child = startFixture('lifetime', [scenario, ...args], { timeoutMs: EXIT_WITHIN_MS + 5000 })
    t.teardown(() => child.child.kill('SIGKILL'))
    await child.waitForLine(readyLine, EXIT_WITHIN_MS)
    await sleep(1000)
    t.is(child.child.exitCode, null, 'still running 1 s after it got ready')
    t.is(child.child.signalCode, null)
    child.child.kill('SIGTERM')
    const result = await child.done
    t.false(result.timedOut)
    t.is(result.signal, 'SIGTERM', 'it ended only because it was killed')
  })
}

test('FdSocket pair: data and an fd exchanged, both destroyed → the process exits', async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'fdsocket-pair', [sock, file])
  t.regex(result.stdout, /^exchanged ping pong lifetime-content$/m)
})

test('AsyncUnixStream pair closed → the process exits', async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'async-pair', [sock, file])
  t.regex(result.stdout, /^async pair closed after x$/m)
})

test("a listening FdServer that is unref()'d → the process exits", async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'server-unref', [sock, file])
  t.regex(result.stdout, /^listening$/m)
})

test("an FdServer unref()'d before listen() → the process exits", async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'server-unref-before-listen', [sock, file])
  t.regex(result.stdout, /^listening$/m)
})

test('control: a listening FdServer (not unref’d) keeps the process alive', async (t) => {
  const { sock, file } = scratch(t)
  await staysAlive(t, 'server-ref', [sock, file], /^listening$/)
})

test('control: unref() then ref() on a listening FdServer keeps the process alive', async (t) => {
  const { sock, file } = scratch(t)
  await staysAlive(t, 'server-unref-ref', [sock, file], /^listening$/)
})

test('pending AsyncUnixListener accept() then close() → accept rejects ERR_SOCKET_CLOSED and the process exits', async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'accept-close', [sock, file])
  t.regex(result.stdout, /^accept rejected ERR_SOCKET_CLOSED$/m)
  t.false(fs.existsSync(sock), 'the socket file is gone')
})

test('pending AsyncUnixStream read() then close() → the read settles and the process exits', async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'read-close', [sock, file])
  t.regex(result.stdout, /^read (rejected ERR_SOCKET_CLOSED|resolved 0)$/m)
})

test("an FdSocket connected to a server in the same process, socket, accepted socket and server unref'd → exits", async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'unref-connected', [sock, file])
  t.regex(result.stdout, /^connected and unref'd after hello$/m)
})

test('control: the same connected FdSocket without unref keeps the process alive', async (t) => {
  const { sock, file } = scratch(t)
  await staysAlive(t, 'connected-ref', [sock, file], /^connected after hello$/)
})

test('every socket ended and the server closed → the process exits', async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'graceful', [sock, file])
  t.regex(result.stdout, /^graceful echo:hi$/m)
})

test('worker thread: pairs of both kinds pass fds inside the worker, and it passes one to the main thread', async (t) => {
  const { sock, file } = scratch(t)
  const result = await exitsByItself(t, 'worker-ok', [sock, file])
  const report = lastJson(result)
  t.deepEqual(report, {
    worker: {
      ok: true,
      asyncData: 'x',
      asyncContent: 'lifetime-content',
      socketData: 'y',
      socketContent: 'lifetime-content',
    },
    fromWorker: { data: 'from-worker', content: 'lifetime-content', same: true },
    code: 0,
  })
})

test('worker thread terminated with pending reads, accept and queued fds: no abort, no hang, its fds closed', async (t) => {
  const { dir, sock } = scratch(t)
  const fifo = path.join(dir, 'p')
  t.is(spawnSync('mkfifo', [fifo]).status, 0)
  const result = await exitsByItself(t, 'worker-terminate', [sock, fifo])
  const report = lastJson(result)
  t.is(report.pending, 'pending')
  t.is(report.code, 1, 'worker.terminate() resolves with exit code 1')
  t.true(report.writerWhilePending, 'the worker held the FIFO write end in an outbound queue')
  t.false(report.writerAfter, 'the end of the worker closed the fd its queue held')
})
