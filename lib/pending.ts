/**
 * The Promises of native operations that could not finish at once. Native code settles
 * each by its id through one callback per thread; until then the operation keeps its
 * object alive (a Promise alone holds no reference to it, and garbage collection must
 * never close an object something waits on), and keeps the process alive only while that
 * object is ref'd.
 */
import { binding, runtime, type Native } from './binding.js'
import { closedError, codedError, shapeError } from './errors.js'

/** Whether an object's pending operations keep the process alive, and how many it has. */
export class Liveness {
  referenced = true
  pending = 0
  /**
   * Its object was closed: that decided every pending operation's outcome, so an abort
   * from then on changes none (their Promises settle with the close's outcome, as the
   * event loop delivers it). See {@link closing}.
   */
  closed = false
  /** Its pending operations that have a signal. */
  signalled: Set<Operation> | undefined = undefined
}

/**
 * Called by an object's `close()`: from then on an abort changes how none of its pending
 * operations ends. One whose signal is aborted already was aborted first, even if its
 * `'abort'` listener has not run yet (the close may be another listener of that abort).
 */
export function closing(liveness: Liveness): void {
  if (liveness.closed) return
  liveness.closed = true
  for (const operation of liveness.signalled ?? []) {
    if (isAborted(operation.signal)) operation.aborted = true
  }
}

/** `signal.aborted`, which a subclass may make throw. */
function isAborted(signal: AbortSignal | undefined): boolean {
  try {
    return signal?.aborted === true
  } catch {
    return false
  }
}

interface Operation {
  resolve(value: unknown): void
  reject(error: unknown): void
  liveness: Liveness
  /** Held until the operation settles: the object it belongs to. */
  owner: object
  signal?: AbortSignal
  onAbort?: () => void
  /** Its signal was aborted: a close that settles it later is reported as the abort. */
  aborted?: boolean
}

const operations = new Map<number, Operation>()
/**
 * A pending operation kept out of `operations` (`soleId`, or 0 when the slot is empty):
 * the one started while the slot was empty. A round trip has one operation pending at a
 * time, and its settlement then makes no Map lookup; any started while the slot is taken
 * go to `operations`.
 */
let soleId = 0
let soleOperation: Operation | undefined = undefined
// An entry that never goes (no id is negative): V8 rebuilds the table of a Map that a
// delete leaves nearly empty, which with one operation pending at a time (a round trip)
// cost every settlement a new table.
operations.set(-1, { resolve() {}, reject() {}, liveness: new Liveness(), owner: operations })
/**
 * Operation ids are `n * COPIES + copy`: a thread may hold several copies of this layer
 * (a test runner loads it again per test file), which share the native side's home. `n`
 * wraps before the ids leave the integers a double holds exactly.
 */
const COPIES = 65536
const WRAP = 2 ** 36
let nextOp = 1
/** `n` has wrapped: from then on an id may still be in use, and is skipped if so. */
let wrapped = false
export function newId(): number {
  let id: number
  do {
    id = nextOp * COPIES + copy
    if (nextOp < WRAP) nextOp++
    else {
      nextOp = 1
      wrapped = true
    }
  } while (wrapped && (operations.has(id) || id === soleId))
  return id
}
/** Pending operations of ref'd objects; the native doorbell is ref'd while there are any. */
let referencedPending = 0
/**
 * This copy's vote for the native doorbell, shared with native code: `[VOTE]` is 1 while
 * the copy counts in (`referenceSettlements`), `[VOTE_OWED]` is 1 when the vote is to end
 * after the current delivery, which native code then does. A settlement that leaves no
 * referenced operation pending marks that instead of unref'ing at once: the code it runs
 * usually starts the next operation, and the vote then simply goes on (no call into the
 * addon either way).
 */
const votes = new Uint8Array(2)
const VOTE = 0
const VOTE_OWED = 1

/** `settling`: called while a delivery settles operations (see `votes`). */
function countReferenced(delta: number, settling = false): void {
  referencedPending += delta
  const wanted = referencedPending > 0 ? 1 : 0
  if (wanted === votes[VOTE]) votes[VOTE_OWED] = 0
  else if (wanted === 0 && settling) votes[VOTE_OWED] = 1
  else {
    binding.referenceSettlements(wanted === 1)
    votes[VOTE] = wanted
    votes[VOTE_OWED] = 0
  }
}

function settled(liveness: Liveness): void {
  liveness.pending--
  if (liveness.referenced) countReferenced(-1, true)
}

/** Node's `AbortError` shape: `name`, `code: 'ABORT_ERR'`, the signal's reason as `cause`. */
export class AbortError extends Error {
  readonly code = 'ABORT_ERR'
  constructor(reason?: unknown) {
    super('The operation was aborted', reason === undefined ? undefined : { cause: reason })
    this.name = 'AbortError'
  }
}

/**
 * Where native code puts the bytes of a read for this layer to copy into a Buffer of its
 * own (the default read size): for a small read, a Buffer made here lives in V8's heap,
 * which is cheaper than any Buffer native code can make (that one needs memory of its own).
 * Native code writes it and the JS it then calls copies out of it before anything else, so
 * no other JS (which could read into it) runs in between.
 */
const SCRATCH_SIZE = 65536
// Taken now: code that replaces them later must not run between a native write into the
// scratch Buffer and the copy out of it.
const allocUnsafeSlow = Buffer.allocUnsafeSlow
const { apply } = Reflect
const { set: setBytes } = Uint8Array.prototype
const Uint8ArrayOf = Uint8Array
const Int32ArrayOf = Int32Array
/**
 * The scratch area: the scratch Buffer's bytes, then a header (doubles) that native code
 * writes right before its call: the id, loop callback and byte count of the read that
 * {@link onRead} settles (the id also for {@link onSettle}), and `ARMED`, 1 from then
 * until the call has begun and copied out what the area holds for it (see `disarm`).
 */
const HEADER_FIELDS = 4
/** The id of the operation the call settles (see `readMustDefer`). */
const SETTLING = 0
const ARMED = 3
const area = new ArrayBuffer(SCRATCH_SIZE + HEADER_FIELDS * Float64Array.BYTES_PER_ELEMENT)
const scratchBuffer = Buffer.from(area, 0, SCRATCH_SIZE)
const header = new Float64Array(area, SCRATCH_SIZE, HEADER_FIELDS)
const NO_SCRATCH = Buffer.alloc(0)
export { scratchBuffer as scratch }

/**
 * Called once what native code put in the scratch area for this call is copied out (or,
 * for a settlement with nothing there, first thing). Until then a read that completes at
 * once (run by an `async_hooks` `before` callback that Node makes right before the call,
 * say) must not receive into the area (see `readScratch`), and a read of the settling
 * operation's object settles later (see `readMustDefer`).
 */
export function disarm(): void {
  header[ARMED] = 0
}

/** A Buffer with no room, for calls that take a scratch Buffer and are to use none. */
export { NO_SCRATCH as noScratch }

/** Where a read that may complete at once receives: the scratch Buffer, unless that is in use. */
export function readScratch(): Buffer {
  return header[ARMED] === 0 ? scratchBuffer : NO_SCRATCH
}

/**
 * Where native code puts the numbers of the fds a chunk brought, for this layer to take
 * first thing (see `fdsCopied`): past the bytes it puts in the scratch Buffer (at most
 * 4096).
 */
const FDS_AT = 4096

/**
 * A copy of the `count` fd numbers native code put in the scratch area. Made with typed
 * array constructors only, which run no code of anyone's (no species, no setter): nothing
 * can write the scratch area before the numbers are safe here.
 */
export function fdsCopied(count: number): Int32Array {
  return new Int32ArrayOf(new Int32ArrayOf(area, FDS_AT, count))
}

/**
 * The two doubles native code put at {@link FDS_AT} for a message received at once (see
 * `MessageSocket#receive`): the id its fds are held under (-1: none), and 1 if it is
 * truncated. Read right after the call, before any other code runs.
 */
const messageMeta = new Float64Array(area, FDS_AT, 2)

/** The id the fds of the message just received at once are held under, or `undefined`. */
export function messageHeldId(): number | undefined {
  const id = messageMeta[0]
  return id >= 0 ? id : undefined
}

/** Whether the message just received at once is truncated. */
export function messageTruncated(): boolean {
  return messageMeta[1] === 1
}

/** The `count` fd numbers of {@link fdsCopied}, as an array. */
export function fdArray(numbers: Int32Array, count: number): number[] {
  const fds: number[] = []
  for (let i = 0; i < count; i++) fds.push(numbers[i])
  return fds
}

/**
 * The first `count` bytes of the scratch Buffer, as a Buffer of their own: copied with
 * no code of anyone's run first (a view made with the constructor, not `subarray`, which
 * would consult the species).
 */
export function copyOut(count: number): Buffer {
  const bytes = allocUnsafeSlow(count)
  if (count <= 16) for (let i = 0; i < count; i++) bytes[i] = scratchBuffer[i]
  else apply(setBytes, bytes, [new Uint8ArrayOf(area, 0, count)])
  return bytes
}

const accessor = (prototype: object, name: string): ((this: unknown) => any) =>
  Object.getOwnPropertyDescriptor(prototype, name)!.get!
const typedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype) as object
const typedArrayAccessors = ['buffer', 'byteOffset', 'byteLength'].map((name) => accessor(typedArrayPrototype, name))
const dataViewAccessors = ['buffer', 'byteOffset', 'byteLength'].map((name) => accessor(DataView.prototype, name))
const resizable = accessor(ArrayBuffer.prototype, 'resizable')
const growable = accessor(SharedArrayBuffer.prototype, 'growable')

/**
 * A copy of the bytes a view over a resizable `ArrayBuffer` or growable
 * `SharedArrayBuffer` shows now, or `null` for any other chunk. Read through the
 * built-in accessors, so that what the view's own properties say cannot change it.
 */
export function copyIfResizable(chunk: unknown): Buffer | null {
  if (!ArrayBuffer.isView(chunk)) return null
  // A TypedArray's accessor throws for a DataView, ArrayBuffer's for a SharedArrayBuffer:
  // cheaper on every write than asking what each is first.
  let accessors = typedArrayAccessors
  let buffer: ArrayBufferLike
  try {
    buffer = apply(accessors[0], chunk, [])
  } catch {
    accessors = dataViewAccessors
    buffer = apply(accessors[0], chunk, [])
  }
  let changes: boolean
  try {
    changes = apply(resizable, buffer, [])
  } catch {
    changes = apply(growable, buffer, [])
  }
  if (!changes) return null
  const offset: number = apply(accessors[1], chunk, [])
  const length: number = apply(accessors[2], chunk, [])
  const copy = allocUnsafeSlow(length)
  apply(setBytes, copy, [new Uint8Array(buffer, offset, length)])
  return copy
}

/** `signal.reason`, which a subclass may make throw. */
function reasonOf(signal: AbortSignal | undefined): unknown {
  try {
    return signal?.reason
  } catch {
    return undefined
  }
}

/** An operation's outcome: `value`, or `error` (`"[CODE] message"`). */
function onSettle(id: number, error: string | null, value: unknown, callback: number): void {
  // First of all: the area is armed for every settlement call (see `readMustDefer`).
  disarm()
  settle(id, error, value, false, callback)
}

/**
 * A read's outcome, with no argument: its id, loop callback and byte count wait in the
 * header, its bytes in the scratch Buffer.
 */
function onRead(): void {
  // First of all: the header and bytes are this read's until other JS runs.
  const id = header[0]
  const callback = header[1]
  let failed = false
  let value: unknown
  try {
    value = copyOut(header[2])
  } catch (thrown) {
    failed = true
    value = thrown
  }
  disarm()
  settle(id, null, value, failed, callback)
}

/** Settles operation `id` (`failed`: with `value` as its error). */
function settle(id: number, error: string | null, value: unknown, failed: boolean, callback: number): void {
  // Delivered by a loop callback of the JS-thread runtime: the run of outcomes that came
  // at once ends with the first outcome of a new one.
  if (callback !== runCallback && callback >= 0) {
    runCallback = callback
    immediateRun = 0
  }
  const operation = pendingOperation(id)
  if (operation === undefined) return
  if (operation === soleOperation) {
    soleOperation = undefined
    soleId = 0
  } else operations.delete(id)
  operation.liveness.signalled?.delete(operation)
  settled(operation.liveness)
  // Settled before the signal's listener is removed: that is user-reachable code, which
  // may throw (reported as uncaught) but must not leave the Promise pending.
  try {
    if (failed) operation.reject(value)
    else if (error === null) operation.resolve(value)
    else {
      const shaped = shapeError(new Error(error))
      // Closed after the abort but before the cancellation ran (`abort(); close()`): the
      // abort came first. (Any other failure happened before the abort reached it.)
      const code = (shaped as { code?: unknown }).code
      if (code === 'ABORT_ERR' || (operation.aborted && code === 'ERR_SOCKET_CLOSED')) {
        operation.reject(new AbortError(reasonOf(operation.signal)))
      } else operation.reject(shaped)
    }
  } finally {
    if (operation.onAbort) operation.signal!.removeEventListener('abort', operation.onAbort)
  }
}

/** This copy's number on this thread (see `newId`); push readers name it too. */
export const copy = binding.initSettlements(onSettle, onRead, new Uint8Array(area), votes)

/** `ref()`/`unref()` of an object: whether its pending operations keep the process alive. */
export function setReferenced(liveness: Liveness, referenced: boolean): void {
  if (liveness.referenced === referenced) return
  liveness.referenced = referenced
  countReferenced(referenced ? liveness.pending : -liveness.pending)
}

/**
 * `ref()`/`unref()` of an async stream, listener or message socket: an operation, so on a
 * closed one (`fd` -1) it throws `ERR_SOCKET_CLOSED`, as every other does. (`FdSocket` and
 * `FdServer` do nothing then, as net's.)
 */
export function setReferencedOpen(liveness: Liveness, referenced: boolean, fd: number): void {
  if (fd === -1) throw closedError()
  setReferenced(liveness, referenced)
}

/**
 * The Promise of a connect that a Unix socket makes at once or not at all: `connect()`'s
 * outcome, or an `AbortError` when `signal` is aborted already. It counts as an outcome
 * that came at once (see {@link IMMEDIATE_BUDGET}): past the budget it settles once the
 * event loop has turned, so that a loop that retries a failing connect lets timers and
 * I/O run (as `net`'s connect, whose outcome comes from the loop's poll).
 */
export function connectedNow<T>(signal: AbortSignal | undefined, connect: () => T): Promise<T> {
  if (signal?.aborted) return Promise.reject(new AbortError(signal.reason))
  const deferred = mustDefer()
  let outcome: () => T | Promise<T>
  try {
    const connected = connect()
    outcome = () => connected
  } catch (error) {
    // Made when it is handed on: a rejected Promise held for a turn would be unhandled.
    outcome = () => Promise.reject(error)
  }
  if (deferred) return afterTurn(outcome)
  countImmediate()
  return Promise.resolve(outcome())
}

/** `outcome()`, once the event loop has turned (which ends the run of immediate outcomes). */
function afterTurn<T>(outcome: () => T | Promise<T>): Promise<T> {
  return new Promise<T>((resolve) => {
    setImmediate(() => {
      loopTurned()
      resolve(outcome())
    })
  })
}

/**
 * How an operation starts: `id` names it if it settles later; `canceller` cancels it
 * (with a signal); `defer` asks that it settle later, once the event loop has turned, even
 * if it could complete at once (see {@link IMMEDIATE_BUDGET}).
 */
type Start<T> = (
  id: number,
  canceller: Native.ExternalObject<'Canceller'> | undefined,
  defer: boolean,
) => T | Promise<T> | null

/**
 * Operations that may complete at once with no turn of the event loop between them. A
 * loop of them (a read that finds data, a write that finds room, each awaited in turn)
 * runs as one chain of microtasks, in which no timer or I/O callback of the process gets a
 * turn: past this many, operations are started with `defer`, and settle once the loop has
 * turned (as any pending one, through the native side: in call order, and owning nothing
 * in JS until then). FdSocket's writes count, but complete as they are: Writable calls
 * back through `process.nextTick` anyway, and holding them back kept their chunks in its
 * buffer.
 *
 * Under the `'libuv'` driver the run ends with the first outcome native code delivers from
 * a new loop callback of its runtime ({@link onSettle} is told which): the loop turned.
 * One callback may deliver many outcomes, whose code shares the budget; one iteration of
 * the loop runs at most four of the runtime's callbacks (timer, idle, reactor, wake-up).
 * Outcomes posted to JS (an FdSocket's chunks, accepted connections) do not end a run.
 * (A `setImmediate` per turn to notice that cost every round trip a call of Node's
 * immediate queue, about a microsecond of CPU.) In a program that waits for nothing of
 * fd-queue's, one operation in 1,025 settles a turn later, which ends the run. Under
 * `'threads'`, whose deliveries may come many to a turn, a `setImmediate` still ends it.
 */
const IMMEDIATE_BUDGET = 1024
let immediateRun = 0
/** The loop callback whose outcome ended the last run (`'libuv'` driver). */
let runCallback = -1
/** `'threads'` driver: a setImmediate will end the run. */
const watchTurns = runtime.driver !== 'libuv'
let turnWatched = false

function loopTurned(): void {
  immediateRun = 0
  turnWatched = false
}

/** Counts an outcome that came at once in this run. */
function countImmediate(): void {
  if (watchTurns && !turnWatched) {
    turnWatched = true
    setImmediate(loopTurned).unref()
  }
  immediateRun++
}

/**
 * Starts a native operation: `start(id, canceller)` answers at once with the result, or
 * `null` for "pending: operation `id` settles later". Synchronous throws stay throws (bad
 * arguments); an already-aborted `signal` rejects at once without starting anything; a
 * later abort cancels the operation natively, which rejects with an `AbortError` unless
 * it had already finished.
 */
export function operation<T>(owner: object, liveness: Liveness, start: Start<T>, signal?: AbortSignal): Promise<T> {
  if (signal?.aborted) return Promise.reject(new AbortError(signal.reason))
  const canceller = signal ? binding.newCanceller() : undefined
  const id = newId()
  let immediate: T | Promise<T> | null
  try {
    immediate = start(id, canceller, mustDefer())
  } catch (error) {
    throw shapeError(error)
  }
  // (A Promise given to Promise.resolve comes back as it is.)
  return Promise.resolve(answered(owner, liveness, id, immediate, signal, canceller))
}

/**
 * Whether an operation starting now must settle later (`defer`): the budget of outcomes
 * that came at once in this turn of the event loop is spent (see {@link IMMEDIATE_BUDGET}).
 */
export function mustDefer(): boolean {
  return immediateRun >= IMMEDIATE_BUDGET
}

/**
 * Whether a read of `owner` starting now must settle later (`defer`, as for
 * {@link mustDefer}) because the settlement of an operation of `owner` is on its way to
 * this layer and has not begun (code that an `async_hooks` `before` callback runs right
 * before that call, say): answered at once, the read would resolve first, and bring its
 * fds ahead of the ones the settling read's code is to dequeue. Only reads: a write or a
 * send started there goes at once, as anywhere (one deferred in every such callback would
 * make a settlement, and so a callback, of its own, without end).
 */
export function readMustDefer(owner: object): boolean {
  if (immediateRun >= IMMEDIATE_BUDGET) return true
  if (header[ARMED] === 0) return false
  return pendingOperation(header[SETTLING])?.owner === owner
}

/** The pending operation `id`, in the sole slot or in `operations`. */
function pendingOperation(id: number): Operation | undefined {
  return id === soleId && soleOperation !== undefined ? soleOperation : operations.get(id)
}

/**
 * What {@link operation} makes of the answer of an operation started as `id`, for
 * the hot paths (a read, a write) that make their native call themselves: a call made
 * through a callback of their own cost a closure and a call site that sees every kind
 * of operation. Native code that can defer must have been told {@link mustDefer}.
 * Returns the value itself, or a Promise when the operation is pending (or the answer
 * was one).
 */
export function answered<T>(
  owner: object,
  liveness: Liveness,
  id: number,
  immediate: T | Promise<T> | null,
  signal?: AbortSignal,
  canceller?: Native.ExternalObject<'Canceller'>,
): T | Promise<T> {
  if (immediate !== null) {
    if (!(immediate instanceof Promise)) countImmediate()
    return immediate
  }
  liveness.pending++
  if (liveness.referenced) countReferenced(1)
  return new Promise<T>((resolve, reject) => {
    const pending: Operation = { resolve: resolve as (value: unknown) => void, reject, liveness, owner }
    // Registered first: if the signal's addEventListener throws (a subclass may), the
    // Promise rejects with that, and the operation still settles (and is counted out).
    if (soleOperation === undefined) {
      soleId = id
      soleOperation = pending
    } else operations.set(id, pending)
    if (signal && canceller) {
      pending.signal = signal
      ;(liveness.signalled ??= new Set()).add(pending)
      pending.onAbort = () => {
        if (liveness.closed) return
        pending.aborted = true
        binding.cancel(canceller)
      }
      try {
        signal.addEventListener('abort', pending.onAbort, { once: true })
      } catch (error) {
        // Nothing can abort it now: cancelled (a read that has not read loses nothing).
        binding.cancel(canceller)
        throw error
      }
    }
  })
}

/** A rejected Promise with the `ERR_SOCKET_CLOSED` error, for calls on closed objects. */
export function rejectClosed(): Promise<never> {
  return Promise.reject(codedError(new Error('Socket is closed'), 'ERR_SOCKET_CLOSED'))
}
