/**
 * Tests of features some supported OSes lack. The suite runs on Linux, macOS and FreeBSD;
 * these gates skip (and ava lists as skipped) what the OS under test cannot do, instead
 * of failing on it.
 */
import test from 'ava'

/** Linux only: abstract socket addresses, O_PATH, /proc/sys tunables such as max_dgram_qlen. */
export const linuxTest = process.platform === 'linux' ? test : test.skip

/** {@link linuxTest} for tests that must run alone. */
export const linuxSerialTest = process.platform === 'linux' ? test.serial : test.serial.skip

/** SOCK_SEQPACKET Unix sockets: Linux and FreeBSD have them, macOS does not. */
export const seqpacketTest = process.platform === 'darwin' ? test.skip : test

/** The peer pid the kernel reports: FreeBSD records none (peerCredentials().pid is null). */
export const peerPid = (pid: number | undefined): number | null =>
  process.platform === 'freebsd' ? null : (pid ?? null)
