/**
 * Inputs at the edges: bytes from another realm, byte counts past 32 bits, stream options
 * an fd socket cannot honour, and errors from the binding layer: every error has a
 * Node-style `code`, and nothing is refused that Node itself would accept.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { constants as bufferConstants } from 'node:buffer'
import * as vm from 'node:vm'
import { AsyncUnixListener, AsyncUnixStream, FdServer, FdSocket, UnixStream } from '../index.js'
import { shapeError } from '../lib/errors.js'
import { binding } from '../lib/binding.js'
import { tmpSocketPath } from './helpers.js'
import { checkNoFdLeaked, onceEvent, readExactly, withTimeout } from './async-helpers.js'

checkNoFdLeaked()

/** A Uint8Array made in another realm (a `vm` context): `instanceof Uint8Array` is false here. */
function foreignBytes(text: string): Uint8Array {
  const bytes = vm.runInNewContext(`new Uint8Array(${JSON.stringify([...Buffer.from(text)])})`) as Uint8Array
  if (bytes instanceof Uint8Array) throw new Error('expected a Uint8Array of another realm')
  return bytes
}

test('a Uint8Array from another realm is written and read into by every class', async (t) => {
  const [us1, us2] = UnixStream.pair()
  t.is(us1.write(foreignBytes('blocking')), 8)
  const into = vm.runInNewContext('new Uint8Array(16)') as Uint8Array
  t.is(us2.read(into), 8)
  t.is(Buffer.from(into.subarray(0, 8)).toString(), 'blocking')
  us1.close()
  us2.close()

  const [as1, as2] = AsyncUnixStream.pair()
  t.is(await as1.write(foreignBytes('async')), 5)
  t.is((await readExactly(as2, 5)).toString(), 'async')
  as1.close()
  as2.close()

  const [fs1, fs2] = FdSocket.pair()
  fs1.write(foreignBytes('duplex'))
  t.is(String((await onceEvent(fs2, 'data'))[0]), 'duplex')
  fs1.destroy()
  fs2.destroy()
  await onceEvent(fs2, 'close').catch(() => {})
})

test("enqueue() of this package's own objects once they hold no fd: ERR_INVALID_ARG_VALUE naming the class", (t) => {
  const [a, b] = UnixStream.pair()
  const [c, d] = AsyncUnixStream.pair()
  c.close()
  d.close()
  const server = new FdServer() // not listening
  const listener = AsyncUnixListener.bind(tmpSocketPath())
  listener.close()
  for (const [holder, name] of [
    [c, 'AsyncUnixStream'],
    [server, 'FdServer'],
    [listener, 'AsyncUnixListener'],
  ] as const) {
    const error = t.throws(() => a.enqueue(holder))
    t.is((error as { code?: string }).code, 'ERR_INVALID_ARG_VALUE', name)
    t.regex(error!.message, new RegExp(name))
  }
  // An open one is enqueued as any fd is.
  const [e, f] = FdSocket.pair()
  t.notThrows(() => a.enqueue(e))
  a.close()
  b.close()
  e.destroy()
  f.destroy()
})

test('FdSocket refuses object mode up front (it carries bytes), with ERR_INVALID_ARG_VALUE', (t) => {
  for (const option of ['objectMode', 'readableObjectMode', 'writableObjectMode']) {
    const error = t.throws(() => FdSocket.pair({ [option]: true } as never))
    t.is((error as NodeJS.ErrnoException).code, 'ERR_INVALID_ARG_VALUE', option)
    t.true(error instanceof TypeError)
  }
})

test('binding-layer statuses never surface as codes: InvalidArg and friends become Node-style codes', (t) => {
  const invalid = shapeError(
    Object.assign(new Error('Failed to convert napi value into rust type `Vec<u8>`'), { code: 'InvalidArg' }),
  )
  t.true(invalid instanceof TypeError)
  t.is((invalid as NodeJS.ErrnoException).code, 'ERR_INVALID_ARG_TYPE')
  t.regex((invalid as Error).message, /InvalidArg/)
  const expected = shapeError(Object.assign(new Error('x'), { code: 'StringExpected' }))
  t.is((expected as NodeJS.ErrnoException).code, 'ERR_INVALID_ARG_TYPE')
  const generic = shapeError(Object.assign(new Error('y'), { code: 'GenericFailure' }))
  t.is((generic as NodeJS.ErrnoException).code, 'ERR_INTERNAL')
  // Node-style codes pass through untouched.
  for (const code of ['ENOENT', 'ERR_SOCKET_CLOSED', 'ABORT_ERR']) {
    t.is((shapeError(Object.assign(new Error('z'), { code })) as NodeJS.ErrnoException).code, code)
  }
})

test('the per-message native calls refuse arguments of the wrong type with a coded error, never an abort', (t) => {
  // These calls are registered by hand (src/fast.rs), not by napi-rs's generated glue: an
  // External of the other kind, a number, or a missing argument must throw, not be read.
  const [a, b] = AsyncUnixStream.pair()
  const staged = binding.stagedFds()
  const stream = (a as unknown as { inner: { handle: unknown } }).inner.handle
  const calls: Array<[string, () => unknown]> = [
    ['streamEnqueue', () => binding.streamEnqueue(staged as never, 0)],
    ['streamEnqueue', () => binding.streamEnqueue(stream as never, 'x' as never)],
    ['streamDequeue', () => binding.streamDequeue(42 as never)],
    ['streamRead', () => binding.streamRead(staged as never, 1, 1, undefined, Buffer.alloc(8))],
    ['streamRead', () => binding.streamRead(stream as never, 1, 1, staged as never, Buffer.alloc(8))],
    // The scratch Buffer: missing, a string, an array of numbers.
    ['streamRead', () => (binding.streamRead as (...args: unknown[]) => unknown)(stream, 1, 1, undefined)],
    ['streamRead', () => binding.streamRead(stream as never, 1, 1, undefined, 'x' as never)],
    ['streamRead', () => binding.streamRead(stream as never, 1, 1, undefined, [1, 2] as never)],
    ['streamWrite', () => binding.streamWrite(stream as never, 'x' as never, 1)],
    ['stageFd', () => binding.stageFd(stream as never, 0)],
    ['sendStaged', () => (binding.sendStaged as (...args: unknown[]) => unknown)(staged, stream)],
    ['sendStaged', () => binding.sendStaged(stream as never, staged as never, Buffer.from('x'), new Float64Array(), 1)],
  ]
  for (const [name, call] of calls) {
    const error = t.throws(call, undefined, name) as NodeJS.ErrnoException
    t.is(typeof error.code, 'string', name)
    t.is((shapeError(error) as NodeJS.ErrnoException).code, 'ERR_INVALID_ARG_TYPE', `${name}: ${error.message}`)
  }
  // The stream is untouched: nothing was enqueued, read or written.
  t.is(a.dequeue(), null)
  a.close()
  b.close()
})

test('AsyncUnixStream.write() of a 4 GiB Buffer resolves with 4294967296, every byte delivered', async (t) => {
  const size = 2 ** 32
  if (bufferConstants.MAX_LENGTH < size) {
    t.log(`this Node caps Buffers at ${bufferConstants.MAX_LENGTH} bytes`)
    t.pass()
    return
  }
  const [writer, reader] = AsyncUnixStream.pair()
  // The reading end goes to a Python child (fd 3), which counts the bytes to end of stream.
  const counter = spawn(
    'python3',
    [
      '-c',
      [
        'import socket',
        's = socket.socket(fileno=3)',
        's.setblocking(True)',
        'buf = bytearray(1 << 20)',
        'total = 0',
        'while True:',
        '    n = s.recv_into(buf)',
        '    if n == 0: break',
        '    total += n',
        'print(total, buf[0] if total else -1)',
      ].join('\n'),
    ],
    { stdio: ['ignore', 'pipe', 'pipe', reader.fd] },
  )
  reader.close()
  let stdout = ''
  counter.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  const exited = new Promise<number | null>((resolve) => counter.on('close', resolve))
  const big = Buffer.allocUnsafe(size)
  big.fill(7, size - (1 << 20)) // the last MiB is what the child's buffer holds at the end
  const written = await withTimeout(writer.write(big), 300_000, 'the 4 GiB write')
  writer.close()
  t.is(written, size)
  t.is(await withTimeout(exited, 300_000, 'the counter exits'), 0)
  t.is(stdout.trim(), `${size} 7`)
})
