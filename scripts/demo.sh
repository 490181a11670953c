#!/usr/bin/env bash
# The whole job end to end on a throwaway SoftHSM2 token this script creates itself:
#
#   1. token: create it, list modules/tokens and negotiated mechanism paths
#   2. key ceremony: authority + service keys generated ON the token, provenance, public keys,
#      round trips, a service certificate signed through the token and verified (also by the
#      real Parsec server code when its venv exists), the transcript chain checked
#   3. investigation: a realm export made for that service key (synthetic, by the export
#      writer), read through the token: info, ls, history, extract with custody record
#   4. the export mounted read-only with FUSE, listed, read, and unmounted
#
#   scripts/demo.sh            # RSA keys of DEMO_BITS bits (default 2048 to keep it quick;
#                              # `key generate` itself defaults to 4096)
#   KEEP=1 scripts/demo.sh     # keep the working directory
#
# Test PINs only: never keep real keys in SoftHSM.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sequester-custody-target}"
bits="${DEMO_BITS:-2048}"
py="${PARSEC_ORACLE_PY:-/var/tmp/parsec-oracle-venv/bin/python}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# --- what the build and the demo need (scripts/packages.sh: the one list) ----------------------
source "$here/scripts/packages.sh"
packages_ensure build runtime demo
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

cargo build --quiet --bin sequester-custody
# The synthetic-export writer is a development-only workspace member, not part of the tool.
cargo build --quiet -p sequester-export-writer --bin generate-export
bin="$CARGO_TARGET_DIR/debug/sequester-custody"
generate_export="$CARGO_TARGET_DIR/debug/generate-export"

work="$(mktemp -d -t sequester-demo-XXXXXX)"
mnt="$work/mnt"
mount_pid=""
cleanup() {
  if [[ -n "$mount_pid" ]] && kill -0 "$mount_pid" 2>/dev/null; then
    kill -INT "$mount_pid" 2>/dev/null || true
    wait "$mount_pid" 2>/dev/null || true
  fi
  mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u "$mnt" 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# =================================================================================================
step "1. A throwaway SoftHSM2 token (label demo-token)"
eval "$(softhsm-fixtures/softhsm-token.sh demo-token "$work/softhsm")"
# Demo only: the PIN comes from the environment. A real operator types it at the prompt, or uses
# pin-source=file:… in the URI; it is never a command-line argument.
export SEQUESTER_CUSTODY_PIN="$SEQUESTER_CUSTODY_TEST_PIN"
export SEQUESTER_CUSTODY_TRANSCRIPT="$work/transcript.jsonl"
token="pkcs11:token=demo-token?module-name=softhsm2"
key() { echo "pkcs11:token=demo-token;object=$1;type=private?module-name=softhsm2"; }
ops=(--operator "Alice (officer)" --operator "Bob (witness)")
run "$bin" token list
run "$bin" token info "$token"

# =================================================================================================
step "2a. Key ceremony: authority and service keys generated on the token"
run "$bin" key generate --role authority --label demo-authority --bits "$bits" \
    --token "$token" --public-out "$work/authority.pub.pem" "${ops[@]}"
run "$bin" key generate --role service --label demo-service --bits "$bits" \
    --token "$token" --public-out "$work/service.pub.pem" "${ops[@]}"
run "$bin" key list --token "$token"
run "$bin" -v key show "$(key demo-service)"

step "2b. Round trips through the token (operators run this before publishing a key)"
run "$bin" key test "$(key demo-authority)" --rounds 3
run "$bin" key test "$(key demo-service)" --rounds 3

step "2c. Service certificate signed by the authority key on the token"
mkdir -p "$work/certs"
run "$bin" cert service --authority "$(key demo-authority)" --service-key "$(key demo-service)" \
    --label "Demo Service" --authority-public "$work/authority.pub.pem" -o "$work/certs/" "${ops[@]}"
cert="$(ls "$work"/certs/sequester_service_certificate-*.pem)"
run "$bin" cert show "$cert" --authority-public "$work/authority.pub.pem"
if [[ -x "$py" && -f "$here/../shared/interop/verify_service_cert.py" ]]; then
  step "2d. The real Parsec server code (parsec-cloud 3.9.3) judges the certificate"
  run "$py" "$here/../shared/interop/verify_service_cert.py" "$work/authority.pub.pem" "$cert"
else
  echo "(Parsec oracle venv not found at $py: scripts/test.sh sets it up; skipping the server check)"
fi

step "2e. Ceremony transcript: hash chain and head digest (for the paper record)"
run "$bin" ceremony verify "$work/transcript.jsonl"

# =================================================================================================
step "3a. A realm export whose sequester accesses are encrypted to the token's service key"
# Synthetic data from the export writer (tests/benchmarks tool): rotations, renames, deletions,
# and files encrypted with a key this service never receives.
run "$generate_export" "$work/export.sqlite" --shape mixed \
    --service-pubkey "$work/service.pub.pem" --truth "$work/truth.json"
sum_before="$(sha256sum "$work/export.sqlite" | cut -d' ' -f1)"

step "3b. Trust anchor: the organisation's address, obtained out of band, is pinned"
# A real investigator gets the address (parsec3://…/ORG?p=ROOT_KEY) from the organisation itself,
# never from the export; here the writer's ground truth plays the organisation.
export SEQUESTER_CUSTODY_PINS="$work/pins.json"
org_addr="$(python3 -c 'import base64,json,sys
t=json.load(open(sys.argv[1]))
p=base64.urlsafe_b64encode(bytes.fromhex("c420"+t["root_verify_key"])).decode().rstrip("=")
print("parsec3://parsec.example/" + t["organization_id"] + "?p=" + p)' "$work/truth.json")"
run "$bin" org pin "$org_addr"

step "3c. Investigation through the token"
run "$bin" export info "$work/export.sqlite"
run "$bin" export verify "$work/export.sqlite" --key "$(key demo-service)"
run "$bin" -v export ls "$work/export.sqlite" / -l --key "$(key demo-service)"
{ run "$bin" export timeline "$work/export.sqlite" --key "$(key demo-service)" | head -n 15; } || true
first_file="$("$bin" --json export ls "$work/export.sqlite" / -R --key "$(key demo-service)" \
  | python3 -c 'import json,sys
d=json.load(sys.stdin)
def walk(x):
    if isinstance(x,dict):
        if x.get("kind")=="file" and x.get("readable") and x.get("path"): print(x["path"]); sys.exit(0)
        for v in x.values(): walk(v)
    elif isinstance(x,list):
        for v in x: walk(v)
walk(d)' || true)"
if [[ -n "$first_file" ]]; then
  run "$bin" export history "$work/export.sqlite" "$first_file" --key "$(key demo-service)"
fi
run "$bin" export extract "$work/export.sqlite" "$work/evidence" --key "$(key demo-service)"
echo "custody record: $work/evidence.custody.json"
head -c 600 "$work/evidence.custody.json"; echo " …"

# =================================================================================================
step "4. Read-only FUSE mount of the export, listed, then unmounted with Ctrl-C (SIGINT)"
mkdir -p "$mnt"
"$bin" export mount "$work/export.sqlite" "$mnt" --key "$(key demo-service)" &
mount_pid=$!
for _ in $(seq 1 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
mountpoint -q "$mnt" || { echo "mount did not appear" >&2; exit 1; }
run ls -la "$mnt"
{ run ls "$mnt/.history" | head -n 5; } || true
echo "files readable through the mount: $(find "$mnt" -path "$mnt/.history" -prune -o -type f -perm -u+r -print 2>/dev/null | wc -l)"
kill -INT "$mount_pid"
wait "$mount_pid"; mount_pid=""
mountpoint -q "$mnt" && { echo "still mounted after SIGINT" >&2; exit 1; }
echo "unmounted cleanly"

sum_after="$(sha256sum "$work/export.sqlite" | cut -d' ' -f1)"
[[ "$sum_before" == "$sum_after" ]] || { echo "the export changed!" >&2; exit 1; }
echo
echo "export unchanged (SHA-256 $sum_after); the token and everything else go with $work"
