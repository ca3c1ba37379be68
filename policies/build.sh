#!/usr/bin/env bash
# Builds every built-in scaling policy from source into target/policies/<name>.wasm, with
# target/policies/<name>.json describing it ({name, language, interface, description}).
#
#   policies/build.sh                 install what is missing, build what changed
#   policies/build.sh steps load      only these policies
#   policies/build.sh --force         rebuild even when the .wasm is newer than its sources
#   policies/build.sh --test          then run each policy's own tests and policies/test/cases.json
#
# Toolchains are checked first and installed when missing, at pinned versions, outside the
# repository (CELERY_OPERATOR_CACHE, by default ~/.cache/celery-operator): a second run only
# checks them. Needs Rust (rustup), Go >= 1.24, Python >= 3.10 and Node >= 18; installs Debian
# packages with apt-get when they are missing (root, or sudo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/policies"
WORK="$ROOT/target/policies-build"
CACHE="${CELERY_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator}"
WIT="$ROOT/wit"
# The contract's version (`package celery:autoscaler@X;`): what every component must export.
WIT_VERSION="$(sed -n 's/^package celery:autoscaler@\(.*\);$/\1/p' "$WIT/policy.wit")"

# Pinned toolchain versions. The Rust policy pins wit-bindgen in its own Cargo.toml.
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_CLI_VERSION=0.63.0
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
CLANG=clang-16
APT_PACKAGES=(clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32)

ALL_POLICIES=(queue-length cpu-memory load drain-time steps)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'policies/build.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# --- toolchains -------------------------------------------------------------------------

ensure_rust_targets() {
  local installed missing=()
  installed="$(rustup target list --installed)"
  for t in wasm32-unknown-unknown; do
    grep -qx "$t" <<<"$installed" || missing+=("$t")
  done
  if ((${#missing[@]})); then
    log "rustup target add ${missing[*]}"
    rustup target add "${missing[@]}"
  fi
}

# ensure_cargo_tool BINARY CRATE VERSION [cargo install flags…]
ensure_cargo_tool() {
  local bin=$1 crate=$2 version=$3
  shift 3
  if command -v "$bin" >/dev/null && [[ "$("$bin" --version)" == *" $version"* ]]; then
    return
  fi
  log "cargo install $crate@$version (a few minutes, once)"
  cargo install --locked "$crate@$version" "$@"
}

# ensure_apt_packages PACKAGE…
ensure_apt_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

ensure_componentize_py() {
  local venv="$CACHE/py-venv"
  if [[ -x "$venv/bin/componentize-py" ]] &&
    [[ "$("$venv/bin/pip" show componentize-py 2>/dev/null)" == *"Version: $COMPONENTIZE_PY_VERSION"* ]]; then
    return
  fi
  log "componentize-py $COMPONENTIZE_PY_VERSION into $venv"
  # Debian's own python3 ships venv without ensurepip.
  python3 -c 'import ensurepip' 2>/dev/null || ensure_apt_packages python3-venv
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
}

ensure_componentize_js() {
  local dir="$CACHE/js" pkg="$CACHE/js/node_modules/@bytecodealliance/componentize-js/package.json"
  if [[ -f $pkg ]] && grep -q "\"version\": \"$COMPONENTIZE_JS_VERSION\"" "$pkg"; then
    return
  fi
  log "@bytecodealliance/componentize-js $COMPONENTIZE_JS_VERSION into $dir"
  mkdir -p "$dir"
  # Its own package.json keeps npm from walking up into another project.
  [[ -f "$dir/package.json" ]] || echo '{"private": true}' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --silent -E "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION")
}

ensure_toolchains() {
  mkdir -p "$CACHE" "$OUT" "$WORK"
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
  command -v go >/dev/null || die "go not found: install Go 1.24 or newer"
  command -v python3 >/dev/null || die "python3 not found"
  command -v node >/dev/null || die "node not found: install Node 18 or newer"
  ensure_rust_targets
  # The subcommands used here and by policy authors; the full default set takes twice as long.
  ensure_cargo_tool wasm-tools wasm-tools "$WASM_TOOLS_VERSION" \
    --no-default-features --features component,print,validate,parse,metadata,strip
  # Only the C generator: the CLI's other languages double its build time.
  ensure_cargo_tool wit-bindgen wit-bindgen-cli "$WIT_BINDGEN_CLI_VERSION" --no-default-features --features c
  ensure_apt_packages "${APT_PACKAGES[@]}"
  ensure_componentize_py
  ensure_componentize_js
}

# --- helpers ----------------------------------------------------------------------------

# up_to_date NAME: the output is newer than the policy's sources and the WIT contract.
up_to_date() {
  local out="$OUT/$1.wasm"
  [[ $FORCE -eq 0 && -f $out && -f "$OUT/$1.json" ]] || return 1
  [[ -z "$(find "$ROOT/policies/$1" "$WIT" "$ROOT/policies/build.sh" -newer "$out" -type f \
    -not -path '*/target/*' -print -quit)" ]]
}

# write_meta NAME LANGUAGE INTERFACE DESCRIPTION [HISTORY [COLUMNS]]
# HISTORY: how many of the latest history samples the policy reads as records (0: none);
# COLUMNS: as columns, through the `window` interface; without them the host hands the whole
# window. The host reads this file beside the module (see the README).
write_meta() {
  python3 -c 'import json, sys
name, language, interface, description = sys.argv[1:5]
meta = {"name": name, "language": language, "interface": interface, "description": description}
if len(sys.argv) > 5:
    meta["history"] = int(sys.argv[5])
if len(sys.argv) > 6:
    meta["columns"] = int(sys.argv[6])
print(json.dumps(meta, indent=2))' "$@" >"$OUT/$1.json"
}

# check_component NAME: exports the policy interface and imports nothing but the contract.
check_component() {
  local wit imports
  wit="$(wasm-tools component wit "$OUT/$1.wasm")"
  grep -q "^  export celery:autoscaler/policy@$WIT_VERSION;" <<<"$wit" ||
    die "$1: does not export celery:autoscaler/policy@$WIT_VERSION"
  imports="$(grep '^  import ' <<<"$wit" | grep -v "celery:autoscaler/\(host\|types\|window\)@$WIT_VERSION" || true)"
  [[ -z $imports ]] || die "$1: imports more than the contract allows: $imports"
}

# check_core NAME: the JSON ABI exports are there, and only WASI or the log is imported.
check_core() {
  local wat bad
  wat="$(wasm-tools print "$OUT/$1.wasm" | grep -E '^\s*\((import|export) ')"
  for e in memory celery_policy_abi_version celery_policy_alloc celery_policy_decide celery_policy_validate_settings; do
    grep -q "(export \"$e\"" <<<"$wat" || die "$1: missing export $e"
  done
  bad="$(grep '(import ' <<<"$wat" | grep -v '(import "\(wasi_snapshot_preview1\|celery_policy\)"' || true)"
  [[ -z $bad ]] || die "$1: forbidden import: $bad"
}

# --- one function per policy ------------------------------------------------------------

build_queue_length() {
  local dir="$ROOT/policies/queue-length" core
  # wasm32-unknown-unknown: no std I/O, so the component imports no WASI at all.
  # A 16 KiB stack instead of rustc's 1 MiB: every decision gets a fresh instance whose
  # linear memory is made accessible and reset each time, so 1 MiB of unused stack costs
  # ~15 µs a call (36 → 20 µs). The stack comes first in memory, so an overflow traps.
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C link-arg=-zstack-size=16384" \
  cargo build --quiet --release --locked --target wasm32-unknown-unknown \
    --manifest-path "$dir/Cargo.toml" --target-dir "$WORK/rust"
  core="$WORK/rust/wasm32-unknown-unknown/release/queue_length.wasm"
  wasm-tools component new "$core" -o "$OUT/queue-length.wasm"
  check_component queue-length
  write_meta queue-length rust component \
    "ceil(backlog / target messages per worker); optionally counts reserved messages" 0
}

build_cpu_memory() {
  local dir="$ROOT/policies/cpu-memory"
  # A reactor (c-shared): the host calls _initialize, then the //go:wasmexport functions.
  (cd "$dir" && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags=-s \
    -o "$OUT/cpu-memory.wasm" .)
  check_core cpu-memory
  write_meta cpu-memory go core \
    "the Kubernetes HPA rule over CPU and/or memory utilisation of the worker pods, 10% tolerance" 0
}

build_load() {
  # componentize-py imports every interface of the world, `window` included, used or not:
  # `"columns": 0` (the last argument of write_meta) says this policy reads none of it.
  # --stub-wasi: the Python runtime's WASI calls are stubbed out, so the component imports none.
  "$CACHE/py-venv/bin/componentize-py" -d "$WIT" -w scaling-policy componentize --stub-wasi \
    -p "$ROOT/policies/load" app -o "$OUT/load.wasm" >/dev/null
  check_component load
  write_meta load python component \
    "(tasks in progress + backlog) over replicas x concurrency against a target utilisation" 0 0
}

build_drain_time() {
  COMPONENTIZE_JS_MODULES="$CACHE/js/node_modules" \
    node "$ROOT/policies/drain-time/build.mjs" "$OUT/drain-time.wasm"
  check_component drain-time
  write_meta drain-time javascript component \
    "the fewest workers that drain the backlog within a target time, from arrival and throughput rates in the history" 0
}

build_steps() {
  local gen="$WORK/steps"
  rm -rf "$gen" && mkdir -p "$gen"
  wit-bindgen c "$WIT" --world scaling-policy --out-dir "$gen" >"$gen/wit-bindgen.log" 2>&1 ||
    { cat "$gen/wit-bindgen.log" >&2; die "steps: wit-bindgen c failed"; }
  # A reactor without WASI: only malloc comes from wasi-libc, which imports nothing for it.
  "$CLANG" --target=wasm32-wasi -O2 -Wall -Wextra -Werror -mexec-model=reactor -Wl,--strip-debug \
    -I "$gen" -o "$gen/steps.core.wasm" \
    "$ROOT/policies/steps/steps.c" "$gen/scaling_policy.c" "$gen/scaling_policy_component_type.o"
  wasm-tools component new "$gen/steps.core.wasm" -o "$OUT/steps.wasm"
  check_component steps
  write_meta steps c component "a table of backlog thresholds to replica counts" 0
}

# --- main -------------------------------------------------------------------------------

FORCE=0
TEST=0
selected=()
for arg in "$@"; do
  case $arg in
  --force) FORCE=1 ;;
  --test) TEST=1 ;;
  -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) die "unknown option $arg" ;;
  *)
    [[ " ${ALL_POLICIES[*]} " == *" $arg "* ]] || die "unknown policy $arg (known: ${ALL_POLICIES[*]})"
    selected+=("$arg")
    ;;
  esac
done
((${#selected[@]})) || selected=("${ALL_POLICIES[@]}")

ensure_toolchains
for name in "${selected[@]}"; do
  if up_to_date "$name"; then
    log "$name: up to date"
    continue
  fi
  log "$name: building"
  start=$SECONDS
  "build_${name//-/_}"
  log "$name: $OUT/$name.wasm ($(stat -c %s "$OUT/$name.wasm") bytes, $((SECONDS - start))s)"
done

if ((TEST)); then
  # Policies with tests of their own, in their own language.
  for name in "${selected[@]}"; do
    if [[ $name == cpu-memory ]]; then
      log "cpu-memory: go test"
      (cd "$ROOT/policies/cpu-memory" && go test ./...)
    fi
  done
  # Node 20 needs the flag for the extended constant expressions componentize-py emits.
  COMPONENTIZE_JS_MODULES="$CACHE/js/node_modules" node --experimental-wasm-extended-const \
    "$ROOT/policies/test/run.mjs" "${selected[@]}"
fi
