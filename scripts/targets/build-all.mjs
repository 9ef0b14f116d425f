// npm run build:all [-- --only=abi,abi]: cross-builds the addon for every shipped target
// on this machine (napi build -x: cargo-zigbuild with zig as the linker), puts each
// fd-queue.<abi>.node in artifacts/ (where `napi artifacts` takes them from), and checks
// every file statically: format, CPU, OS, the N-API entry point, the libraries it needs,
// the glibc floor (2.17) and the macOS deployment target (11.0).
// Prints one line per target and exits non-zero if any build or check failed.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { inspectBinary, compareVersions } from './inspect.mjs'
import { TARGETS, selectTargets } from './targets.mjs'
import { ROOT, ensurePythonTools, ensureRustTargets, log, run, toolEnv } from './tools.mjs'

export const ARTIFACTS = path.join(ROOT, 'artifacts')

/** Problems with the binary of `target` at `file` (empty when it is what is expected). */
export function checkBinary(target, file) {
  const info = inspectBinary(file)
  const expect = target.expect
  const problems = []
  const formats = expect.format === 'elf' ? ['elf shared object'] : ['mach-o dylib', 'mach-o bundle']
  if (!formats.includes(info.format)) problems.push(`format ${info.format}, expected ${formats.join(' or ')}`)
  if (info.arch !== expect.arch) problems.push(`CPU ${info.arch}, expected ${expect.arch}`)
  if (info.os !== expect.os) problems.push(`OS ${info.os}, expected ${expect.os}`)
  if (!info.exports('napi_register_module_v1')) problems.push('does not export napi_register_module_v1')
  const stray = info.needed.filter((lib) => !expect.libs.includes(lib))
  if (stray.length > 0) problems.push(`needs unexpected libraries: ${stray.join(', ')}`)
  // Versions are numbers (2.17); anything else (GLIBC_PRIVATE, GLIBC_ABI_DT_RELR of glibc
  // 2.36+) ties the binary to one glibc and is refused.
  const odd = info.glibc.filter((v) => !/^\d+(\.\d+)*$/.test(v))
  const numeric = info.glibc.filter((v) => !odd.includes(v))
  const glibc = numeric.reduce((max, v) => (max === undefined || compareVersions(v, max) > 0 ? v : max), undefined)
  if (expect.glibcMax === null && info.glibc.length > 0)
    problems.push(`asks for glibc symbols (GLIBC_${info.glibc[0]})`)
  if (expect.glibcMax && odd.length > 0) problems.push(`asks for ${odd.map((v) => `GLIBC_${v}`).join(', ')}`)
  if (expect.glibcMax && glibc && compareVersions(glibc, expect.glibcMax) > 0) {
    problems.push(`needs GLIBC_${glibc}, above the ${expect.glibcMax} floor`)
  }
  if (expect.macosMax) {
    if (!info.macosMin) problems.push('no macOS deployment target recorded')
    else if (compareVersions(info.macosMin, expect.macosMax) > 0) {
      problems.push(`macOS ${info.macosMin} or later, expected ${expect.macosMax}`)
    }
  }
  const summary = [
    info.format,
    info.arch,
    info.os,
    glibc ? `GLIBC_${glibc}` : null,
    info.macosMin ? `macOS ${info.macosMin}+` : null,
    `needs ${info.needed.join(' ') || 'nothing'}`,
  ]
    .filter(Boolean)
    .join(', ')
  return { problems, summary }
}

function configuredTriples() {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
  return pkg.napi.targets
}

export function buildTargets(targets) {
  const configured = configuredTriples()
  const listed = TARGETS.map((t) => t.triple)
  if (configured.length !== listed.length || !configured.every((t) => listed.includes(t))) {
    throw new Error(`package.json napi.targets (${configured}) and scripts/targets/targets.mjs (${listed}) differ`)
  }
  ensurePythonTools()
  ensureRustTargets(targets.map((t) => t.triple))
  fs.mkdirSync(ARTIFACTS, { recursive: true })
  fs.mkdirSync(path.join(ROOT, 'target'), { recursive: true })
  const results = []
  for (const target of targets) {
    const scratch = fs.mkdtempSync(path.join(ROOT, 'target', `build-all-${target.abi}-`))
    const file = path.join(ARTIFACTS, `fd-queue.${target.abi}.node`)
    fs.rmSync(file, { force: true })
    try {
      log(`napi build -x --target ${target.buildTriple ?? target.triple}`)
      // --no-js, and the generated types into the scratch directory: the repository's
      // binding.js, binding.d.ts and index.d.ts are never touched.
      run(
        path.join(ROOT, 'node_modules', '.bin', 'napi'),
        [
          'build',
          '--platform',
          '--release',
          '-x',
          '--target',
          target.buildTriple ?? target.triple,
          '--no-js',
          '--dts',
          'types.d.ts',
          '-o',
          scratch,
        ],
        { cwd: ROOT, env: toolEnv(target.env) },
      )
      fs.copyFileSync(path.join(scratch, `fd-queue.${target.abi}.node`), file)
      const { problems, summary } = checkBinary(target, file)
      results.push({ target, ok: problems.length === 0, text: problems.length ? problems.join('; ') : summary })
    } catch (error) {
      results.push({ target, ok: false, text: error.message })
    } finally {
      fs.rmSync(scratch, { recursive: true, force: true })
    }
  }
  return results
}

// Run as a script (not imported by test-targets.mjs): compared as real paths, so a checkout
// path with spaces or a symlink cannot make it do nothing.
if (process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url))) {
  const targets = selectTargets(process.argv.slice(2))
  const results = buildTargets(targets)
  console.log('\nbuild:all')
  for (const { target, ok, text } of results) {
    console.log(
      `${ok ? 'ok    ' : 'FAILED'} ${target.abi.padEnd(16)} ${path.relative(ROOT, ARTIFACTS)}/fd-queue.${target.abi}.node: ${text}`,
    )
  }
  const failed = results.filter((r) => !r.ok).length
  console.log(`build:all: ${results.length - failed} built and checked, ${failed} failed`)
  process.exitCode = failed === 0 ? 0 : 1
}
