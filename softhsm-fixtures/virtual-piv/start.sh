#!/usr/bin/env bash
# Starts pcscd (unless one is already running), the vpcd reader and a fresh virtual PIV card, in
# the background; waits until the card answers; prints `export` lines for the caller to eval:
#
#   eval "$(bash softhsm-fixtures/virtual-piv/start.sh)"
#   ... use the card (serial $VIRTUAL_PIV_SERIAL, PIN 123456, PUK 12345678,
#       default 3DES management key) ...
#   bash softhsm-fixtures/virtual-piv/stop.sh      # stops exactly the PIDs started here
#
# Knobs (environment):
#   VIRTUAL_PIV_PORT     vpcd port of the card (default 35963, as /etc/reader.conf.d/vpcd);
#                        the reader we configure also offers a second slot on PORT+1
#   VIRTUAL_PIV_SERIAL   card serial (default: random 8 digits)
#   VIRTUAL_PIV_VERSION  firmware version the card reports (default 5.4.3)
#   VIRTUAL_PIV_CARD=0   start only pcscd/vpcd, no card (tests start their own cards)
#   VIRTUAL_PIV_RUN_DIR  where logs and the reader configuration go (default: a new temp dir)
#
# pcscd runs in the foreground mode (`-f`) in the background of this script, without
# `--auto-exit`, with our own reader.conf.d (`-c`) so no systemd and no system configuration
# is needed. The reader name contains "Yubico" so Yubico's ykcs11 accepts the card.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[virtual-piv/start] $*" >&2; }

eval "$(bash "$here/setup.sh")"
port="${VIRTUAL_PIV_PORT:-35963}"
serial="${VIRTUAL_PIV_SERIAL:-$(( (RANDOM * 32768 + RANDOM) % 90000000 + 10000000 ))}"
version="${VIRTUAL_PIV_VERSION:-5.4.3}"
run_dir="${VIRTUAL_PIV_RUN_DIR:-$(mktemp -d /tmp/virtual-piv.XXXXXX)}"
mkdir -p "$run_dir/reader.conf.d"
reader_name="Yubico YubiKey virtual PIV"

command -v pcscd >/dev/null || { log "pcscd not installed (apt package pcscd)"; exit 1; }
driver=""
for d in /usr/lib/pcsc/drivers/serial/libifdvpcd.so /usr/lib/x86_64-linux-gnu/pcsc/drivers/serial/libifdvpcd.so; do
  [[ -f "$d" ]] && driver="$d" && break
done
[[ -n "$driver" ]] || { log "vpcd driver not found (apt package vsmartcard-vpcd)"; exit 1; }

pcscd_running() {
  local pidfile=/run/pcscd/pcscd.pid
  [[ -S /run/pcscd/pcscd.comm ]] && [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

pcscd_pid=""
if pcscd_running; then
  log "reusing the running pcscd (pid $(cat /run/pcscd/pcscd.pid)); it must serve vpcd on port $port"
else
  # A stale socket from a killed pcscd makes the new one refuse to start.
  rm -f /run/pcscd/pcscd.comm /run/pcscd/pcscd.pid
  printf 'FRIENDLYNAME "%s"\nDEVICENAME   /dev/null:%d\nLIBPATH      %s\nCHANNELID    %d\n' \
    "$reader_name" "$port" "$driver" "$port" > "$run_dir/reader.conf.d/virtual-piv"
  pcscd --foreground --config "$run_dir/reader.conf.d" >"$run_dir/pcscd.log" 2>&1 &
  pcscd_pid=$!
  for _ in $(seq 1 100); do
    [[ -S /run/pcscd/pcscd.comm ]] && break
    kill -0 "$pcscd_pid" 2>/dev/null || { log "pcscd exited: $(cat "$run_dir/pcscd.log")"; exit 1; }
    sleep 0.1
  done
  [[ -S /run/pcscd/pcscd.comm ]] || { log "pcscd did not create its socket"; exit 1; }
  log "pcscd started (pid $pcscd_pid), vpcd reader on port $port"
fi

card_pid=""
if [[ "${VIRTUAL_PIV_CARD:-1}" != "0" ]]; then
  "$VIRTUAL_PIV_BIN" --port "$port" --serial "$serial" --version "$version" \
    >"$run_dir/card.log" 2>&1 &
  card_pid=$!
  # The card answers when pcscd lists it as present in a reader.
  ok=""
  for _ in $(seq 1 150); do
    kill -0 "$card_pid" 2>/dev/null || { log "card exited: $(cat "$run_dir/card.log")"; break; }
    if opensc-tool --list-readers 2>/dev/null | grep -E '^[0-9]+ +[A-Za-z0-9]* +Yes' >/dev/null \
       && grep -q attached "$run_dir/card.log"; then
      ok=1; break
    fi
    sleep 0.1
  done
  if [[ -z "$ok" ]]; then
    log "the virtual card did not come up; logs in $run_dir"
    [[ -n "$card_pid" ]] && kill "$card_pid" 2>/dev/null || true
    [[ -n "$pcscd_pid" ]] && kill "$pcscd_pid" 2>/dev/null || true
    exit 1
  fi
  log "virtual PIV card serial $serial (firmware $version) is up (pid $card_pid)"
fi

echo "export VIRTUAL_PIV_BIN=$VIRTUAL_PIV_BIN"
echo "export VIRTUAL_PIV_PORT=$port"
echo "export VIRTUAL_PIV_SERIAL=$serial"
echo "export VIRTUAL_PIV_VERSION=$version"
echo "export VIRTUAL_PIV_RUN_DIR=$run_dir"
echo "export VIRTUAL_PIV_PCSCD_PID=$pcscd_pid"
echo "export VIRTUAL_PIV_CARD_PID=$card_pid"
