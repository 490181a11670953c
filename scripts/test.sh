#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian 12 machine, then runs it.
#
#   scripts/test.sh            # install what is missing, build helper tokens, run all tests
#   scripts/test.sh -- FILTER  # pass extra arguments to `cargo test`
#
# Idempotent: a second run only runs the tests. Needs root for apt-get (CI and the dev machines
# are root); set SKIP_APT=1 to only use what is installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sequester-custody-target}"
log() { echo "[test.sh] $*" >&2; }

# --- system packages ---------------------------------------------------------------------------
packages=(softhsm2 opensc fuse3 libclang-dev clang pkg-config libpcsclite-dev pcscd
          vsmartcard-vpcd ykcs11 sqlite3 postgresql faketime openssl)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ -n "${SKIP_APT:-}" ]]; then
    log "missing packages (SKIP_APT set): ${missing[*]}"
  else
    log "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
command -v cargo >/dev/null || { log "cargo not found (rustup toolchain expected)"; exit 1; }

# --- the real Parsec server as interop judge -----------------------------------------------------
shared="$here/../shared"
export PARSEC_ORACLE_VENV="${PARSEC_ORACLE_VENV:-/var/tmp/parsec-oracle-venv}"
if [[ -x "$shared/interop/setup.sh" || -f "$shared/interop/setup.sh" ]]; then
  log "parsec oracle venv at $PARSEC_ORACLE_VENV"
  ORACLE_SKIP_APT=${SKIP_APT:-} bash "$shared/interop/setup.sh" >&2
  export PARSEC_ORACLE_PY="$PARSEC_ORACLE_VENV/bin/python"
fi

# --- helper tokens built from source (kryoptic, virtual PIV card) ---------------------------------
for setup in softhsm-fixtures/*/setup.sh; do
  [[ -f "$setup" ]] || continue
  log "running $setup"
  eval "$(bash "$setup")"
done

# --- the suite -------------------------------------------------------------------------------------
export SEQUESTER_TEST_REQUIRE_ALL=1
extra=()
if [[ "${1:-}" == "--" ]]; then shift; extra=("$@"); fi
cargo build --all-targets
cargo test --no-fail-fast "${extra[@]}" 2>&1
