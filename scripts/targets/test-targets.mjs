// npm run test:targets [-- --smoke] [-- --only=abi,abi]: tests the binaries of the Linux
// targets this machine can run besides its own, the way users get them:
//   linux-arm64-gnu   under qemu-user, with the official Node.js arm64 build
//   linux-x64-musl    natively, with a musl build of Node.js
//   linux-arm64-musl  under qemu-user, with a musl build of Node.js
// For each: the packed-install test (root tarball + that target's platform package,
// installed offline, an fd passed through require and import), then the whole ava suite
// with that Node.js and that binary. `--smoke` runs the packed-install test only (what
// .ci/run does); `--require-all` fails when one of these three cannot run here. A binary
// missing from artifacts/ or older than the sources is built first (build-all.mjs), one
// that is there is checked statically again; the
// Node.js builds, C libraries and emulator are installed by tools.mjs.
// States per target: passed / failed / not runnable here (and why); exits non-zero if any
// target failed.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

import { ARTIFACTS, buildTargets, checkBinary } from './build-all.mjs'
import { TARGETS, selectTargets } from './targets.mjs'
import { ROOT, ensureArm64Emulation, ensureNode, ensurePythonTools, log } from './tools.mjs'

const argv = process.argv.slice(2)
const smoke = argv.includes('--smoke')
// A target that cannot run here fails the command, instead of being reported only.
const requireAll = argv.includes('--require-all')
const targets = selectTargets(argv)

// Emulation runs everything about 10× slower: every hang guard of the suite is scaled
// (FDQ_TIME_SCALE, see __test__/helpers.ts), and so is ava's own per-test timeout.
const SCALE = { qemu: 10, native: 2 }

function hostEsbuild() {
  const dir = path.join(ROOT, 'node_modules', '@esbuild')
  const platform = fs.existsSync(dir) ? fs.readdirSync(dir).find((d) => d.startsWith(`${process.platform}-`)) : null
  return platform ? path.join(dir, platform, 'bin', 'esbuild') : null
}

/** When the Rust sources (src/, Cargo.toml, Cargo.lock, build.rs) last changed. */
function newestSource() {
  const files = ['Cargo.toml', 'Cargo.lock', 'build.rs'].map((f) => path.join(ROOT, f))
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) walk(full)
      else files.push(full)
    }
  }
  walk(path.join(ROOT, 'src'))
  return Math.max(...files.filter((f) => fs.existsSync(f)).map((f) => fs.statSync(f).mtimeMs))
}

function lastMatch(text, pattern) {
  const all = [...text.matchAll(pattern)]
  return all.at(-1)
}

async function testTarget(target) {
  const binary = path.join(ARTIFACTS, `fd-queue.${target.abi}.node`)
  const stale = fs.existsSync(binary) && fs.statSync(binary).mtimeMs < newestSource()
  if (!fs.existsSync(binary) || stale) {
    log(`${stale ? 'older than the sources' : 'no'} ${path.relative(ROOT, binary)}: building it`)
    const [built] = buildTargets([target])
    if (!built.ok) return { status: 'failed', detail: `build: ${built.text}` }
  } else {
    const { problems } = checkBinary(target, binary)
    if (problems.length > 0)
      return { status: 'failed', detail: `${path.relative(ROOT, binary)}: ${problems.join('; ')}` }
  }
  if (target.run.how === 'qemu') {
    const emulation = ensureArm64Emulation()
    if (!emulation.ok) return { status: 'not runnable here', detail: emulation.why }
  }
  const { node, env: nodeEnv } = await ensureNode(target)
  const scale = SCALE[target.run.how]
  const env = {
    ...process.env,
    ...nodeEnv,
    FDQ_TARGET: target.abi,
    FDQ_BINARY_DIR: ARTIFACTS,
    FDQ_TARGET_NODE: node,
    FDQ_TIME_SCALE: String(scale),
  }
  log(`${target.abi}: packed-install test with ${node}`)
  const packed = spawnSync('bash', [path.join(ROOT, 'scripts', 'packed-install-test.sh')], {
    cwd: ROOT,
    env,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  process.stdout.write(packed.stdout)
  const packedLine =
    lastMatch(packed.stdout, /packed-install: (\d+) passed, (\d+) failed/g)?.[0] ?? 'packed-install: no result'
  const details = [packedLine]
  if (packed.status !== 0) return { status: 'failed', detail: details.join('; ') }
  if (smoke) return { status: 'passed', detail: details.join('; ') }

  log(`${target.abi}: the ava suite with ${node} (FDQ_TIME_SCALE=${scale})`)
  const suiteEnv = {
    ...env,
    // The suite's child processes run `node` and process.execPath: both are the target's.
    PATH: `${path.dirname(node)}:${process.env.PATH}`,
    // napi-rs's loader looks for the binary next to binding.js or in the platform package;
    // the suite runs from the repository, so it is named directly.
    NAPI_RS_NATIVE_LIBRARY_PATH: binary,
  }
  // tsx compiles the TypeScript with esbuild's native binary, a separate process that only
  // exchanges text with Node: the host's serves an emulated Node as well.
  const esbuild = hostEsbuild()
  if (target.run.how === 'qemu' && esbuild) suiteEnv.ESBUILD_BINARY_PATH = esbuild
  const started = Date.now()
  // Streamed as it runs (an emulated suite takes a while), and kept for the summary.
  const ava = await new Promise((resolve, reject) => {
    const child = spawn(
      node,
      [path.join(ROOT, 'node_modules', 'ava', 'entrypoints', 'cli.mjs'), `--timeout=${2 * scale}m`],
      { cwd: ROOT, env: suiteEnv, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let text = ''
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding('utf8')
      stream.on('data', (chunk) => {
        text += chunk
        process.stdout.write(chunk)
      })
    }
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, text }))
  })
  const output = ava.text
  fs.mkdirSync(path.join(ROOT, 'target'), { recursive: true })
  const logFile = path.join(ROOT, 'target', `test-targets-${target.abi}.log`)
  fs.writeFileSync(logFile, output)
  // ava prints "N tests passed" only when none failed; otherwise its ✔ lines tell.
  const passed = lastMatch(output, /(\d+) tests? passed/g)?.[1] ?? String((output.match(/^\s*✔/gm) ?? []).length)
  const failed = lastMatch(output, /(\d+) tests? failed/g)?.[1] ?? (ava.status === 0 ? '0' : '?')
  const known = lastMatch(output, /(\d+) known failures?/g)?.[1]
  const minutes = ((Date.now() - started) / 60000).toFixed(1)
  details.push(
    `ava: ${passed} passed, ${failed} failed${known ? `, ${known} known failures` : ''} in ${minutes} min (log: ${path.relative(ROOT, logFile)})`,
  )
  return { status: ava.status === 0 ? 'passed' : 'failed', detail: details.join('; ') }
}

const results = []
for (const target of targets) {
  if (target.run.how === 'host') {
    results.push({ target, status: 'host', detail: target.run.note })
    continue
  }
  if (target.run.how === 'none') {
    results.push({ target, status: 'not runnable here', detail: target.run.why })
    continue
  }
  try {
    ensurePythonTools()
    results.push({ target, ...(await testTarget(target)) })
  } catch (error) {
    results.push({ target, status: 'failed', detail: error.message })
  }
}

console.log(`\ntest:targets${smoke ? ' --smoke' : ''}`)
for (const { target, status, detail } of results) {
  console.log(`${target.abi.padEnd(16)} ${status}: ${detail}`)
}
const failed = results.filter(
  (r) => r.status === 'failed' || (requireAll && r.status === 'not runnable here' && r.target.run.how !== 'none'),
).length
process.exitCode = failed === 0 ? 0 : 1
