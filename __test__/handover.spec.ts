/**
 * Handing a socket over and closing our copy (SPEC §3 "Closing and handing over"):
 * `close()` / `destroy()` release this process's descriptor only, and never `shutdown()`
 * a connection another process holds. And nothing with an operation pending is closed by
 * garbage collection.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import * as net from 'node:net'
import * as path from 'node:path'
import { AsyncUnixListener, AsyncUnixStream, FdSocket } from '../index.js'
import { lastJson, ROOT, runFixture, tmpSocketPath } from './helpers.js'
import { checkNoFdLeaked, onceEvent, outcome, readExactly, withTimeout } from './async-helpers.js'

checkNoFdLeaked()

/** A Python process that receives one socket fd over `carrier` and holds it (fixtures/holder.py). */
function startHolder(carrierPath: string) {
  const child = spawn('python3', [path.join(ROOT, '__test__', 'fixtures', 'holder.py'), carrierPath], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
  return {
    child,
    exited,
    output: () => ({ stdout, stderr }),
    async waitFor(line: string): Promise<void> {
      while (!stdout.split('\n').includes(line)) {
        const code = await Promise.race([onceEvent(child.stdout, 'data', 30_000).then(() => undefined), exited])
        if (code !== undefined) throw new Error(`holder exited (${code}) before '${line}': ${stdout} ${stderr}`)
      }
    },
  }
}

/** Hands `socket` to a Python holder over a fresh carrier connection; resolves once it holds it. */
async function handToHolder(socket: { fd: number }) {
  const carrierPath = tmpSocketPath()
  const carrier = AsyncUnixListener.bind(carrierPath)
  const holder = startHolder(carrierPath)
  const link = await withTimeout(carrier.accept(), 30_000, 'the holder connects')
  link.enqueue(socket)
  await link.write('x')
  await holder.waitFor('ready')
  link.close()
  carrier.close()
  return holder
}

async function holderTalksToPeer(
  t: ExecutionContext,
  holder: ReturnType<typeof startHolder>,
  peer: AsyncUnixStream | FdSocket,
): Promise<void> {
  holder.child.stdin.write('go\n')
  if (peer instanceof AsyncUnixStream) {
    t.is((await readExactly(peer, 'from-holder'.length, 30_000)).toString(), 'from-holder')
    await peer.write('reply-to-holder')
    await peer.shutdown('write')
  } else {
    let got = ''
    while (got.length < 'from-holder'.length) got += String((await onceEvent(peer, 'data', 30_000))[0])
    t.is(got, 'from-holder')
    peer.end('reply-to-holder')
  }
  const code = await withTimeout(holder.exited, 30_000, 'the holder exits')
  const { stdout, stderr } = holder.output()
  t.is(code, 0, `${stdout}\n${stderr}`)
  t.is(stdout.trim().split('\n').at(-1), 'reply-to-holder', 'the holder read our reply to end of stream')
}

test('AsyncUnixStream.close() after handing the socket to another process: the connection keeps working there', async (t) => {
  const [mine, peer] = AsyncUnixStream.pair()
  const holder = await handToHolder(mine)
  // A read pending on our copy settles at close, and takes none of the bytes meant for the holder.
  const pending = outcome(mine.read())
  mine.close()
  const settled = await withTimeout(pending, 10_000, 'the pending read settles at close')
  t.true(
    settled.ok ? settled.value.length === 0 : settled.error.code === 'ERR_SOCKET_CLOSED',
    'pending read: ERR_SOCKET_CLOSED or an empty Buffer',
  )
  await holderTalksToPeer(t, holder, peer)
  peer.close()
})

test('FdSocket.destroy() after enqueueing the socket elsewhere (the README handover): the connection keeps working there', async (t) => {
  const [mine, peer] = FdSocket.pair()
  const holder = await handToHolder(mine)
  mine.destroy()
  await onceEvent(mine, 'close')
  const peerClosed = onceEvent(peer, 'close', 60_000)
  await holderTalksToPeer(t, holder, peer)
  await peerClosed
})

test('AsyncUnixStream.close() with a write pending settles it at once, and the peer sees no end of stream', async (t) => {
  const [mine, peer] = AsyncUnixStream.pair()
  const [copyHolder, copyReceiver] = AsyncUnixStream.pair()
  // A second holder of `mine` in this process (received through the package, like another process would).
  copyHolder.enqueue(mine)
  await copyHolder.write('x')
  await copyReceiver.read(1)
  const copy = copyReceiver.dequeue()!
  const big = mine.write(Buffer.alloc(8 * 1024 * 1024, 1)) // fills the socket, stays pending
  const pending = outcome(big)
  mine.close()
  const settled = await withTimeout(pending, 10_000, 'the pending write settles at close')
  t.false(settled.ok)
  t.is(settled.ok ? undefined : settled.error.code, 'ERR_SOCKET_CLOSED')
  // The peer drains what was written, then talks through the other copy: no end of stream came.
  const viaCopy = new net.Socket({ fd: copy, readable: true, writable: true })
  viaCopy.write('still-connected')
  let text = ''
  for (;;) {
    const part = await withTimeout(peer.read(1 << 20), 10_000, 'peer read')
    t.not(part.length, 0, 'the peer saw end of stream: the close shut the connection down')
    if (part.length === 0) break
    text = (text + part.toString('latin1')).slice(-64)
    if (text.endsWith('still-connected')) break
  }
  viaCopy.destroy()
  copyHolder.close()
  copyReceiver.close()
  peer.close()
})

for (const scenario of ['read', 'write'] as const) {
  test(`GC: an AsyncUnixStream kept only by its pending ${scenario}'s Promise is not collected`, async (t) => {
    const result = await runFixture('gc-pending', [scenario], { nodeArgs: ['--expose-gc'], timeoutMs: 120_000 })
    const report = lastJson(result)
    if (scenario === 'read') t.deepEqual(report, { data: 'after-gc' })
    else
      t.deepEqual(report, {
        size: 16 * 1024 * 1024,
        received: 16 * 1024 * 1024,
        endedEarly: false,
        written: 16 * 1024 * 1024,
      })
  })
}

test('GC: an AsyncUnixListener kept only by its pending accept()’s Promise is not collected', async (t) => {
  const result = await runFixture('gc-pending', ['accept', tmpSocketPath()], {
    nodeArgs: ['--expose-gc'],
    timeoutMs: 120_000,
  })
  t.deepEqual(lastJson(result), { data: 'hello' })
})
