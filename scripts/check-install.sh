#!/usr/bin/env bash
# Follows docs/install.md from scratch in a scratch directory, without touching the machine:
#   1. builds the wheel (make wheel),
#   2. runs scripts/install.sh with SLIDR_ROOT=<scratch> (a fresh venv from requirements.lock),
#   3. checks the installed units with `systemd-analyze verify`, their paths (/opt/slidr,
#      /etc/slidr, /var/lib/slidr, /run/slidrd, /var/log/slidrd) pointed into the scratch root,
#   4. runs the installed programs as the units would: `slidr daily` (with the installed
#      daily.env flags, on a small simulated log, guardrails loosened for so little data) publishes
#      a first model, `slidrd serve --config` starts on it, `slidr admin stats` answers.
# Exit 0 when every step passed. Takes a few minutes (most of it installing torch).
#   scripts/check-install.sh [SCRATCH_DIR]     (default: a new temporary directory, removed)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-$(mktemp -d /tmp/slidr-install-check.XXXXXX)}
keep=${1:+1}
root=$scratch/root
mkdir -p "$scratch"
t0=$(date +%s)
say() { echo "[check-install +$(( $(date +%s) - t0 ))s] $*" >&2; }
cleanup() {
  [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" 2>/dev/null || true
  [ -z "$keep" ] && rm -rf "$scratch" || true
}
trap cleanup EXIT

say "1. wheel"
rm -rf "$src"/build/bdist.*  # a build interrupted earlier leaves a half-made wheel tree there
"$src/.venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$scratch/dist" "$src" \
  2> "$scratch/wheel.log" || { cat "$scratch/wheel.log" >&2; exit 1; }
if grep -q "absent from the packages" "$scratch/wheel.log"; then
  say "FAIL: setuptools still warns about the packages configuration"; exit 1
fi
wheel=$(ls "$scratch"/dist/slidr-*.whl)

say "2. install.sh into $root (fresh venv from requirements.lock)"
SLIDR_ROOT=$root "$src/scripts/install.sh" "$wheel"
bin=$root/opt/slidr/.venv/bin

say "3. systemd-analyze verify with the installed paths"
for f in "$root"/etc/systemd/system/* "$root"/etc/slidr/*; do
  sed -i -e "s#/opt/slidr#$root/opt/slidr#g" -e "s#/etc/slidr#$root/etc/slidr#g" \
    -e "s#/var/lib/slidr#$root/var/lib/slidr#g" -e "s#/run/slidrd#$root/run/slidrd#g" \
    -e "s#/var/log/slidrd#$root/var/log/slidrd#g" "$f"
done
if command -v systemd-analyze >/dev/null; then
  (cd "$root/etc/systemd/system" && systemd-analyze verify slidrd.service slidr-daily.service \
    slidr-daily.timer)
  say "   units verified: slidrd.service slidr-daily.service slidr-daily.timer"
else
  say "   systemd-analyze not installed here: units NOT verified"; exit 1
fi

say "4. first model: slidr daily (installed venv, daily.env flags)"
mkdir -p "$root/run/slidrd" "$root/var/log/slidrd"
"$bin/slidr" simulate --out "$root/var/lib/slidr/data/sim" --days 4 --clicks-per-day 12000 \
  --seed 11 --quiet
mv "$root/var/lib/slidr/data/sim/"*.parquet "$root/var/lib/slidr/data/"
# So little data makes a weak model; loosen the model guardrails as the tests do.
cat >> "$root/etc/slidr/guardrails.toml" <<'EOF'
fpr_tolerance = 20.0
ivr_band = 5.0
slice_ivr_band = 50.0
max_ivr = 0.9
min_auc_margin = 0.0
min_auc_z = 0.0
min_auc_heuristic = 0.0
EOF
sed -i -e 's/^min_slice_purchases = .*/min_slice_purchases = 10/' \
  -e '/^fpr_tolerance = 0.5/d' -e '/^ivr_band = 0.5/d' "$root/etc/slidr/guardrails.toml"
# EnvironmentFile= syntax (KEY=VALUE, the value may hold spaces), read as systemd reads it.
while IFS='=' read -r key value; do
  case $key in ''|'#'*) continue ;; esac
  export "$key=$value"
done < "$root/etc/slidr/daily.env"
# shellcheck disable=SC2086
"$bin/slidr" daily --clicks "$SLIDR_CLICKS" --customers "$SLIDR_CUSTOMERS" \
  --registry "$root/var/lib/slidr/registry" $SLIDR_DAILY_FLAGS --fpr-budget 0.05 \
  --min-purchasing 30 --epochs 2 > "$scratch/daily.out"
say "   $(head -1 "$scratch/daily.out")"

say "5. slidrd serve --config (as the unit starts it), then slidr admin stats"
"$bin/slidrd" serve --config "$root/etc/slidr/slidrd.toml" --port 0 --metrics-port -1 \
  2> "$scratch/slidrd.log" &
daemon_pid=$!
sock=$root/run/slidrd/admin.sock
for _ in $(seq 1 120); do [ -S "$sock" ] && break; sleep 0.5; done
"$bin/slidr" admin stats --admin-socket "$sock"
kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=
say "OK: the install guide works from scratch ($(du -sh "$root/opt/slidr/.venv" | cut -f1) venv)"
