#!/usr/bin/env bash
# Key ceremony demo on a throwaway SoftHSM2 token: authority + service keys generated on the
# token, a service certificate and its revocation signed through the token, verified by us and,
# when the interop venv exists, by the real Parsec 3.9.3 server code. No key file ever exists.
#
#   scripts/demo-ceremony.sh            # builds the CLI if needed
#   KEEP=1 scripts/demo-ceremony.sh     # keep the work directory
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sequester-custody-target}"
source "$here/scripts/packages.sh"
packages_ensure build runtime demo
cargo build --quiet --manifest-path "$here/Cargo.toml"
bin="$CARGO_TARGET_DIR/debug/sequester-custody"
module="${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
py="${PARSEC_ORACLE_PY:-/var/tmp/parsec-oracle-venv/bin/python}"

work="$(mktemp -d)"
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "throwaway SoftHSM2 token in $work"
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" \
  > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
softhsm2-util --init-token --free --label demo-ceremony --so-pin 12345678 --pin 123456 >/dev/null
# Demo only: the PIN comes from the environment (a real ceremony types it at the prompt).
export SEQUESTER_CUSTODY_PIN=123456
token="pkcs11:token=demo-ceremony?module-path=$module"
key() { echo "pkcs11:token=demo-ceremony;object=$1;type=private?module-path=$module"; }
export SEQUESTER_CUSTODY_TRANSCRIPT="$work/transcript.jsonl"
ops=(--operator "Alice (officer)" --operator "Bob (witness)")

step "authority key (RSA 2048) and service key (RSA 2048) generated on the token"
"$bin" key generate --role authority --label demo-authority --bits 2048 --token "$token" \
  --public-out "$work/authority.pub.pem"
"$bin" key generate --role service --label demo-service --bits 2048 --token "$token" \
  --public-out "$work/service.pub.pem"

step "service certificate signed by the authority key on the token"
mkdir -p "$work/certs"
"$bin" cert service --authority "$(key demo-authority)" --service-key "$(key demo-service)" \
  --label "Demo Service" --authority-public "$work/authority.pub.pem" \
  --organization DemoOrg --journal "$work/journal.json" -o "$work/certs/" "${ops[@]}"
cert="$(ls "$work"/certs/sequester_service_certificate-*.pem)"

step "verify it ourselves"
"$bin" cert show "$cert" --authority-public "$work/authority.pub.pem"

if [[ -x "$py" && -f "$here/../shared/interop/verify_service_cert.py" ]]; then
  step "verify it with the real Parsec server code (parsec-cloud 3.9.3)"
  "$py" "$here/../shared/interop/verify_service_cert.py" "$work/authority.pub.pem" "$cert"
fi

step "revocation certificate"
service_id="$("$bin" --json cert show "$cert" | sed -n 's/.*"service_id": "\([0-9a-f]*\)".*/\1/p')"
"$bin" cert revoke --authority "$(key demo-authority)" --service-id "$service_id" \
  --organization DemoOrg --journal "$work/journal.json" -o "$work/certs/" "${ops[@]}"
revocation="$(ls "$work"/certs/sequester_service_revocation_certificate-*.pem)"
"$bin" cert show "$revocation" --authority-public "$work/authority.pub.pem"
if [[ -x "$py" && -f "$here/../shared/interop/verify_revocation_cert.py" ]]; then
  "$py" "$here/../shared/interop/verify_revocation_cert.py" "$work/authority.pub.pem" "$revocation" \
    --service-cert "$cert"
fi

step "transcript chain (write the head digest on the paper record)"
"$bin" ceremony verify "$work/transcript.jsonl"
