"""Call a msgpack-RPC server through a client that is not ours (docs/client.md: "a third-party
msgpack-RPC client must work unchanged").

Two third-party clients are supported; each lives in its own environment under
.venv-thirdparty/ at the repository root (it needs a `/.venv-thirdparty/` line in .gitignore;
nothing in slidr imports it):

* "python" (default): msgpack-rpc-python 0.4.1 from PyPI (the msgpack-rpc project's own
  Python client, on tornado 4.5 and msgpack-python 0.5.6). It must NOT go into the project
  venv: msgpack-python 0.5.6 installs a `msgpack` module that would replace msgpack 1.x.
      python3 -m venv .venv-thirdparty && .venv-thirdparty/bin/pip install -q msgpack-rpc-python==0.4.1
* "node": msgpack-rpc-lite 1.0.2 from npm (msgpack-lite based), driven by
  tests/third_party_client.js.
      npm install --prefix .venv-thirdparty/node --no-audit --no-fund msgpack-rpc-lite@1.0.2
  Note: msgpack-lite encodes every JavaScript integer above 2**32 (such as epoch-ms `ts`) as
  float64 unless it is wrapped in an Int64; the .js harness wraps them, as a careful JS ad
  host would have to.

Use from a test (each call runs the client in a subprocess over one fresh connection):

    import third_party_client as tp           # tests/ is on sys.path under pytest
    if not tp.available(): pytest.skip(tp.INSTALL)
    assert tp.call("127.0.0.1", port, "ping", []) is not None
    d = tp.call("127.0.0.1", port, "score", [click])
    r1, r2 = tp.calls("127.0.0.1", port, [("ping", []), ("score", [click])])

Server errors are raised as ThirdPartyError (its message contains the server's [code, msg]).
SLIDR_THIRD_PARTY_DIR overrides the environment directory; SLIDR_THIRD_PARTY_CLIENT=node
switches the default client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ENV_DIR = Path(os.environ.get("SLIDR_THIRD_PARTY_DIR", HERE.parent / ".venv-thirdparty"))
DEFAULT = os.environ.get("SLIDR_THIRD_PARTY_CLIENT", "python")
INSTALL_PYTHON = ("python3 -m venv .venv-thirdparty && "
                  ".venv-thirdparty/bin/pip install -q msgpack-rpc-python==0.4.1")
INSTALL_NODE = ("npm install --prefix .venv-thirdparty/node --no-audit --no-fund "
                "msgpack-rpc-lite@1.0.2")
INSTALL = INSTALL_NODE if DEFAULT == "node" else INSTALL_PYTHON


class ThirdPartyError(Exception):
    """The server answered an error, or the third-party client failed."""


_PY_DRIVER = r"""
import json, sys
import msgpackrpc
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
calls = json.load(sys.stdin)
client = msgpackrpc.Client(msgpackrpc.Address(host, port), timeout=timeout,
                           unpack_encoding="utf-8")
out = []
for method, params in calls:
    try:
        out.append({"result": client.call(method, *params)})
    except msgpackrpc.error.RPCError as e:
        out.append({"error": repr(e.args[0] if e.args else e)})
    except Exception as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
client.close()
print(json.dumps(out))
"""


def _python() -> Path:
    return ENV_DIR / "bin" / "python"


def _node_modules() -> Path:
    return ENV_DIR / "node" / "node_modules"


def available(which: str = DEFAULT) -> bool:
    """Is this third-party client installed (see the module docstring for the command)?"""
    if which == "python":
        if not _python().exists():
            return False
        r = subprocess.run([str(_python()), "-c", "import msgpackrpc"], capture_output=True)
        return r.returncode == 0
    if which == "node":
        return bool(shutil.which("node")) and (_node_modules() / "msgpack-rpc-lite").is_dir()
    raise ValueError(f"unknown third-party client {which!r} (python | node)")


def calls(host: str, port: int, requests: Sequence[tuple[str, Sequence[Any]]],
          which: str = DEFAULT, timeout: float = 10.0) -> list[Any]:
    """Make the requests in order over one connection; return their results. Raises
    ThirdPartyError for the first request the server answered with an error."""
    payload = json.dumps([[m, list(p)] for m, p in requests])
    if which == "python":
        cmd = [str(_python()), "-c", _PY_DRIVER, host, str(port), str(timeout)]
        env = None
    elif which == "node":
        cmd = ["node", str(HERE / "third_party_client.js"), host, str(port), str(timeout)]
        env = {**os.environ, "NODE_PATH": str(_node_modules())}
    else:
        raise ValueError(f"unknown third-party client {which!r} (python | node)")
    r = subprocess.run(cmd, input=payload, capture_output=True, text=True,
                       timeout=timeout + 20, env=env)
    if r.returncode != 0:
        raise ThirdPartyError(f"{which} client exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    answers = json.loads(r.stdout.strip().splitlines()[-1])
    results = []
    for (method, _), a in zip(requests, answers, strict=True):
        if "error" in a:
            raise ThirdPartyError(f"{method}: {a['error']}")
        results.append(a["result"])
    return results


def call(host: str, port: int, method: str, params: Sequence[Any], which: str = DEFAULT,
         timeout: float = 10.0) -> Any:
    """One request through the third-party client; the result, or ThirdPartyError."""
    return calls(host, port, [(method, params)], which, timeout)[0]
