// Fails when a module of the Rust crate uses, directly or through others, a module that
// uses it back: every file in src/ has one job, and the dependencies between them go one
// way. A dependency is a `crate::` path in the code, grouped ones (`crate::{a, b}`) too;
// comments, string literals and a file's `tests` module (test code may use anything) are
// left out. `nonblocking/` and `runtime/` count file by file.
//
// usage: node scripts/check-module-cycles.mjs [src-dir]

import fs from 'node:fs'
import path from 'node:path'

const root = path.resolve(process.argv[2] ?? 'src')

/** Every .rs file under `dir`, as paths relative to `root`. */
function rustFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) return rustFiles(full)
    return entry.name.endsWith('.rs') ? [path.relative(root, full)] : []
  })
}

/** The module a file is: `socket`, `nonblocking::stream`, `runtime` (for runtime/mod.rs). */
function moduleOf(file) {
  return file
    .replace(/\.rs$/, '')
    .replace(/(^|\/)mod$/, '')
    .split(path.sep)
    .join('::')
}

/** The code of a file without comments, string literals and its `tests` module. */
function code(text) {
  const withoutTests = text.split(/#\[cfg\(test\)\]\s*mod tests\b/)[0]
  return withoutTests
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\/\/.*$/gm, '')
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
}

const modules = new Map(rustFiles(root).map((file) => [moduleOf(file), file]))
modules.delete('lib')

/**
 * The paths a `crate::` reference names, as `[first, second?]` segments: one for
 * `crate::a::b`, one per item for `crate::{a, b::c, d::{e, f}}` (nested groups too).
 */
function cratePaths(text) {
  const paths = []
  for (const match of text.matchAll(/crate::(\{|[a-z_][a-z0-9_]*)/g)) {
    if (match[1] !== '{') {
      const rest = /^(?:::([a-z_][a-z0-9_]*))?/.exec(text.slice(match.index + match[0].length))
      paths.push([match[1], rest?.[1]])
      continue
    }
    // A group: its items at depth 0, each a path of its own (`a::{b, c}` counts as `a`'s
    // `b` and `c`, which is enough to find the module).
    let depth = 0
    let end = match.index + match[0].length - 1
    for (; end < text.length; end++) {
      if (text[end] === '{') depth++
      else if (text[end] === '}' && --depth === 0) break
    }
    const group = text.slice(match.index + match[0].length, end)
    for (const item of group.matchAll(
      /(?:^|[,{])\s*([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*|\{\s*([a-z_][a-z0-9_]*)))?/g,
    )) {
      paths.push([item[1], item[2]?.startsWith('{') ? item[3] : item[2]])
    }
  }
  return paths
}

const uses = new Map()
for (const [name, file] of modules) {
  const targets = new Set()
  for (const [first, second] of cratePaths(code(fs.readFileSync(path.join(root, file), 'utf8')))) {
    const nested = second !== undefined && modules.has(`${first}::${second}`)
    const target = nested ? `${first}::${second}` : first
    if (target !== name && modules.has(target)) targets.add(target)
  }
  uses.set(name, targets)
}

// Tarjan's strongly connected components: any of more than one module is a cycle.
let counter = 0
const index = new Map()
const low = new Map()
const stack = []
const onStack = new Set()
const cycles = []
function visit(name) {
  index.set(name, counter)
  low.set(name, counter)
  counter++
  stack.push(name)
  onStack.add(name)
  for (const target of uses.get(name)) {
    if (!index.has(target)) {
      visit(target)
      low.set(name, Math.min(low.get(name), low.get(target)))
    } else if (onStack.has(target)) {
      low.set(name, Math.min(low.get(name), index.get(target)))
    }
  }
  if (low.get(name) === index.get(name)) {
    const component = []
    let member
    do {
      member = stack.pop()
      onStack.delete(member)
      component.push(member)
    } while (member !== name)
    if (component.length > 1) cycles.push(component.sort())
  }
}
for (const name of [...modules.keys()].sort()) if (!index.has(name)) visit(name)

if (cycles.length > 0) {
  for (const cycle of cycles) {
    console.error(`modules that use each other: ${cycle.join(', ')}`)
    for (const name of cycle) {
      const within = [...uses.get(name)].filter((target) => cycle.includes(target)).sort()
      console.error(`  ${name} uses ${within.join(', ')}`)
    }
  }
  process.exit(1)
}
console.log(`${modules.size} modules in ${path.relative(process.cwd(), root) || '.'}, no cycles`)
