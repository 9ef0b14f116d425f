#!/usr/bin/env bash
# Packed-install test: installs fd-queue the way a user gets it from the registry and checks
# that it works with no Rust toolchain in sight.
#
# Uses the host binary that `npm run build` left in the repository root. `napi artifacts`
# places it in its platform package, as the release workflow does with every target, but
# in a scratch copy of the package (package.json with only the host target, since napi
# artifacts fails when a configured target has no binary, and npm/<platform>/): so the
# repository is never written to. `npm pack` packs that platform package and the root
# package, and one offline `npm install` of both tarballs fills an empty project. There,
# with a PATH that has no cargo or rustc, two processes pass an fd through
# `require('fd-queue')` and through `import … from 'fd-queue'`. The binary must come from
# the platform package: the root package must ship none, and without the platform package
# loading must fail.
#
# Another target than the host's (npm run test:targets sets these):
#   FDQ_TARGET=<abi>          the platform suffix (linux-arm64-gnu, linux-x64-musl, …)
#   FDQ_BINARY_DIR=<dir>      where fd-queue.<abi>.node is (default: the repository root)
#   FDQ_TARGET_NODE=<node>    the Node.js that runs the probes (default: node on PATH)
#   FDQ_TIME_SCALE=<n>        multiplies the probes' hang guards (emulated targets: 10)
#   QEMU_LD_PREFIX=<dir>      passed on to the probes (an emulated target's C library)
# npm installs the platform package as if on that platform (--os, --cpu, --libc, --force).
#
# Works offline. Prints `packed-install: N passed, M failed` last.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

work=$(mktemp -d "${TMPDIR:-/tmp}/fd-queue-packed-install-XXXXXX")
trap 'rm -rf -- "$work"' EXIT

die() {
  echo "packed-install: $*" >&2
  echo 'packed-install: 0 passed, 1 failed'
  exit 1
}

passed=0
failed=0
check() {
  local name=$1
  shift
  echo "--- ${name}"
  if "$@"; then
    echo "ok: ${name}"
    passed=$((passed + 1))
  else
    echo "FAILED: ${name}"
    failed=$((failed + 1))
  fi
}

# --- The target: its napi triple and platform suffix (linux-x64-gnu, darwin-arm64, …), by
# default the host's.
# shellcheck disable=SC2016 # the ${…} below are JavaScript's
host=$(
  FDQ_TARGET="${FDQ_TARGET:-}" node -e '
    const { parseTriple } = require("@napi-rs/cli")
    const { napi } = require("./package.json")
    let abi = process.env.FDQ_TARGET
    if (!abi) {
      const { platform, arch } = process
      let libc = ""
      if (platform === "linux") libc = process.report.getReport().header.glibcVersionRuntime ? "gnu" : "musl"
      abi = [platform, arch, libc].filter(Boolean).join("-")
    }
    const triple = napi.targets.find((t) => parseTriple(t).platformArchABI === abi)
    if (!triple) throw new Error(`no configured napi target builds for ${abi}`)
    const { platform, arch, abi: libc } = parseTriple(triple)
    const libcFlag = libc === "gnu" ? "glibc" : libc === "musl" ? "musl" : ""
    console.log(napi.binaryName, triple, abi, platform, arch, libcFlag)
  '
) || die 'cannot tell the target'
read -r binary_name host_triple host_abi target_os target_cpu target_libc <<<"$host"
binary="${binary_name}.${host_abi}.node"
binary_dir=${FDQ_BINARY_DIR:-$root}
target_node=${FDQ_TARGET_NODE:-$(command -v node)}
time_scale=${FDQ_TIME_SCALE:-1}
platform_flags=("--os=${target_os}" "--cpu=${target_cpu}")
if [[ -n $target_libc ]]; then platform_flags+=("--libc=${target_libc}"); fi
# npm refuses a package named on the command line whose os/cpu/libc is not the host's
# (EBADPLATFORM) whatever those flags say; for another target, --force is the way through.
if [[ -n ${FDQ_TARGET:-} ]]; then platform_flags+=(--force); fi
platform_dir="npm/${host_abi}"
[[ -f $binary_dir/$binary ]] || die "no ${binary} in ${binary_dir}: run npm run build (or npm run build:all) first"
[[ -f $platform_dir/package.json ]] || die "no ${platform_dir}/package.json (napi create-npm-dirs)"
platform_package=$(node -p "require('./${platform_dir}/package.json').name")
root_package=$(node -p "require('./package.json').name")
echo "target ${host_triple}: ${binary} -> ${platform_package}, probes run by ${target_node}"

# --- Place the binary with napi artifacts, in a scratch copy of the package.
stage="$work/stage"
mkdir -p "$work/artifacts" "$work/tarballs" "$work/project" "$stage/npm"
cp -- "$binary_dir/$binary" "$work/artifacts/"
cp -R -- "$platform_dir" "$stage/npm/"
node -e '
  const fs = require("fs")
  const [from, to, triple] = process.argv.slice(1)
  const pkg = JSON.parse(fs.readFileSync(from, "utf8"))
  pkg.napi.targets = [triple]
  fs.writeFileSync(to, JSON.stringify(pkg, null, 2) + "\n")
' package.json "$stage/package.json" "$host_triple"
node_modules/.bin/napi artifacts --cwd "$stage" --output-dir "$work/artifacts" --npm-dir npm ||
  die 'napi artifacts failed'
cmp -s -- "$binary_dir/$binary" "$stage/$platform_dir/$binary" || die "napi artifacts did not place ${binary} in ${platform_dir}/"

# --- Pack both packages (--ignore-scripts: `prepare` would rebuild the addon).
npm pack --ignore-scripts --silent --pack-destination "$work/tarballs" . >/dev/null
npm pack --ignore-scripts --silent --pack-destination "$work/tarballs" "$stage/$platform_dir" >/dev/null
shopt -s nullglob
tarballs=("$work"/tarballs/*.tgz)
shopt -u nullglob
[[ ${#tarballs[@]} -eq 2 ]] || die "expected 2 tarballs, got: ${tarballs[*]:-none}"

# --- A PATH with node and the base system only: nothing can build Rust from here on.
node_dir=$(dirname -- "$target_node")
probe_path=/usr/bin:/bin
case ":${probe_path}:" in *":${node_dir}:"*) ;; *) probe_path="${node_dir}:${probe_path}" ;; esac
probe_env=(env -i "PATH=${probe_path}" "HOME=${work}/home" "TMPDIR=${work}" "npm_config_cache=${work}/npm-cache" "FDQ_TIME_SCALE=${time_scale}")
# An emulated target's C library, when it is not in the host's / (test:targets sets it).
if [[ -n ${QEMU_LD_PREFIX:-} ]]; then probe_env+=("QEMU_LD_PREFIX=${QEMU_LD_PREFIX}"); fi
mkdir -p "$work/home"
for tool in cargo rustc; do
  if "${probe_env[@]}" bash -c "command -v ${tool}" >/dev/null; then
    die "${tool} is on the probe PATH (${probe_path}): the test could not tell a prebuilt binary from a build"
  fi
done
echo "probe PATH: ${probe_path} (no cargo, no rustc)"

# --- One offline install of both tarballs into an empty project. prepublish is not run, so
# the root tarball does not list the platform package: both are named explicitly.
cd "$work/project"
printf '{ "name": "fd-queue-packed-install-probe", "version": "0.0.0", "private": true }\n' >package.json
cp -- "$root"/scripts/packed-install/*.cjs "$root"/scripts/packed-install/*.mjs .
# npm itself runs on the host's Node (the target's may be emulated or have no npm).
env -i "PATH=$(dirname -- "$(command -v node)"):/usr/bin:/bin" "HOME=${work}/home" "TMPDIR=${work}" "npm_config_cache=${work}/npm-cache" \
  npm install --offline "${platform_flags[@]}" --no-audit --no-fund --no-update-notifier --loglevel=error "${tarballs[@]}" ||
  die 'the offline install of the tarballs failed'
installed_platform_dir=$(realpath "node_modules/${platform_package}")

# napi-rs's loader tells musl from glibc by reading /usr/bin/ldd first: a musl Node run on
# a glibc host (test:targets) would be sent to the gnu package. There the probes name the
# installed platform package's binary with the loader's own override; the layout check
# still proves that npm put it there. (A scalar, not an array: bash 3.2's `set -u` refuses
# an empty one.)
loader_override=''
if [[ $target_libc == musl ]] && ! grep -qs musl /usr/bin/ldd; then
  loader_override="${installed_platform_dir}/${binary}"
  echo "a musl target on a glibc host: the probes load ${loader_override} by NAPI_RS_NATIVE_LIBRARY_PATH"
fi

probe() {
  # An empty NAPI_RS_NATIVE_LIBRARY_PATH is no override: the loader tests it for truth.
  "${probe_env[@]}" "NAPI_RS_NATIVE_LIBRARY_PATH=${loader_override}" "FD_QUEUE_PLATFORM_DIR=${installed_platform_dir}" \
    timeout "$((120 * time_scale))" "$target_node" "$@"
}

layout() {
  local stray
  stray=$(find "node_modules/${root_package}" -name '*.node' -print)
  if [[ -n $stray ]]; then
    echo "the root package ships a native binary: ${stray}"
    return 1
  fi
  local resolved
  resolved=$(probe -p "require('fs').realpathSync(require.resolve('${platform_package}'))") || return 1
  if [[ $resolved != "${installed_platform_dir}/${binary}" ]]; then
    echo "require.resolve('${platform_package}') gave ${resolved}"
    return 1
  fi
  echo "node_modules/${root_package} has no .node file; ${platform_package} resolves to its ${binary}"
}

without_platform_package() {
  cp -a "$work/project" "$work/project-without-binary" || return 1
  rm -rf -- "$work/project-without-binary/node_modules/${platform_package}" || return 1
  (cd "$work/project-without-binary" && probe require-without-binary.cjs)
}

check 'the binary comes from the platform package' layout
check "require('fd-queue') passes an fd between two processes" probe pass-fd-require.cjs
check "import { … } from 'fd-queue' passes an fd between two processes" probe pass-fd-import.mjs
if [[ -n $loader_override ]]; then
  # The loader would look for the gnu package here, not this one: proving nothing.
  echo "--- without the platform package: not checked for a musl target on a glibc host"
else
  check 'without the platform package, loading fails clearly' without_platform_package
fi

echo "packed-install: ${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
