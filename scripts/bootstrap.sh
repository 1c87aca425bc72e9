#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: a redis-server binary, the venv, the build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if ! command -v redis-server >/dev/null 2>&1; then
  echo "[bootstrap] redis-server missing: installing Debian's redis-server package" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package may start a system service on 6379; we never use it (tests start their own).
fi

# Java 17+ for the Spark engine (`slidr daily --engine spark`, tests/test_spark*.py).
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major || echo 0)" -lt 17 ]; then
  echo "[bootstrap] Java 17 missing: installing Debian's openjdk-17-jre-headless package" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.slidr-deps
want=$(cat pyproject.toml setup.py requirements.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing dependencies (first run takes about a minute)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # torch pinned so the local CPU wheel is used (a loose pin pulls a multi-GB CUDA build).
  .venv/bin/python -m pip install -q "torch==2.13.0" "Cython==3.3.1" "numpy>=2.0" "setuptools>=69" wheel
  # Constrained by requirements.lock so the tests run against exactly what production installs.
  .venv/bin/python -m pip install -q --no-build-isolation -c requirements.lock -e ".[daemon,offline,spark,bench,dev]"
  echo "$want" > "$stamp"
fi
# A third-party msgpack-RPC client (not ours) for the wire-compatibility test. It pins an old
# msgpack, so it lives in its own venv.
if [ ! -x .venv-thirdparty/bin/python ] || ! .venv-thirdparty/bin/python -c "import msgpackrpc" 2>/dev/null; then
  echo "[bootstrap] installing the third-party msgpack-rpc-python client into .venv-thirdparty" >&2
  "$PY" -m venv .venv-thirdparty
  .venv-thirdparty/bin/python -m pip install -q "msgpack-rpc-python==0.4.1" || \
    echo "[bootstrap] warning: msgpack-rpc-python did not install; its test will fail" >&2
fi
# Always rebuild the extension in place so a stale .so never hides a kernel change.
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
