#!/usr/bin/env bash
# Builds the Debian package, installs it with apt-get as an investigator would, and runs the
# INSTALLED binary: `key test` and `export verify` of the Parsec fixture against a SoftHSM2
# token, the HSM profiles found under /usr/share/sequester-custody, `doctor`, and the man page
# of `export` rendered by man(1). scripts/test.sh runs it (CI); needs root and ../shared.
#
#   scripts/deb-check.sh              # DEB_PROFILE=dev by default here (see scripts/deb.sh)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
log() { echo "[deb-check.sh] $*" >&2; }
fail() { echo "[deb-check.sh] FAILED: $*" >&2; exit 1; }

source "$here/scripts/packages.sh"
packages_ensure build runtime demo deb || [[ -n "${SKIP_APT:-}" ]] || exit 1

deb="$(DEB_PROFILE="${DEB_PROFILE:-dev}" bash scripts/deb.sh)"
deb="${deb##* }"
[[ -f "$deb" ]] || fail "no .deb built (got \`$deb\`)"
log "built $deb ($(du -h "$deb" | cut -f1))"

# What the package declares and holds.
depends="$(dpkg-deb -f "$deb" Depends)"
log "Depends: $depends"
for dep in libpcsclite1 fuse3; do
  [[ "$depends" == *"$dep"* ]] || fail "Depends lacks $dep"
done
contents="$(dpkg-deb -c "$deb")"
for f in ./usr/bin/sequester-custody \
         ./usr/share/sequester-custody/hsm-profiles/softhsm2.toml \
         ./usr/share/man/man1/sequester-custody-export \
         ./usr/share/bash-completion/completions/sequester-custody \
         ./usr/share/zsh/vendor-completions/_sequester-custody \
         ./usr/share/fish/vendor_completions.d/sequester-custody.fish \
         ./usr/share/doc/sequester-custody/README.md; do
  grep -qF "$f" <<<"$contents" || fail "$f missing from the package"
done
# Development tooling (the export writer's `generate-export`) never ships: one binary only.
bins="$(grep -oE '\./usr/bin/[^/]+$' <<<"$contents" || true)"
[[ "$bins" == "./usr/bin/sequester-custody" ]] || fail "unexpected binaries in the package: $bins"

# Installed exactly as the README tells the investigator.
cp "$deb" /tmp/
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall "/tmp/$(basename "$deb")" >&2
installed=/usr/bin/sequester-custody
"$installed" --version
if "$installed" generate-export --help >/dev/null 2>&1; then
  fail "the installed binary has a generate-export command"
fi

work="$(mktemp -d -t sequester-deb-XXXXXX)"
trap 'rm -rf "$work"' EXIT
eval "$(softhsm-fixtures/softhsm-token.sh deb-check "$work/softhsm")"
fixtures="$here/../shared/fixtures/parsec"
export SEQUESTER_CUSTODY_PIN="$SEQUESTER_CUSTODY_TEST_PIN"
export SEQUESTER_CUSTODY_TRANSCRIPT="$work/transcript.jsonl"
# The installed binary imports the published fixture key (1024 bits: test-size flag) with its
# hardened template, so the key test below also checks the installed build's custody checks.
"$installed" key import --role service --label svc1 --allow-insecure-test-size \
  --token "pkcs11:token=deb-check?module-name=softhsm2" \
  --in "$fixtures/sequester_service_1.00000000000000000000000000000001.private.pem" >/dev/null
key="pkcs11:token=deb-check;object=svc1;type=private?module-name=softhsm2"
"$installed" key test "$key" --rounds 2
# Anchored by the fixture organisation's root verify key (as tests/export/export_fixture.rs does).
fixture_root=c118b50c90876d8feac2ffe02d59c26f447064289091c1993d3aec170fd6a9c2
"$installed" --json export verify "$fixtures/sequestered_export.sqlite" --key "$key" \
  --root-key "$fixture_root" > "$work/verify.json"
python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); sys.exit(0 if v["ok"] and v["report"]["readable_versions"]==4 else 1)' \
  "$work/verify.json" || fail "export verify: $(cat "$work/verify.json")"

"$installed" doctor > "$work/doctor.txt" || true
cat "$work/doctor.txt"
grep -q "from /usr/share/sequester-custody/hsm-profiles" "$work/doctor.txt" \
  || fail "the installed binary does not read /usr/share/sequester-custody/hsm-profiles"

man -P cat sequester-custody-export > "$work/man.txt" 2>/dev/null || fail "man sequester-custody-export"
grep -q "sequester-custody-export" "$work/man.txt" || fail "man page does not render"
grep -q "mount" "$work/man.txt" || fail "man page lacks the export subcommands"
log "installed package OK: key test, export verify, profiles, doctor, man page"
