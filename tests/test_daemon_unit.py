"""systemd/slidrd.service: the settings the daemon's behaviour depends on, and a syntax check."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from daemon_helpers import REPO

UNIT = REPO / "systemd" / "slidrd.service"


def test_unit_settings():
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=",
                 "KillSignal=SIGTERM", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "slidrd serve --config"):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    # Point ExecStart at a binary that exists here; everything else is checked as written.
    text = UNIT.read_text().replace("/opt/slidr/.venv/bin/slidrd", "/bin/true")
    unit = tmp_path / "slidrd.service"
    unit.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines()
                if "slidrd.service" in ln and "user" not in ln.lower()]
    assert not problems, "\n".join(problems)
