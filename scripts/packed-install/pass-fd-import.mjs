// Packed-install probe: the ESM entry point (`import … from 'fd-queue'`) passes an fd between
// two processes, and every runtime export of the package is an ESM named export too (Node
// finds a CommonJS module's names by scanning its source: they must be detectable).
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import * as namespace from 'fd-queue'
import {
  AsyncUnixListener,
  AsyncUnixStream,
  FdServer,
  FdSocket,
  QueueFullError,
  UnixListener,
  UnixStream,
  connect,
  createServer,
  toFd,
} from 'fd-queue'
import probe from './pass-fd.cjs'

const named = {
  AsyncUnixListener,
  AsyncUnixStream,
  FdServer,
  FdSocket,
  QueueFullError,
  UnixListener,
  UnixStream,
  connect,
  createServer,
  toFd,
}
const notFunctions = Object.keys(named).filter((name) => typeof named[name] !== 'function')
const required = createRequire(import.meta.url)('fd-queue')
const missing = Object.keys(required).filter((name) => name !== '__esModule' && namespace[name] !== required[name])

if (process.argv[2] !== 'receiver' && (notFunctions.length > 0 || missing.length > 0)) {
  console.error(
    `not functions: ${notFunctions.join(', ') || 'none'}; missing from the ESM namespace: ${missing.join(', ') || 'none'}`,
  )
  process.exitCode = 1
} else {
  await probe.main({ UnixStream, UnixListener }, fileURLToPath(import.meta.url), process.argv.slice(2))
}
