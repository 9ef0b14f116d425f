// Reads what a built `.node` file says about itself, without any tool of the host: the
// format (64-bit little-endian ELF or Mach-O), the CPU, the OS it was linked for, the
// shared libraries it needs, the glibc symbol versions it asks for, the macOS deployment
// target, and whether it exports the N-API entry point. Every target fd-queue ships is a
// 64-bit little-endian shared object, so only that layout is read; anything else is
// reported as a format this reader does not know, and the check fails.
import fs from 'node:fs'

const ELF_MACHINES = { 62: 'x64', 183: 'arm64' }
const MACHO_CPUS = { 0x01000007: 'x64', 0x0100000c: 'arm64' }

/**
 * `{ format, arch, os, needed, glibc, macosMin, exports(name) }` of the file at `file`:
 * `glibc` lists the version names asked of glibc, without the `GLIBC_` prefix ("2.17", and
 * also "PRIVATE" or "ABI_DT_RELR" where a binary asks for those).
 */
export function inspectBinary(file) {
  const buf = fs.readFileSync(file)
  if (buf.length >= 4 && buf.readUInt32BE(0) === 0x7f454c46) return readElf(buf)
  if (buf.length >= 4 && buf.readUInt32LE(0) === 0xfeedfacf) return readMachO(buf)
  throw new Error(`${file}: neither a 64-bit little-endian ELF nor a 64-bit Mach-O file`)
}

function cString(buf, offset) {
  const end = buf.indexOf(0, offset)
  return buf.toString('latin1', offset, end < 0 ? buf.length : end)
}

function readElf(buf) {
  if (buf[4] !== 2 || buf[5] !== 1) throw new Error('ELF file that is not 64-bit little-endian')
  const type = buf.readUInt16LE(16)
  const machine = buf.readUInt16LE(18)
  const shoff = Number(buf.readBigUInt64LE(40))
  const shentsize = buf.readUInt16LE(58)
  const shnum = buf.readUInt16LE(60)
  const sections = []
  for (let i = 0; i < shnum; i++) {
    const at = shoff + i * shentsize
    sections.push({
      type: buf.readUInt32LE(at + 4),
      offset: Number(buf.readBigUInt64LE(at + 24)),
      size: Number(buf.readBigUInt64LE(at + 32)),
      link: buf.readUInt32LE(at + 40),
    })
  }
  const strings = (section, offset) => cString(buf, sections[section.link].offset + offset)

  const needed = []
  const exported = new Set()
  const glibc = []
  let freebsdNote = false
  for (const section of sections) {
    if (section.type === 6) {
      // SHT_DYNAMIC: DT_NEEDED (1) entries name the libraries.
      for (let at = section.offset; at < section.offset + section.size; at += 16) {
        const tag = buf.readBigInt64LE(at)
        if (tag === 0n) break
        if (tag === 1n) needed.push(strings(section, Number(buf.readBigUInt64LE(at + 8))))
      }
    } else if (section.type === 11) {
      // SHT_DYNSYM: defined (st_shndx != 0), global or weak, default visibility.
      for (let at = section.offset + 24; at < section.offset + section.size; at += 24) {
        const info = buf[at + 4]
        const bind = info >> 4
        if (buf.readUInt16LE(at + 6) !== 0 && (bind === 1 || bind === 2) && (buf[at + 5] & 3) === 0) {
          exported.add(strings(section, buf.readUInt32LE(at)))
        }
      }
    } else if (section.type === 0x6ffffffe) {
      // SHT_GNU_verneed: the symbol versions asked of each library (GLIBC_2.17, …).
      let at = section.offset
      for (;;) {
        const count = buf.readUInt16LE(at + 2)
        let aux = at + buf.readUInt32LE(at + 8)
        for (let i = 0; i < count; i++) {
          const name = strings(section, buf.readUInt32LE(aux + 8))
          if (name.startsWith('GLIBC_')) glibc.push(name.slice('GLIBC_'.length))
          aux += buf.readUInt32LE(aux + 12)
        }
        const next = buf.readUInt32LE(at + 12)
        if (next === 0) break
        at += next
      }
    } else if (section.type === 7) {
      // SHT_NOTE: FreeBSD's own linker adds a note named "FreeBSD" (the ABI tag).
      for (let at = section.offset; at + 12 <= section.offset + section.size;) {
        const namesz = buf.readUInt32LE(at)
        const descsz = buf.readUInt32LE(at + 4)
        if (buf.toString('latin1', at + 12, at + 12 + namesz).replace(/\0+$/, '') === 'FreeBSD') freebsdNote = true
        at += 12 + align4(namesz) + align4(descsz)
      }
    }
  }
  // zig's linker sets neither ELFOSABI_FREEBSD nor the note; FreeBSD's libc.so.7 (a
  // soname no Linux libc has) then tells.
  const freebsd = buf[7] === 9 || freebsdNote || needed.includes('libc.so.7')
  return {
    format: type === 3 ? 'elf shared object' : `elf (e_type ${type})`,
    arch: ELF_MACHINES[machine] ?? `e_machine ${machine}`,
    os: freebsd ? 'freebsd' : 'linux',
    needed,
    glibc,
    macosMin: undefined,
    exports: (name) => exported.has(name),
  }
}

function align4(n) {
  return (n + 3) & ~3
}

function readMachO(buf) {
  const cpu = buf.readUInt32LE(4)
  const filetype = buf.readUInt32LE(12)
  const ncmds = buf.readUInt32LE(16)
  const needed = []
  const exported = new Set()
  let macosMin
  let at = 32
  for (let i = 0; i < ncmds; i++) {
    const cmd = buf.readUInt32LE(at)
    const size = buf.readUInt32LE(at + 4)
    if (cmd === 0xc || cmd === 0x20 || cmd === 0x80000018 || cmd === 0x8000001f || cmd === 0x80000023) {
      // LC_LOAD_DYLIB, LC_LAZY_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB,
      // LC_LOAD_UPWARD_DYLIB
      needed.push(cString(buf, at + buf.readUInt32LE(at + 8)))
    } else if (cmd === 0x32 && buf.readUInt32LE(at + 8) === 1) {
      // LC_BUILD_VERSION for PLATFORM_MACOS: minos as xxxx.yy.zz in nibbles
      macosMin = machOVersion(buf.readUInt32LE(at + 12))
    } else if (cmd === 0x24) {
      // LC_VERSION_MIN_MACOSX (older linkers)
      macosMin = machOVersion(buf.readUInt32LE(at + 8))
    } else if (cmd === 0x2) {
      // LC_SYMTAB: external symbols defined in a section (N_EXT | N_SECT, not a stab)
      const symoff = buf.readUInt32LE(at + 8)
      const nsyms = buf.readUInt32LE(at + 12)
      const stroff = buf.readUInt32LE(at + 16)
      for (let s = 0; s < nsyms; s++) {
        const entry = symoff + s * 16
        const type = buf[entry + 4]
        if ((type & 0xe0) === 0 && (type & 0x0e) === 0x0e && (type & 0x01) === 1) {
          exported.add(cString(buf, stroff + buf.readUInt32LE(entry)).replace(/^_/, ''))
        }
      }
    }
    at += size
  }
  return {
    format: filetype === 6 ? 'mach-o dylib' : filetype === 8 ? 'mach-o bundle' : `mach-o (filetype ${filetype})`,
    arch: MACHO_CPUS[cpu] ?? `cputype 0x${cpu.toString(16)}`,
    os: 'darwin',
    needed,
    glibc: [],
    macosMin,
    exports: (name) => exported.has(name),
  }
}

function machOVersion(v) {
  const patch = v & 0xff
  return `${v >>> 16}.${(v >>> 8) & 0xff}${patch ? `.${patch}` : ''}`
}

/** Compares dotted versions numerically ("2.9" < "2.17"). */
export function compareVersions(a, b) {
  const x = a.split('.').map(Number)
  const y = b.split('.').map(Number)
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0)
    if (d !== 0) return d
  }
  return 0
}
