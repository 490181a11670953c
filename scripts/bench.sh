#!/usr/bin/env bash
# Performance benchmarks: generates (once, cached) three realm exports with the export
# writer and a SoftHSM2 token holding a 4096-bit service key, then runs the bench harness
# (benches/export_bench.rs), which prints one table with every figure and its ratio to the
# baselines measured in the same run.
#
#   scripts/bench.sh                 # full size (≈1 GiB, 100k files, 3000 files × 50 versions)
#   BENCH_TINY=1 scripts/bench.sh    # tiny exports: checks the harness end to end in seconds
#   BENCH_GENERATE_ONLY=1 scripts/bench.sh   # only create the token and the exports
#   BENCH_MILLION=1 scripts/bench.sh         # also the 1,000,000-entry export (peak RSS rows)
#
# The machine may be shared: every figure is printed with the 1-min load average before/after
# and the measured process's CPU share; before each measurement the harness waits up to
# BENCH_SETTLE_MAX seconds (default 90; 0 with BENCH_TINY) for the load to drop to
# BENCH_MAX_LOAD (default 0.5), and flags a figure measured above it "LOADED — not a result".
#
# Run after the test set-up (scripts/test.sh: packages softhsm2, fuse3). Exports and the token are
# cached under $SEQUESTER_BENCH_CACHE (default /var/tmp/sequester-bench), keyed by the writer's
# parameters and a digest of the writer's source, so a second run only measures. Sizes can be
# overridden: BENCH_LARGE_SIZE, BENCH_SMALL_FILES, BENCH_SMALL_FOLDERS, BENCH_HISTORY_FILES,
# BENCH_HISTORY_VERSIONS, BENCH_HISTORY_ROTATIONS, BENCH_MILLION_FILES,
# BENCH_MILLION_FOLDERS. Extra arguments go to the harness
# (e.g. `-- --skip-mount`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sequester-custody-target}"
cache="${SEQUESTER_BENCH_CACHE:-/var/tmp/sequester-bench}"
log() { echo "[bench.sh] $*" >&2; }

if [[ -n "${BENCH_TINY:-}" ]]; then
  cache="$cache/tiny"  # its own cache: never replaces the full-size exports
  : "${BENCH_LARGE_SIZE:=24M}" "${BENCH_SMALL_FILES:=2000}" "${BENCH_SMALL_FOLDERS:=60}"
  : "${BENCH_HISTORY_FILES:=40}" "${BENCH_HISTORY_VERSIONS:=10}" "${BENCH_HISTORY_ROTATIONS:=4}"
  : "${BENCH_SERVICE_BITS:=2048}" "${BENCH_MILLION_FILES:=5000}" "${BENCH_MILLION_FOLDERS:=50}"
  : "${BENCH_SETTLE_MAX:=0}"
fi
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
large_size="${BENCH_LARGE_SIZE:-1G}"
small_files="${BENCH_SMALL_FILES:-100000}"
small_folders="${BENCH_SMALL_FOLDERS:-3000}"
history_files="${BENCH_HISTORY_FILES:-3000}"
history_versions="${BENCH_HISTORY_VERSIONS:-50}"
history_rotations="${BENCH_HISTORY_ROTATIONS:-20}"
service_bits="${BENCH_SERVICE_BITS:-4096}"
million_files="${BENCH_MILLION_FILES:-1000000}"
million_folders="${BENCH_MILLION_FOLDERS:-30000}"
max_load="${BENCH_MAX_LOAD:-0.5}"
settle_max="${BENCH_SETTLE_MAX:-90}"

source "$here/scripts/packages.sh"
# GNU time measures the peak RSS of each command (see benches/export_bench.rs).
packages_ensure build runtime bench

log "building (release)"
cargo build --release --quiet --bin sequester-custody
cargo build --release --quiet -p sequester-export-writer --bin generate-export
cli="$CARGO_TARGET_DIR/release/sequester-custody"

# --- token with the service key (cached with the exports that were encrypted to it) -----------
token_dir="$cache/token-rsa$service_bits"
label="sequester-bench"
export SEQUESTER_CUSTODY_PIN=123456
module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  [[ -e "$m" ]] && { module="$m"; break; }
done
[[ -n "$module" ]] || { log "SoftHSM2 module not found"; exit 1; }
if [[ ! -s "$token_dir/service.pub.pem" ]]; then
  log "creating the SoftHSM2 token and a $service_bits-bit service key in $token_dir"
  rm -rf "$token_dir"
  mkdir -p "$token_dir"
  eval "$(bash softhsm-fixtures/softhsm-token.sh "$label" "$token_dir")"
  # Run inside the token directory: `key generate` appends to a key transcript in the cwd.
  (cd "$token_dir" && "$cli" key generate --role service --label bench-service \
    --bits "$service_bits" --token "pkcs11:token=$label?module-path=$module" \
    --public-out "$token_dir/service.pub.pem.tmp" >&2)
  mv "$token_dir/service.pub.pem.tmp" "$token_dir/service.pub.pem"
fi
export SOFTHSM2_CONF="$token_dir/softhsm2.conf"
key_uri="pkcs11:token=$label;object=bench-service;type=private?module-path=$module"

# --- exports, keyed by parameters + writer source + service key -------------------------------
writer_version="$(cat tests/export-writer/src/*.rs tests/export-writer/src/bin/*.rs \
  src/parsec/*.rs | sha256sum | cut -c1-16)"
pub_digest="$(sha256sum < "$token_dir/service.pub.pem" | cut -c1-16)"
generate() { # name, generate-export arguments...
  local name="$1"; shift
  local id
  id="$(echo "$* $writer_version $pub_digest" | sha256sum | cut -c1-16)"
  local out="$cache/$name-$id.sqlite"
  if [[ ! -s "$out" ]]; then
    log "generating $name export ($*) -> $out"
    # generate-export writes a temporary sibling and renames it: no half-written cache entry.
    "$CARGO_TARGET_DIR/release/generate-export" "$out" --service-pubkey "$token_dir/service.pub.pem" "$@" >&2
    # Older versions of this export (other writer or parameters) are stale: drop them.
    for old in "$cache/$name"-*.sqlite; do
      [[ "$old" == "$out" ]] || rm -f "$old"
    done
  fi
  echo "$out"
}
large="$(generate large --shape large --size "$large_size" --blocksize 512K)"
small="$(generate small --shape small --files "$small_files" --folders "$small_folders")"
history="$(generate history --shape history --files "$history_files" \
  --versions "$history_versions" --rotations "$history_rotations")"
million_args=()
if [[ -n "${BENCH_MILLION:-}" ]]; then
  # 1,000,000 entries (plus ≈31k folders) of 256 B–2 KiB (≈1.2 GB): the entry count is what
  # matters for the memory targets. The writer keeps ≈0.4 KiB per entry in memory.
  million="$(generate million --shape small --files "$million_files" \
    --folders "$million_folders" --min-file-size 256 --max-file-size 2K)"
  million_args=(--million "$million")
fi

if [[ -n "${BENCH_GENERATE_ONLY:-}" ]]; then
  log "exports ready: $large $small $history"
  exit 0
fi

# --- the harness -------------------------------------------------------------------------------
work="$cache/work"
mkdir -p "$work"
extra=()
if [[ "${1:-}" == "--" ]]; then shift; fi
extra=("$@")
log "running the harness"
cargo bench --quiet --bench export_bench -- \
  --cli "$cli" --key "$key_uri" --large "$large" --small "$small" --history "$history" \
  --work "$work" --max-load "$max_load" --settle-max "$settle_max" \
  "${million_args[@]}" "${extra[@]}"
