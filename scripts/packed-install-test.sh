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

# --- The host target: its napi triple and platform suffix (linux-x64-gnu, darwin-arm64, …)
# shellcheck disable=SC2016 # the ${…} below are JavaScript's
host=$(
  node -e '
    const { parseTriple } = require("@napi-rs/cli")
    const { napi } = require("./package.json")
    const { platform, arch } = process
    let libc = ""
    if (platform === "linux") libc = process.report.getReport().header.glibcVersionRuntime ? "gnu" : "musl"
    const abi = [platform, arch, libc].filter(Boolean).join("-")
    const triple = napi.targets.find((t) => parseTriple(t).platformArchABI === abi)
    if (!triple) throw new Error(`no configured napi target builds for ${abi}`)
    console.log(napi.binaryName, triple, abi)
  '
) || die 'cannot tell the host target'
read -r binary_name host_triple host_abi <<<"$host"
binary="${binary_name}.${host_abi}.node"
platform_dir="npm/${host_abi}"
[[ -f $binary ]] || die "no ${binary} in the repository root: run npm run build first"
[[ -f $platform_dir/package.json ]] || die "no ${platform_dir}/package.json (napi create-npm-dirs)"
platform_package=$(node -p "require('./${platform_dir}/package.json').name")
root_package=$(node -p "require('./package.json').name")
echo "host target ${host_triple}: ${binary} -> ${platform_package}"

# --- Place the binary with napi artifacts, in a scratch copy of the package.
stage="$work/stage"
mkdir -p "$work/artifacts" "$work/tarballs" "$work/project" "$stage/npm"
cp -- "$binary" "$work/artifacts/"
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
cmp -s -- "$binary" "$stage/$platform_dir/$binary" || die "napi artifacts did not place ${binary} in ${platform_dir}/"

# --- Pack both packages (--ignore-scripts: `prepare` would rebuild the addon).
npm pack --ignore-scripts --silent --pack-destination "$work/tarballs" . >/dev/null
npm pack --ignore-scripts --silent --pack-destination "$work/tarballs" "$stage/$platform_dir" >/dev/null
shopt -s nullglob
tarballs=("$work"/tarballs/*.tgz)
shopt -u nullglob
[[ ${#tarballs[@]} -eq 2 ]] || die "expected 2 tarballs, got: ${tarballs[*]:-none}"

# --- A PATH with node and the base system only: nothing can build Rust from here on.
node_dir=$(dirname -- "$(command -v node)")
probe_path=/usr/bin:/bin
case ":${probe_path}:" in *":${node_dir}:"*) ;; *) probe_path="${node_dir}:${probe_path}" ;; esac
probe_env=(env -i "PATH=${probe_path}" "HOME=${work}/home" "TMPDIR=${work}" "npm_config_cache=${work}/npm-cache")
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
"${probe_env[@]}" npm install --offline --no-audit --no-fund --no-update-notifier --loglevel=error "${tarballs[@]}" ||
  die 'the offline install of the tarballs failed'
installed_platform_dir=$(realpath "node_modules/${platform_package}")

probe() {
  "${probe_env[@]}" "FD_QUEUE_PLATFORM_DIR=${installed_platform_dir}" timeout 120 node "$@"
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
check 'without the platform package, loading fails clearly' without_platform_package

echo "packed-install: ${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
