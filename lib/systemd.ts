/**
 * systemd's protocols: socket activation (`listenFds`) and `sd_notify` with the fd store
 * (`sdNotify`). Both work against any service manager that speaks them.
 */
import * as fs from 'node:fs'
import { binding } from './binding.js'
import { codedError, invalidArgType, invalidArgValue, native } from './errors.js'
import { toFd } from './args.js'
import type { FdLike } from './interfaces.js'
import { DatagramSocket } from './message.js'

/** The first fd socket activation passes (`SD_LISTEN_FDS_START`). */
const LISTEN_FDS_START = 3

/** A socket passed by socket activation. */
export interface ListenFd {
  fd: number
  /** Its name from `LISTEN_FDNAMES` (`FileDescriptorName=`), or `'unknown'`. */
  name: string
}

/**
 * The sockets the service manager passed to this process (`LISTEN_PID` is this process,
 * `LISTEN_FDS` how many, from fd 3 on, `LISTEN_FDNAMES` their names); empty when none.
 * Like `sd_listen_fds(1)`, it unsets those variables (children must not inherit them,
 * whoever they were meant for) and makes the fds close-on-exec. Each can then be adopted:
 * `UnixListener.fromFd`, `server.listen({ fd })`, `SeqpacketListener.fromFd`,
 * `DatagramSocket.fromFd`, `net.createServer().listen({ fd })`.
 */
export function listenFds(): ListenFd[] {
  const { LISTEN_PID: pid, LISTEN_FDS: count, LISTEN_FDNAMES: names } = process.env
  delete process.env.LISTEN_PID
  delete process.env.LISTEN_FDS
  delete process.env.LISTEN_FDNAMES
  if (pid === undefined || count === undefined) return []
  if (!/^[0-9]+$/.test(pid) || Number(pid) !== process.pid) return []
  if (!/^[0-9]+$/.test(count)) {
    throw codedError(new Error(`LISTEN_FDS is not a number of fds: ${JSON.stringify(count)}`), 'ERR_INVALID_ARG_VALUE')
  }
  const n = Number(count)
  if (n === 0) return []
  // As sd_listen_fds: the fds must fit below INT_MAX.
  if (n > 0x7fffffff - LISTEN_FDS_START) {
    throw codedError(new RangeError(`LISTEN_FDS is out of range: ${count}`), 'ERR_OUT_OF_RANGE')
  }
  native(() => binding.claimInheritedFds(LISTEN_FDS_START, n))
  const named = names === undefined ? [] : names.split(':')
  return Array.from({ length: n }, (_, i) => ({ fd: LISTEN_FDS_START + i, name: named[i] || 'unknown' }))
}

/** A state as `sd_notify` sends it: `KEY=value` lines. */
function notifyText(state: unknown): string {
  if (typeof state === 'string') return state
  if (state === null || typeof state !== 'object' || Array.isArray(state)) {
    throw invalidArgType('state', 'a string or an object of KEY: value', state)
  }
  const lines: string[] = []
  for (const [key, value] of Object.entries(state)) {
    if (!/^[A-Z0-9_]+$/.test(key)) throw invalidArgValue(`state.${key}`, 'is not a variable name (A-Z, 0-9, _)')
    let text: string
    if (typeof value === 'boolean') text = value ? '1' : '0'
    else if (typeof value === 'number' && Number.isFinite(value)) text = String(value)
    else if (typeof value === 'string') text = value
    else throw invalidArgType(`state.${key}`, 'a string, a finite number or a boolean', value)
    if (text.includes('\n')) throw invalidArgValue(`state.${key}`, 'contains a newline')
    // As systemd checks it (fdname_is_valid): LISTEN_FDNAMES joins the names with ':'.
    if (key === 'FDNAME' && (text.length > 255 || !/^[\x20-\x7e]*$/.test(text) || text.includes(':'))) {
      throw invalidArgValue(
        'state.FDNAME',
        'is not a name systemd takes (at most 255 printable ASCII characters, no ":")',
      )
    }
    lines.push(`${key}=${text}`)
  }
  return lines.join('\n')
}

/**
 * Sends `state` to the service manager (`$NOTIFY_SOCKET`: a path, or `@name` for an
 * abstract address) as one datagram, with `fds` attached: `sdNotify({ FDSTORE: 1,
 * FDNAME: 'http' }, [server])` keeps a listening socket in the fd store across restarts of
 * the service (it comes back through `listenFds()`). Resolves `false` when `NOTIFY_SOCKET`
 * is unset, `true` once sent; rejects with the system error otherwise (`ENOENT`,
 * `ECONNREFUSED`, `EPERM`, ...).
 */
export function sdNotify(state: string | Record<string, string | number | boolean>, fds?: FdLike[]): Promise<boolean> {
  // Bad arguments throw here, at the call, as from every Promise-returning method.
  const text = notifyText(state)
  if (fds !== undefined && !Array.isArray(fds)) throw invalidArgType('fds', 'an array of fds', fds)
  const raw = Array.from(fds ?? [], (fd: FdLike, i) => toFd(fd, `fds[${i}]`))
  // An fd that is not open is EBADF at the call too, as from `enqueue` and `send`.
  for (const fd of raw) fs.fstatSync(fd)
  return notify(text, raw)
}

/** Sends `text` with `fds` to `NOTIFY_SOCKET`; `false` when it is unset. */
async function notify(text: string, raw: number[]): Promise<boolean> {
  const target = process.env.NOTIFY_SOCKET
  if (!target) return false
  let path: string
  if (target.startsWith('@')) path = `\0${target.slice(1)}`
  else if (target.startsWith('/')) path = target
  else throw invalidArgValue('NOTIFY_SOCKET', `is ${JSON.stringify(target)}: only a path or @name is supported`)
  const socket = DatagramSocket.bind()
  try {
    await socket.sendTo(path, text, raw)
  } finally {
    socket.close()
  }
  return true
}
