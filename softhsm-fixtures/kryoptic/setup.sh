#!/usr/bin/env bash
# Builds the kryoptic PKCS#11 module used as the second test token and prints
#   export KRYOPTIC_MODULE=/abs/path/libkryoptic_pkcs11.so
# on stdout (scripts/test.sh evals it). Logs go to stderr. The target dir is persistent so a
# re-run is a no-op after the first (slow) build.
set -euo pipefail
# The packages this needs are in the one list (stdout carries only `export` lines).
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/packages.sh"
packages_ensure build tests >&2 || [[ -n "${SKIP_APT:-}" ]] || exit 1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${SEQUESTER_KRYOPTIC_TARGET:-/var/tmp/sequester-kryoptic-target}"
mkdir -p "$target"
echo "building kryoptic PKCS#11 module in $target (first build takes several minutes)" >&2
CARGO_TARGET_DIR="$target" cargo build --release --locked --manifest-path "$here/Cargo.toml" 1>&2
module="$target/release/libkryoptic_pkcs11.so"
if [ ! -f "$module" ]; then
    echo "kryoptic build produced no $module" >&2
    exit 1
fi
echo "export KRYOPTIC_MODULE=$module"
