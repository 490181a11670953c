#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after the other (one core), then minimises each corpus.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 180 s, every target)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Logs go to
# $FUZZ_LOG_DIR (default /var/tmp/sequester-fuzz-logs); new crash inputs to fuzz/artifacts/TARGET/
# (copy them to fuzz/regressions/TARGET/ once fixed: tests/export/fuzz_corpus.rs replays them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The fuzz targets link the library: the same build packages as the binary.
source "$here/scripts/packages.sh"
packages_ensure build || [[ -n "${SKIP_APT:-}" ]] || exit 1
cd "$here/fuzz"
seconds="${1:-180}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
logs="${FUZZ_LOG_DIR:-/var/tmp/sequester-fuzz-logs}"
target="${CARGO_TARGET_DIR:-$here/fuzz/target}"
mkdir -p "$logs"
max_len() {
  case "$1" in
    envelope | manifest) echo 16384 ;;
    pem | ceremony_plan) echo 8192 ;;
    pkcs11_uri | yubikey_uri | keys_bundle_access) echo 1024 ;;
    *) echo 4096 ;;
  esac
}
for t in "${targets[@]}"; do
  echo "== $t (${seconds}s, -max_len=$(max_len "$t"))"
  mkdir -p "corpus/$t"
  (cd "$logs" && cargo +nightly fuzz run --fuzz-dir "$here/fuzz" --target-dir "$target" -O "$t" "$here/fuzz/corpus/$t" -- \
    -jobs=1 -workers=1 -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
    -max_len="$(max_len "$t")" -print_final_stats=1 >"$logs/$t.run.log" 2>&1) || echo "   $t: run failed (see $logs/)"
  grep -h "stat::number_of_executed_units\|stat::peak_rss_mb\|Done [0-9]* runs\|ERROR\|SUMMARY" \
    "$logs/fuzz-0.log" 2>/dev/null | sed "s/^/   /" || true
  mv "$logs/fuzz-0.log" "$logs/$t.log" 2>/dev/null || true
  cargo +nightly fuzz cmin --fuzz-dir "$here/fuzz" --target-dir "$target" -O "$t" "$here/fuzz/corpus/$t" -- -rss_limit_mb=1024 \
    -max_len="$(max_len "$t")" >"$logs/$t.cmin.log" 2>&1 || echo "   $t: cmin failed"
  echo "   corpus: $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
done
