/** Which runtime drives the async classes on this thread (a diagnostic). */
import { binding } from './binding.js'

/** How the calling JS thread runs fd-queue's async work. */
export interface RuntimeInfo {
  /**
   * `'libuv'`: on the JS thread itself, driven by its event loop (one wake-up per event);
   * `'threads'`: on a tokio worker thread, with results handed to the JS thread (the
   * fallback, and what `FD_QUEUE_DRIVER=threads` forces).
   */
  driver: 'libuv' | 'threads'
  /** Why this driver was chosen (for `'threads'`: what ruled out the other). */
  reason: string
}

/** How the calling JS thread (main or worker) runs fd-queue's async work. */
export function runtimeInfo(): RuntimeInfo {
  const { driver, reason } = binding.runtimeInfo()
  return { driver: driver === 'libuv' ? 'libuv' : 'threads', reason }
}
