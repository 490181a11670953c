#!/usr/bin/env bash
# A tour of the token foundation on a throwaway SoftHSM2 token:
#   1. create the token, 2. list tokens, 3. generate an authority key and a service key on it,
#   4. show their provenance and public keys (SPKI PEM as Parsec loads it), 5. round-trip test.
#
#   scripts/demo.sh            # keys of DEMO_BITS bits (default 2048, to keep the demo quick;
#                              # `key generate` itself defaults to 4096)
#
# Everything lives in a temporary directory removed at exit. Test PINs only: never use SoftHSM
# for real keys.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sequester-custody-target}"
bits="${DEMO_BITS:-2048}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cargo build --quiet --bin sequester-custody
bin="$CARGO_TARGET_DIR/debug/sequester-custody"

work="$(mktemp -d -t sequester-demo-XXXXXX)"
trap 'rm -rf "$work"' EXIT

step "1. A throwaway SoftHSM2 token (label demo-token)"
eval "$(softhsm-fixtures/softhsm-token.sh demo-token "$work/softhsm")"
# The PIN comes from the environment (or pin-source=file:…, or a prompt) - never from argv.
export SEQUESTER_CUSTODY_PIN="$SEQUESTER_CUSTODY_TEST_PIN"
token="pkcs11:token=demo-token?module-name=softhsm2"

step "2. Modules, tokens and negotiated mechanism paths"
run "$bin" token list
run "$bin" token info "$token"

step "3. Generate the sequester authority key and a service key on the token"
run "$bin" key generate --role authority --label demo-authority --bits "$bits" \
    --token "$token" --public-out "$work/authority.pub.pem"
run "$bin" key generate --role service --label demo-service-1 --bits "$bits" \
    --token "$token" --public-out "$work/service-1.pub.pem"

step "4. Provenance and public keys"
run "$bin" key list --token "$token"
run "$bin" -v key show "pkcs11:token=demo-token;object=demo-authority;type=private?module-name=softhsm2"
echo "public keys written for Parsec:"
for f in "$work"/*.pub.pem; do
  echo "  $f (SHA-256 of the DER: $(openssl pkey -pubin -in "$f" -outform DER | sha256sum | cut -d' ' -f1))"
done

step "5. Round trips through the token (run this before publishing a key)"
run "$bin" key test "pkcs11:token=demo-token;object=demo-authority?module-name=softhsm2" --rounds 5
run "$bin" key test "pkcs11:token=demo-token;object=demo-service-1?module-name=softhsm2" --rounds 5
echo
echo "done; the token is deleted with $work"
