#!/usr/bin/env bash
# Builds the virtual PIV card (piv-authenticator on a software trussed platform, attached to
# pcscd through vsmartcard's vpcd driver). Only builds: prints `export` lines on stdout for the
# caller to eval (scripts/test.sh does), logs go to stderr.
#
#   eval "$(bash softhsm-fixtures/virtual-piv/setup.sh)"
#
# Needs: cargo, libclang-dev (littlefs2-sys bindgen), pcscd + vsmartcard-vpcd at run time.
set -euo pipefail
# The packages this needs are in the one list (stdout carries only `export` lines).
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/packages.sh"
packages_ensure build tests >&2 || [[ -n "${SKIP_APT:-}" ]] || exit 1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${VIRTUAL_PIV_TARGET_DIR:-/var/tmp/sequester-virtual-piv-target}"
bin="$target/release/sequester-virtual-piv"
log() { echo "[virtual-piv/setup] $*" >&2; }

# Rebuild when a source file is newer than the binary (cargo would notice too, but this keeps
# the common case free of a cargo invocation).
if [[ ! -x "$bin" ]] || [[ -n "$(find "$here/src" "$here/Cargo.toml" "$here/Cargo.lock" -newer "$bin" 2>/dev/null)" ]]; then
  log "building $bin (first build takes a few minutes)"
  CARGO_TARGET_DIR="$target" cargo build --release --locked \
    --manifest-path "$here/Cargo.toml" 1>&2
fi
[[ -x "$bin" ]] || { log "build did not produce $bin"; exit 1; }

echo "export VIRTUAL_PIV_BIN=$bin"
echo "export VIRTUAL_PIV_START=$here/start.sh"
echo "export VIRTUAL_PIV_STOP=$here/stop.sh"
