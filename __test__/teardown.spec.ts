/**
 * The end of a worker thread loses nothing and prints nothing: what tokio had accepted or
 * read for the worker's JS thread, but that thread never took (it was busy, then
 * terminated), is closed with it. Each scenario runs in a child process
 * (fixtures/teardown.cjs) that counts its own fds.
 */
import test from 'ava'
import * as path from 'node:path'
import { makeFifo, ROOT, runProcess, tmpSocketPath } from './helpers.js'

interface Run {
  code: number | null
  stdout: string
  stderr: string
  report: any
}

async function runTeardown(args: string[]): Promise<Run> {
  const script = path.join(ROOT, '__test__', 'fixtures', 'teardown.cjs')
  const { status: code, stdout, stderr } = await runProcess(process.execPath, [script, ...args])
  let report: any = null
  try {
    report = JSON.parse(stdout.trim().split('\n').at(-1) ?? '')
  } catch {
    // reported below with the output
  }
  return { code, stdout, stderr, report }
}

test('worker.terminate() under a connection flood: connections accepted for the busy worker are closed', async (t) => {
  const run = await runTeardown(['flood', tmpSocketPath()])
  t.is(run.code, 0, run.stderr)
  t.is(run.stderr, '')
  const { before, whileBlocked, after, clients } = run.report
  t.log(`fds: before ${before}, while the worker was busy ${whileBlocked}, after ${after} (${clients} clients)`)
  t.true(whileBlocked > before + clients, 'connections were accepted while the worker was busy')
  t.is(after, before, 'every accepted connection was closed with the worker')
})

test('worker.terminate() with fd-carrying chunks read for a busy FdSocket: their fds are closed', async (t) => {
  const fifo = makeFifo()
  fifo.close() // the fixture opens the FIFO itself
  const run = await runTeardown(['reader', tmpSocketPath(), fifo.path])
  t.is(run.code, 0, run.stderr)
  t.is(run.stderr, '')
  t.deepEqual(run.report, { writerOpen: false })
})

for (const end of ['terminate', 'exit']) {
  test(`worker ${end === 'exit' ? 'process.exit()' : 'terminate()'} with chunks waiting unread for an 'fds' listener: their fds are closed`, async (t) => {
    const fifo = makeFifo()
    fifo.close()
    const run = await runTeardown(['unread', tmpSocketPath(), fifo.path, end])
    t.is(run.code, 0, run.stderr)
    t.is(run.stderr, '')
    t.deepEqual(run.report, { writerOpen: false })
  })
}

for (const end of ['terminate', 'exit']) {
  test(`worker ${end === 'exit' ? 'process.exit()' : 'terminate()'} right after receive() settled, before its continuation: the messages' fds are closed`, async (t) => {
    const fifo = makeFifo()
    fifo.close()
    const run = await runTeardown(['message', tmpSocketPath(), fifo.path, end])
    t.is(run.code, 0, run.stderr)
    t.is(run.stderr, '')
    t.deepEqual(run.report, { writerOpen: false })
  })
}

test('worker churn (fd-queue loaded by workers only): no panic or other output, no fd left', async (t) => {
  const run = await runTeardown(['churn', '24'])
  t.is(run.code, 0, run.stderr)
  t.is(run.stderr, '', 'nothing printed: no panic message from any thread')
  // A fd the worker had dequeued but not yet closed when terminate() fell is the user's,
  // not the package's: the fixture closes it (and counts it) before the final count.
  if (run.report.userHeld > 0) t.log(`${run.report.userHeld} dequeued fd(s) were in the worker's hand at terminate()`)
  t.is(run.report.after, run.report.before)
})
