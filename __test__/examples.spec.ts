/**
 * The examples run as written, and the README shows them verbatim: every ```js block of
 * README.md that starts with `// examples/<file>` must equal that file.
 */
import test from 'ava'
import { execFile, spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { promisify } from 'node:util'
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
    'examples/pair.mjs',
    'examples/receiver.mjs',
    'examples/sender.mjs',
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
