# shellcheck shell=bash
# The one list of Debian 12 packages this project needs, by purpose. Every script sources it:
#
#   source "$here/scripts/packages.sh"
#   packages_ensure build demo       # installs what is missing (apt-get, as root)
#
# SKIP_APT=1: install nothing; packages_ensure reports what is missing and returns 1.
# tests/cli/packages.rs checks that every `-sys` crate (and every crate with a `links` key) in
# Cargo.lock is mapped below, and that the package it maps to is in PACKAGES_BUILD.

# Building the binary (cargo itself comes from rustup).
#   ca-certificates: cargo fetches crates over TLS
#   gcc, libc6-dev: the linker, and the C compiler of the bundled SQLite and zstd
#   pkg-config, libpcsclite-dev: pcsc-sys finds and links libpcsclite
#   make: libsodium-sys-stable builds libsodium from its bundled source (./configure && make)
PACKAGES_BUILD=(ca-certificates gcc libc6-dev make pkg-config libpcsclite-dev)

# Running the installed binary (the .deb's Depends/Recommends follow this list).
#   libpcsclite1: linked (YubiKey PIV); fuse3: fusermount3 for `export mount`;
#   pcscd: the PC/SC daemon smartcards and YubiKeys are reached through
PACKAGES_RUNTIME=(libpcsclite1 fuse3 pcscd)

# scripts/demo.sh and scripts/demo-ceremony.sh: a SoftHSM2 token, FUSE, openssl, python3 (JSON).
PACKAGES_DEMO=(softhsm2 fuse3 openssl python3)

# scripts/test.sh: the tokens (SoftHSM2, OpenSC, YubiKey's ykcs11, a virtual PIV card behind
# pcscd via vsmartcard's vpcd, kryoptic built with bindgen: clang), p11-kit's server, client and
# proxy, the Parsec interop judge (PostgreSQL, faketime, sqlite3), man-db for the .deb check.
PACKAGES_TESTS=(softhsm2 opensc fuse3 libclang-dev clang pcscd vsmartcard-vpcd ykcs11 sqlite3
                postgresql faketime openssl python3 p11-kit p11-kit-modules man-db)

# scripts/bench.sh: GNU time for peak RSS.
PACKAGES_BENCH=(time softhsm2 fuse3)

# Building and checking the Debian package (cargo-deb runs dpkg-shlibdeps from dpkg-dev).
PACKAGES_DEB=(dpkg-dev man-db)

# Crates that link a system library (or could): crate=Debian package providing it, or
# crate=none:why. tests/cli/packages.rs fails on a crate missing here.
SYS_CRATE_PACKAGES=(
  "pcsc-sys=libpcsclite-dev"
  "libsqlite3-sys=gcc"           # rusqlite's `bundled` feature: SQLite compiled from source
  "zstd-sys=gcc"                 # zstd compiled from source (no pkg-config probe by default)
  "libsodium-sys-stable=make"    # libsodium compiled from the crate's signed source, linked statically
  "cryptoki-sys=none:dlopen"     # PKCS#11 modules are loaded at run time, nothing is linked
  "linux-raw-sys=none:headers"   # Linux syscall constants as Rust source
  "js-sys=none:wasm"             # WebAssembly only
  "wasm-bindgen-shared=none:wasm" # WebAssembly only (its `links` key only guards versions)
  "rayon-core=none:rust"         # pure Rust (trycmd, tests only); its `links` key only guards versions
  "windows-sys=none:windows"     # Windows only
)

# The packages of the named purposes (build runtime demo tests bench deb), once each.
packages_for() {
  local purpose list=() p seen=" "
  for purpose in "$@"; do
    case "$purpose" in
      build) list+=("${PACKAGES_BUILD[@]}") ;;
      runtime) list+=("${PACKAGES_RUNTIME[@]}") ;;
      demo) list+=("${PACKAGES_DEMO[@]}") ;;
      tests) list+=("${PACKAGES_TESTS[@]}") ;;
      bench) list+=("${PACKAGES_BENCH[@]}") ;;
      deb) list+=("${PACKAGES_DEB[@]}") ;;
      *) echo "packages.sh: unknown purpose $purpose" >&2; return 2 ;;
    esac
  done
  for p in "${list[@]}"; do
    [[ "$seen" == *" $p "* ]] && continue
    seen+="$p "
    echo "$p"
  done
}

# Installs the missing packages of the named purposes; with SKIP_APT set, only reports them.
packages_ensure() {
  local wanted missing=() p
  wanted="$(packages_for "$@")" || return 2
  for p in $wanted; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ -n "${SKIP_APT:-}" ]]; then
    echo "missing packages (SKIP_APT set): ${missing[*]}" >&2
    return 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
