/**
 * The examples run as written, and the README shows them verbatim: every ```js block of
 * README.md that starts with `// examples/<file>` must equal that file.
 */
import test from 'ava'
import { execFile, spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import { promisify } from 'node:util'
import { AsyncUnixListener } from '../index.js'
import { ROOT, scaled, tmpDir, tmpFile, tmpSocketPath } from './helpers.js'

const run = promisify(execFile)
const example = (name: string) => path.join(ROOT, 'examples', name)

async function node(args: string[], timeout = 20_000) {
  return run(process.execPath, args, { cwd: ROOT, timeout: scaled(timeout) })
}

test('README code blocks that name an example file are that file, verbatim', (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  const blocks = [...readme.matchAll(/```js\n(\/\/ (examples\/[\w.-]+))[^\n]*\n([\s\S]*?)```/g)]
  const named = blocks.map((m) => m[2]).sort()
  t.deepEqual(named, [
    'examples/async.mjs',
    'examples/broker-minimal.mjs',
    'examples/broker-worker.mjs',
    'examples/pair.mjs',
    'examples/receiver.mjs',
    'examples/sender.mjs',
    'examples/spawn-child.mjs',
    'examples/stream.mjs',
  ])
  for (const m of blocks) {
    const block = m[0].slice('```js\n'.length, -'```'.length)
    t.is(block, fs.readFileSync(path.join(ROOT, m[2]), 'utf8'), `${m[2]} differs from its README block`)
  }
})

test('examples/pair.mjs reads the file through the received fd', async (t) => {
  const { stdout } = await node([example('pair.mjs')])
  t.is(stdout.trim(), '1 hello through SCM_RIGHTS')
})

test('examples/async.mjs: the client writes into the log through the fd it was sent', async (t) => {
  const { stdout } = await node([example('async.mjs')])
  t.regex(stdout.trim(), /^client \d+ got: here is your log file$/)
})

test('examples/stream.mjs: the server streams back each file it received an fd for', async (t) => {
  const { stdout } = await node([example('stream.mjs')])
  t.is(stdout.trim(), 'CONTENTS OF A.TXT\nCONTENTS OF B.TXT')
})

test('examples/pass-file.mjs (npm run example): the second process reads the file', async (t) => {
  const { stdout } = await node([example('pass-file.mjs')])
  t.regex(stdout, /read through it: "Hello from process \d+, through SCM_RIGHTS\."/)
  t.regex(stdout, /\[parent\] +the receiver read the file through the fd it was sent: OK/)
})

test('examples/receiver.mjs and examples/sender.mjs: sizes of the files sent', async (t) => {
  const socketPath = tmpSocketPath()
  const dir = tmpDir()
  const files = [tmpFile('x'.repeat(3), dir, 'a'), tmpFile('y'.repeat(70_000), dir, 'b')]
  const receiver = spawn(process.execPath, [example('receiver.mjs'), socketPath], { cwd: ROOT })
  let stdout = ''
  receiver.stdout.on('data', (chunk) => (stdout += chunk))
  const exited = new Promise<number | null>((resolve) => receiver.on('exit', resolve))
  const deadline = Date.now() + scaled(10_000)
  while (!fs.existsSync(socketPath) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  try {
    await node([example('sender.mjs'), socketPath, ...files])
    t.is(await exited, 0)
  } finally {
    receiver.kill()
  }
  t.deepEqual(
    stdout
      .trim()
      .split('\n')
      .map((line) => line.replace(/^fd \d+: /, '')),
    ['3 bytes', '70000 bytes'],
  )
  t.false(fs.existsSync(socketPath), 'the listener removed its socket file')
})

/** A process of the README broker, with its output collected. */
function startBroker(script: string, env: Record<string, string>) {
  const child = spawn(process.execPath, [example(script)], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return {
    child,
    exited,
    output: () => output,
    async line(pattern: RegExp): Promise<RegExpExecArray> {
      for (;;) {
        const match = pattern.exec(output)
        if (match) return match
        const code = await Promise.race([
          new Promise<undefined>((resolve) => child.stdout.once('data', () => resolve(undefined))),
          new Promise<undefined>((resolve) => child.stderr.once('data', () => resolve(undefined))),
          exited,
        ])
        if (code !== undefined && !pattern.exec(output)) throw new Error(`${script} exited (${code}): ${output}`)
      }
    },
  }
}

/** One TCP connection to the broker: what came back before the end ('' if it was just closed). */
function ask(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    let reply = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => (reply += chunk))
    socket.on('error', () => {})
    socket.on('close', () => resolve(reply))
  })
}

/** Asks until a worker answers (workers register asynchronously); returns its pid. */
async function servedBy(port: number): Promise<number> {
  for (;;) {
    const match = /^served by worker (\d+)$/m.exec(await ask(port))
    if (match) return Number(match[1])
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('README broker (broker-minimal.mjs + broker-worker.mjs) survives a worker that dies and its own restart', async (t) => {
  const env = { BROKER_SOCKET: tmpSocketPath(), PORT: '0' }
  let broker = startBroker('broker-minimal.mjs', env)
  const started: Array<ReturnType<typeof startBroker>> = [broker]
  try {
    let port = Number((await broker.line(/broker listening on port (\d+)/))[1])
    const first = startBroker('broker-worker.mjs', env)
    started.push(first)
    t.is(await servedBy(port), first.child.pid!)
    // The worker dies: the broker forgets it (no ERR_SOCKET_CLOSED), and a new one takes over.
    first.child.kill('SIGKILL')
    await first.exited
    t.is(await ask(port), '', 'with no worker, a connection is closed')
    const second = startBroker('broker-worker.mjs', env)
    started.push(second)
    t.is(await servedBy(port), second.child.pid!)
    // A second broker on the same socket path refuses to start: the first one is alive.
    const rival = startBroker('broker-minimal.mjs', { ...env })
    started.push(rival)
    t.is(await rival.exited, 1)
    t.regex(rival.output(), /another broker is listening/)
    // The broker dies and leaves its socket file behind; a restarted broker takes the path.
    broker.child.kill('SIGKILL')
    await broker.exited
    t.true(fs.existsSync(env.BROKER_SOCKET), 'the dead broker left its socket file')
    broker = startBroker('broker-minimal.mjs', env)
    started.push(broker)
    port = Number((await broker.line(/broker listening on port (\d+)/))[1])
    const third = startBroker('broker-worker.mjs', env)
    started.push(third)
    t.is(await servedBy(port), third.child.pid!)
    t.notRegex(broker.output(), /Error|EADDRINUSE/)
  } finally {
    for (const process of started) process.child.kill('SIGKILL')
  }
})

test('README Python peer: receives our fds close-on-exec (recvmsg + MSG_CMSG_CLOEXEC) and sends one back', async (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  const block = /```python\n([\s\S]*?)```/.exec(readme)
  t.truthy(block, 'the README has a Python example')
  if (!block) return
  const socketPath = tmpSocketPath()
  const script = block[1].replace("'/tmp/demo.sock'", JSON.stringify(socketPath))
  t.not(script, block[1], 'the example connects to /tmp/demo.sock')
  const dir = tmpDir()
  const files = [tmpFile('x'.repeat(5), dir, 'a'), tmpFile('y'.repeat(1234), dir, 'b')]
  const listener = AsyncUnixListener.bind(socketPath)
  const python = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  python.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  python.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const exited = new Promise<number | null>((resolve) => python.on('close', resolve))
  const stream = await listener.accept()
  for (const file of files) {
    const fd = fs.openSync(file, 'r')
    stream.enqueue(fd)
    fs.closeSync(fd)
  }
  await stream.write('two files')
  // Python -> fd-queue: one byte with the fd of /etc/hostname.
  let got = 0
  while (got < 1) got += (await stream.read()).length
  const fd = stream.dequeue()
  t.not(fd, null)
  t.is(fs.fstatSync(fd!).ino, fs.statSync('/etc/hostname').ino)
  fs.closeSync(fd!)
  t.is(await exited, 0, stderr)
  t.deepEqual(stdout.trim().split('\n'), ['5 close-on-exec', '1234 close-on-exec'])
  stream.close()
  listener.close()
})

test('examples/spawn-child.mjs: the child adopts its inherited fd 3; files go both ways', async (t) => {
  const { stdout } = await node([example('spawn-child.mjs')], 60_000)
  const [child, parent, ...rest] = stdout.trim().split('\n')
  t.is(child, 'child got "take this" and read: a file from the parent')
  t.regex(parent, /^parent got "here is mine" and read: an answer from child \d+$/)
  t.deepEqual(rest, [])
})

test('examples/seqpacket-service.mjs: a client process gets a file opened for it and has its own file counted', async (t) => {
  const { stdout } = await node([example('seqpacket-service.mjs')])
  t.is(stdout.trim(), 'open motd: ok, read through the fd: hello from the service\nlines of notes.txt: 3')
})

test('examples/fd-store.mjs: the listening socket survives a restart in the fd store; a client between generations is served', async (t) => {
  const { stdout } = await node([example('fd-store.mjs')])
  const lines = stdout.trim().split('\n')
  const first = /^manager: generation 1 is listening on port (\d+); the fd store holds: http$/.exec(lines[0])
  t.truthy(first, stdout)
  t.regex(lines[1], /^client: generation 1 \(pid \d+\)$/)
  t.is(lines[2], `manager: generation 2 is listening on port ${first![1]}`, 'the same socket, so the same port')
  const second = /^client that connected between generations: generation 2 \(pid (\d+)\)$/.exec(lines[3])
  t.truthy(second, stdout)
  t.is(lines[4], `client: generation 2 (pid ${second![1]})`)
  t.is(lines.length, 5)
})

test('examples/dbus-fd.mjs: fds go both ways through a real dbus-daemon, with dbus-native on FdSocket', async (t) => {
  const { stdout } = await node([example('dbus-fd.mjs')])
  const lines = fs.readFileSync(example('dbus-fd.mjs'), 'utf8').split('\n').length - 1
  t.is(
    stdout.trim(),
    `Open('motd') → fd, read through it: hello through dbus-daemon\nCountLines(this file's fd) → ${lines} lines`,
  )
})
