/**
 * The static checks of `npm run build:all` (scripts/targets/), on binaries at hand: the
 * addon this machine built, checked against its own target and against a target of
 * another CPU; files that are no shared object; and every binary build:all left in
 * artifacts/ (in CI: all seven), checked against its target.
 */
import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { ROOT, tmpFile } from './helpers.js'

const scripts = path.join(ROOT, 'scripts', 'targets')
let inspectBinary: (file: string) => any
let checkBinary: (target: Target, file: string) => { problems: string[]; summary: string }
let TARGETS: Target[]
test.before(async () => {
  ;({ inspectBinary } = await import(path.join(scripts, 'inspect.mjs')))
  ;({ checkBinary } = await import(path.join(scripts, 'build-all.mjs')))
  ;({ TARGETS } = await import(path.join(scripts, 'targets.mjs')))
})

type Target = { triple: string; abi: string; expect: { arch: string; os: string } }

function hostAbi(): string {
  const libc =
    process.platform === 'linux'
      ? (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime
        ? '-gnu'
        : '-musl'
      : ''
  return `${process.platform}-${process.arch}${libc}`
}

/** The addon this process runs: the one named to napi-rs's loader (test:targets), or the build's. */
function addonFile(): string {
  return process.env.NAPI_RS_NATIVE_LIBRARY_PATH ?? path.join(ROOT, `fd-queue.${hostAbi()}.node`)
}

test('the addon this process runs reads as this machine: CPU, OS, the N-API entry point', (t) => {
  const file = addonFile()
  t.true(fs.existsSync(file), `${file} (npm run build makes it)`)
  const info = inspectBinary(file)
  t.is(info.arch, process.arch)
  t.is(info.os, process.platform)
  t.true(info.exports('napi_register_module_v1'))
  t.false(info.exports('napi_register_module_v0'), 'an export that is not there is not found')
  t.true(info.needed.length > 0, `it needs the C library: ${info.needed.join(' ')}`)

  const host = TARGETS.find((target) => target.abi === hostAbi())!
  const foreign = TARGETS.find(
    (target) => target.expect.os === host.expect.os && target.expect.arch !== host.expect.arch,
  )!
  const own = checkBinary(host, file).problems.join('; ')
  t.notRegex(own, /CPU|OS |format|napi_register_module_v1/, 'the right target finds no wrong CPU, OS or format')
  t.regex(
    checkBinary(foreign, file).problems.join('; '),
    new RegExp(`CPU ${process.arch}, expected ${foreign.expect.arch}`),
  )
})

test('a file that is no 64-bit ELF or Mach-O file, or is cut short, is refused', (t) => {
  t.throws(() => inspectBinary(tmpFile('#!/bin/sh\n')), { message: /neither a 64-bit little-endian ELF/ })
  const elf = fs.readFileSync(addonFile())
  t.throws(() => inspectBinary(tmpFile(elf.subarray(0, 40))))
})

test('every binary npm run build:all left in artifacts/ passes its target’s checks', (t) => {
  const present = TARGETS.filter((target) => fs.existsSync(path.join(ROOT, 'artifacts', `fd-queue.${target.abi}.node`)))
  t.log(`${present.length} of ${TARGETS.length} in artifacts/ (npm run build:all makes them)`)
  for (const target of present) {
    const { problems, summary } = checkBinary(target, path.join(ROOT, 'artifacts', `fd-queue.${target.abi}.node`))
    t.deepEqual(problems, [], `${target.abi}: ${summary}`)
  }
  t.pass()
})
