"""A third-party msgpack-RPC client must work unchanged (docs/client.md) — against the real slidrd.

The client is msgpack-rpc-python 0.4.1 (the msgpack-rpc project's own Python client), in its
own venv that scripts/bootstrap.sh installs. `make test` sets SLIDR_REQUIRE_THIRD_PARTY=1 so a
missing client fails instead of silently skipping.
"""

from __future__ import annotations

import os

import pytest
import third_party_client as tp
from daemon_helpers import Daemon, check_decision, click, make_registry


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    if not tp.available("python"):
        if os.environ.get("SLIDR_REQUIRE_THIRD_PARTY") == "1":
            pytest.fail(f"third-party client missing: {tp.INSTALL_PYTHON}")
        pytest.skip(f"third-party client not installed: {tp.INSTALL_PYTHON}")
    reg = make_registry(tmp_path_factory.mktemp("thirdparty"))
    d = Daemon(reg, "--deadline-ms", "500")
    d.wait_ready()
    yield d
    assert d.stop() == 0, d.log()


def test_ping_and_score_through_a_third_party_client(daemon):
    assert tp.call("127.0.0.1", daemon.port, "ping", [], "python") == "pong"
    d = tp.call("127.0.0.1", daemon.port, "score", [click(1)], "python")
    check_decision(d, "c1")
    assert d["reason"] == "model" and d["model"] == "v1"


def test_score_many_and_error_through_a_third_party_client(daemon):
    ping, ds = tp.calls("127.0.0.1", daemon.port,
                        [("ping", []), ("score_many", [[click(2), click(3)]])], "python")
    assert ping == "pong"
    for d, cid in zip(ds, ("c2", "c3"), strict=True):
        check_decision(d, cid)
    with pytest.raises(tp.ThirdPartyError) as ei:
        tp.call("127.0.0.1", daemon.port, "score", [click(4, device="toaster")], "python")
    assert "device" in str(ei.value)
