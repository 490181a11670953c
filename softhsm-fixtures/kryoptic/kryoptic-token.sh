#!/usr/bin/env bash
# Creates a throwaway kryoptic token (its own sqlite database and KRYOPTIC_CONF) and prints
# `export` lines to eval:
#
#   eval "$(softhsm-fixtures/kryoptic/setup.sh)"             # builds the module once
#   eval "$(softhsm-fixtures/kryoptic/kryoptic-token.sh [LABEL] [DIR])"
#
# Defaults: label `sequester-test`, a new mktemp directory. User PIN 87654321, SO PIN 12345678
# (test tokens only; kryoptic wants PINs of at least 8 characters).
set -euo pipefail
label="${1:-sequester-test}"
dir="${2:-$(mktemp -d -t kryoptic-XXXXXX)}"
module="${KRYOPTIC_MODULE:?run softhsm-fixtures/kryoptic/setup.sh first (it exports KRYOPTIC_MODULE)}"
mkdir -p "$dir"
cat > "$dir/kryoptic.conf" <<CONF
[[slots]]
slot = 10
dbtype = "sqlite"
dbargs = "$dir/token.sql"
CONF
export KRYOPTIC_CONF="$dir/kryoptic.conf"
pkcs11-tool --module "$module" --slot 10 --init-token --label "$label" --so-pin 12345678 >/dev/null
pkcs11-tool --module "$module" --slot 10 --login --login-type so --so-pin 12345678 \
    --init-pin --pin 87654321 >/dev/null
echo "export KRYOPTIC_CONF='$dir/kryoptic.conf'"
echo "export KRYOPTIC_TOKEN_DIR='$dir'"
echo "export KRYOPTIC_TOKEN_LABEL='$label'"
echo "export SEQUESTER_CUSTODY_TEST_PIN='87654321'"
