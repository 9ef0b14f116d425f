/**
 * Small shared helpers for the test suite: fd counting, short socket paths, temp files
 * with known content, FIFOs (pipes you can watch for EOF) and child processes that run a
 * fixture script.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import * as dns from 'node:dns'
import * as fs from 'node:fs'
import { createRequire } from 'node:module'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { UnixStream } from '../index.js'

/** The package root (where package.json and node_modules are). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/**
 * Multiplier for every wall-clock budget of the suite: `FDQ_TIME_SCALE=10` under emulation
 * or on a very slow machine. The budgets are hang guards, each many times what its wait
 * takes on an idle machine, so the default of 1 already rides out a busy one; no test
 * passes or fails on how fast something happened, only on whether it happened.
 */
export const TIME_SCALE = (() => {
  const value = Number(process.env.FDQ_TIME_SCALE ?? 1)
  return Number.isFinite(value) && value > 0 ? value : 1
})()

/** `ms` times {@link TIME_SCALE}: the budget to give a wait that is only a hang guard. */
export function scaled(ms: number): number {
  return Math.round(ms * TIME_SCALE)
}

// Node's DNS resolver (c-ares) opens /dev/urandom the first time it is used (a listen or
// connect with a host name or address does) and keeps it for the life of the process, on
// builds whose c-ares has no getrandom (Node 20.18's musl and manylinux builds). Used
// now, before any test takes its baseline, that fd is no test's leak.
dns.getServers()

/** The portable fd inspection the fixtures share (fixtures/fd-state.cjs). */
const fdState = createRequire(import.meta.url)('./fixtures/fd-state.cjs') as {
  O_CLOEXEC: number
  openFdCount(): number
  openFdNumbers(): number[]
  fdFlags(fd: number): number
  isCloseOnExec(fd: number): boolean
  openFileLimit(): number
}

/**
 * Number of fds open in this process (the directory handle readdir uses counts once, every
 * time): /proc/self/fd on Linux, /dev/fd on macOS, procstat on FreeBSD without fdescfs.
 */
export function openFds(): number {
  return fdState.openFdCount()
}

/**
 * `openFds()` once it stopped changing (tsx writes its compile cache asynchronously right
 * after loading a changed file, which holds an fd open for a moment): polls until three
 * readings 25 ms apart agree, for at most 3 s (both scaled). Use it for the per-file baseline.
 *
 * With `expected` (a leak check: `t.is(await settledOpenFds(baseline), baseline)`), it
 * polls until the count is `expected` instead, for up to 10 s (scaled): fds that are let go
 * of a moment after the event that ends their use (a child's stdio pipes after it exited,
 * a native reader after 'close') may take that long on a busy machine, and a leak never
 * comes back down, so it still fails, with the last count.
 */
export async function settledOpenFds(expected?: number): Promise<number> {
  let last = openFds()
  if (expected !== undefined) {
    for (const deadline = Date.now() + scaled(10_000); last !== expected && Date.now() < deadline;) {
      await new Promise((resolve) => setTimeout(resolve, 10))
      last = openFds()
    }
    return last
  }
  // Three equal readings, spaced and bounded in proportion to the machine's speed: under
  // emulation the fds of tsx's cache writes stay open ten times as long.
  let same = 0
  for (const deadline = Date.now() + scaled(3000); same < 3 && Date.now() < deadline;) {
    await new Promise((resolve) => setTimeout(resolve, scaled(25)))
    const now = openFds()
    same = now === last ? same + 1 : 0
    last = now
  }
  return last
}

/** The fd numbers open in this process (without the one readdir used and closed again). */
export const openFdNumbers = fdState.openFdNumbers

const createdDirs: string[] = []
process.on('exit', () => {
  for (const dir of createdDirs) fs.rmSync(dir, { recursive: true, force: true })
})

/** A fresh private directory under os.tmpdir(), removed when this process exits. */
export function tmpDir(prefix = 'fdq-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  createdDirs.push(dir)
  return dir
}

/** What {@link runProcess} reports, as `spawnSync` would. */
export interface ProcessResult {
  status: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/**
 * `spawnSync(command, args, { encoding: 'utf8' })` without blocking this process: the
 * other tests of the file run on meanwhile, and their timers do not fire late all at once
 * behind a child that takes seconds on a busy machine. `timeoutMs` (scaled) kills the
 * child with SIGKILL, as spawnSync's `timeout` does.
 */
export function runProcess(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const timer =
      options.timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), scaled(options.timeoutMs))
    child.on('error', reject)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      resolve({ status, signal, stdout, stderr })
    })
  })
}

/** A short socket path (nothing exists there yet) in a fresh mkdtemp directory. */
export function tmpSocketPath(): string {
  return path.join(tmpDir('fdq-'), 's')
}

/** Writes a temp file with `content` and returns its path. */
export function tmpFile(content: string | Uint8Array, dir = tmpDir('fdq-f-'), name = 'f'): string {
  const file = path.join(dir, name)
  fs.writeFileSync(file, content)
  return file
}

/**
 * Reads up to `length` bytes at `position` through `fd` (pread: the fd's offset does not
 * matter); `position: null` reads at the current offset (pipes, sockets).
 */
export function readAt(fd: number, length = 4096, position: number | null = 0): string {
  const buf = Buffer.alloc(length)
  const n = fs.readSync(fd, buf, 0, length, position)
  return buf.subarray(0, n).toString('utf8')
}

/**
 * Reads exactly `n` bytes from a blocking stream, as many reads as it takes (a stream socket
 * may return a message in parts); fails at end of stream before that.
 */
export function readExactlySync(stream: { read(buf: Uint8Array): number }, n: number): Buffer {
  const buf = Buffer.alloc(n)
  for (let got = 0; got < n;) {
    const count = stream.read(buf.subarray(got))
    if (count === 0) throw new Error(`end of stream after ${got} of ${n} bytes`)
    got += count
  }
  return buf
}

/** `dev:ino` of an open fd, exact (bigint stat). */
export function fdIdentity(fd: number): string {
  const st = fs.fstatSync(fd, { bigint: true })
  return `${st.dev}:${st.ino}`
}

/** `dev:ino` of a path, exact (bigint stat). */
export function pathIdentity(file: string): string {
  const st = fs.statSync(file, { bigint: true })
  return `${st.dev}:${st.ino}`
}

/**
 * The file status flags of `fd` with close-on-exec as {@link O_CLOEXEC}: on Linux the
 * `flags:` of /proc/self/fdinfo/<fd>, read independently of fd-queue; elsewhere the access
 * mode, `fs.constants.O_NONBLOCK` and O_CLOEXEC from fd-queue's `fdInfo`.
 */
export const fdFlags = fdState.fdFlags

/** Whether `fd` is close-on-exec (see {@link fdFlags}). */
export const isCloseOnExec = fdState.isCloseOnExec

/** This process's soft limit on open files, which children inherit. */
export const openFileLimit = fdState.openFileLimit

/** O_CLOEXEC as it shows in Linux's fdinfo flags (octal 02000000); {@link fdFlags} uses it everywhere. */
export const O_CLOEXEC = fdState.O_CLOEXEC

/** Linux's O_PATH (octal 010000000 on x86 and arm), which `fs.constants` does not export. */
export const O_PATH = 0o10000000

/**
 * A FIFO (a pipe, S_IFIFO) with both ends open non-blocking. `isWriterOpen()` tells
 * whether any write end is still open anywhere: a read of the empty pipe answers EAGAIN
 * while a writer exists and 0 (EOF) once every write end is closed. This cannot be fooled
 * by fd-number reuse.
 */
export interface Fifo {
  path: string
  readFd: number
  writeFd: number
  isWriterOpen(): boolean
  close(): void
}

export function makeFifo(): Fifo {
  const file = path.join(tmpDir('fdq-p-'), 'p')
  const made = spawnSync('mkfifo', [file])
  if (made.status !== 0) throw new Error(`mkfifo failed: ${made.stderr}`)
  const readFd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  const writeFd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)
  const fifo: Fifo = {
    path: file,
    readFd,
    writeFd,
    isWriterOpen() {
      try {
        const n = fs.readSync(readFd, Buffer.alloc(1), 0, 1, null)
        if (n === 0) return false
        throw new Error('the watched FIFO unexpectedly had data')
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EAGAIN') return true
        throw error
      }
    },
    close() {
      for (const fd of [fifo.readFd, fifo.writeFd]) {
        try {
          if (fd >= 0) fs.closeSync(fd)
        } catch {
          // already closed by the test
        }
      }
      fifo.readFd = -1
      fifo.writeFd = -1
    },
  }
  return fifo
}

/** Closes each fd, ignoring ones already closed. */
export function closeAll(fds: Iterable<number | null | undefined>): void {
  for (const fd of fds) {
    if (typeof fd === 'number' && fd >= 0) {
      try {
        fs.closeSync(fd)
      } catch {
        // already closed
      }
    }
  }
}

export interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  timedOut: boolean
}

export interface FixtureOptions {
  /** Kill the child after this long (default 20 s; scaled by FDQ_TIME_SCALE). */
  timeoutMs?: number
  /** Run under `ulimit -n <n>` (through sh). */
  ulimit?: number
  /** Extra node flags (e.g. `--expose-gc`). */
  nodeArgs?: string[]
  /** The child's stdio (default: stdin ignored, stdout and stderr piped); entries past 2 are inherited fds. */
  stdio?: Array<'ignore' | 'pipe' | number>
}

export interface RunningFixture {
  child: ChildProcess
  /** Resolves with the first stdout line matching `pattern`; rejects if the child ends first (or after `timeoutMs`, default 15 s, scaled). */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>
  /** Resolves once the child exited and its stdio closed. */
  done: Promise<ChildResult>
}

/** Starts `node --import tsx __test__/fixtures/<name>.ts ...args` in the package root. */
export function startFixture(name: string, args: string[], options: FixtureOptions = {}): RunningFixture {
  const script = path.join(ROOT, '__test__', 'fixtures', `${name}.ts`)
  const nodeArgv = [...(options.nodeArgs ?? []), '--import', 'tsx', script, ...args]
  const child =
    options.ulimit === undefined
      ? spawn(process.execPath, nodeArgv, { cwd: ROOT, stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'] })
      : spawn('sh', ['-c', `ulimit -n ${options.ulimit} && exec "$0" "$@"`, process.execPath, ...nodeArgv], {
          cwd: ROOT,
          stdio: ['ignore', 'pipe', 'pipe'],
          // tsx's cache writes hold fds it closes later, which would move the child's count.
          env: { ...process.env, TSX_DISABLE_CACHE: '1' },
        })
  let stdout = ''
  let stderr = ''
  let timedOut = false
  let ended = false
  const waiters = new Set<() => void>()
  child.stdout!.setEncoding('utf8')
  child.stderr!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => {
    stdout += chunk
    for (const wake of waiters) wake()
  })
  child.stderr!.on('data', (chunk: string) => {
    stderr += chunk
  })
  const killAfter = scaled(options.timeoutMs ?? 20_000)
  const timer = setTimeout(() => {
    timedOut = true
    child.kill('SIGKILL')
  }, killAfter)
  const done = new Promise<ChildResult>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      ended = true
      for (const wake of waiters) wake()
      resolve({ code, signal, stdout, stderr, timedOut })
    })
  })
  function waitForLine(pattern: RegExp, budgetMs = 15_000): Promise<string> {
    const timeoutMs = scaled(budgetMs)
    return new Promise((resolve, reject) => {
      const giveUp = setTimeout(() => {
        waiters.delete(check)
        reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms; stdout: ${stdout} stderr: ${stderr}`))
      }, timeoutMs)
      function check() {
        const line = stdout.split('\n').find((l) => pattern.test(l))
        if (line !== undefined) {
          clearTimeout(giveUp)
          waiters.delete(check)
          resolve(line)
        } else if (ended) {
          clearTimeout(giveUp)
          waiters.delete(check)
          reject(new Error(`child ended before printing ${pattern}; stdout: ${stdout} stderr: ${stderr}`))
        }
      }
      waiters.add(check)
      check()
    })
  }
  return { child, waitForLine, done }
}

/** Runs a fixture to its end and collects its output. */
export function runFixture(name: string, args: string[], options: FixtureOptions = {}): Promise<ChildResult> {
  return startFixture(name, args, options).done
}

/** The last stdout line of a child, parsed as JSON (with the child's stderr in the error). */
export function lastJson<T = any>(result: ChildResult): T {
  const lines = result.stdout.trim().split('\n')
  const last = lines[lines.length - 1]
  try {
    return JSON.parse(last) as T
  } catch {
    throw new Error(
      `child printed no JSON (exit ${result.code}, signal ${result.signal}, timedOut ${result.timedOut})\nstdout: ${result.stdout}\nstderr: ${result.stderr}`,
    )
  }
}

/** The error a call throws (fails loudly if it does not throw). */
export function thrown(call: () => unknown): any {
  try {
    call()
  } catch (error) {
    return error
  }
  throw new Error('expected the call to throw')
}

/** A second fd of the same socket or file, ours to own (as a peer would send it over). */
export function copyOf(fd: number | { fd: number }): number {
  const [a, b] = UnixStream.pair()
  a.enqueue(fd)
  a.write('!')
  b.read(Buffer.alloc(1))
  const copy = b.dequeue()!
  a.close()
  b.close()
  return copy
}
