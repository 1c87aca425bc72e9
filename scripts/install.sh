#!/usr/bin/env bash
# Production install of slidr, the steps of docs/install.md: the slidr user, its directories, a
# virtual environment from requirements.lock plus the project's wheel, the config files and the
# systemd units. Idempotent (a second run upgrades the code and keeps edited config files).
#
#   sudo scripts/install.sh dist/slidr-VERSION-cp311-cp311-linux_x86_64.whl
#
# SLIDR_ROOT=DIR installs below DIR instead of / and leaves the machine alone (no user, no
# systemctl): scripts/check-install.sh uses it to follow the guide in a scratch directory.
# PYTHON picks the interpreter (default python3.11); PIP_ARGS are passed to pip (e.g. an index).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 dist/slidr-VERSION-*.whl" >&2; exit 2; }
wheel=$(readlink -f "$1")
[ -f "$wheel" ] || { echo "install.sh: error: $1: no such wheel (build it: make wheel)" >&2; exit 2; }
src=$(cd "$(dirname "$0")/.." && pwd)
root=${SLIDR_ROOT:-}
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || { echo "install.sh: error: $py not found (Python 3.11 is needed)" >&2; exit 2; }
step() { echo "[install] $*" >&2; }

opt=$root/opt/slidr
etc=$root/etc/slidr
units=$root/etc/systemd/system
state=$root/var/lib/slidr

if [ -z "$root" ]; then
  [ "$(id -u)" = 0 ] || { echo "install.sh: error: run as root (or set SLIDR_ROOT)" >&2; exit 2; }
  step "system user and group 'slidr'"
  getent group slidr >/dev/null || groupadd --system slidr
  id -u slidr >/dev/null 2>&1 || useradd --system --gid slidr --home-dir /var/lib/slidr \
    --no-create-home --shell /usr/sbin/nologin slidr
fi

step "directories: $opt $etc $state/{registry,data}"
install -d -m 0755 "$opt" "$etc" "$units"
install -d -m 0750 "$state" "$state/registry" "$state/data"
if [ -z "$root" ]; then
  # slidr owns the registry (the daily job publishes, the daemon rolls back); whoever delivers
  # the click logs writes data/ (group slidr reads it).
  chown slidr:slidr "$state" "$state/registry"
  chown root:slidr "$state/data" "$etc"
  chmod 0750 "$etc"
fi

step "virtual environment $opt/.venv from requirements.lock"
[ -x "$opt/.venv/bin/python" ] || "$py" -m venv "$opt/.venv"
# shellcheck disable=SC2086
"$opt/.venv/bin/python" -m pip install -q ${PIP_ARGS:-} -r "$src/requirements.lock"
step "slidr from $(basename "$wheel")"
# shellcheck disable=SC2086
"$opt/.venv/bin/python" -m pip install -q ${PIP_ARGS:-} --no-deps --force-reinstall "$wheel"
"$opt/.venv/bin/python" -m pip check >/dev/null || {
  echo "install.sh: error: the environment's dependencies conflict (pip check)" >&2; exit 1; }

step "docs in $opt/docs (the units' Documentation=)"
rm -rf "$opt/docs"
cp -r "$src/docs" "$opt/docs"

step "config in $etc (files already there are kept)"
for f in slidrd.toml daily.env guardrails.toml; do
  [ -e "$etc/$f" ] || install -m 0640 "$src/systemd/$f" "$etc/$f"
done
[ -z "$root" ] && chgrp slidr "$etc"/slidrd.toml "$etc"/daily.env "$etc"/guardrails.toml

step "systemd units in $units"
install -m 0644 "$src/systemd/slidrd.service" "$src/systemd/slidr-daily.service" \
  "$src/systemd/slidr-daily.timer" "$units/"

step "checking the config files"
"$opt/.venv/bin/slidr" check-config "$etc/slidrd.toml" "$etc/guardrails.toml"
"$opt/.venv/bin/slidr" --version

if [ -z "$root" ]; then
  step "enabling the units"
  systemctl daemon-reload
  systemctl enable slidr-daily.timer slidrd.service
  echo "[install] done. Next: docs/install.md, 'First model' (slidrd starts once the registry has one)." >&2
fi
