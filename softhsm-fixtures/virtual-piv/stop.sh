#!/usr/bin/env bash
# Stops exactly the processes start.sh started (from the exported VIRTUAL_PIV_*_PID variables);
# a pcscd that start.sh reused is left alone.
set -uo pipefail
for pid in ${VIRTUAL_PIV_CARD_PID:-} ${VIRTUAL_PIV_PCSCD_PID:-}; do
  [[ "$pid" =~ ^[0-9]+$ ]] || continue
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
echo "unset VIRTUAL_PIV_CARD_PID VIRTUAL_PIV_PCSCD_PID"
