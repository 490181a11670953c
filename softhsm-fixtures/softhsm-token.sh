#!/usr/bin/env bash
# Creates a throwaway SoftHSM2 token in a fresh directory and prints `export` lines to eval.
#
#   eval "$(softhsm-fixtures/softhsm-token.sh [LABEL] [DIR])"
#
# Defaults: label `sequester-test`, a new mktemp directory. User PIN 123456, SO PIN 12345678
# (test tokens only). The caller selects this token with SOFTHSM2_CONF=$SOFTHSM2_CONF.
set -euo pipefail
label="${1:-sequester-test}"
dir="${2:-$(mktemp -d -t softhsm-XXXXXX)}"
mkdir -p "$dir/tokens"
cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"
softhsm2-util --init-token --free --label "$label" --so-pin 12345678 --pin 123456 >/dev/null
module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  [[ -e "$m" ]] && { module="$m"; break; }
done
echo "export SOFTHSM2_CONF='$dir/softhsm2.conf'"
echo "export SOFTHSM_TOKEN_DIR='$dir'"
echo "export SOFTHSM_TOKEN_LABEL='$label'"
echo "export SOFTHSM_MODULE='$module'"
echo "export SEQUESTER_CUSTODY_TEST_PIN='123456'"
