"""The production install (docs/install.md) as far as it can be checked in seconds: the lock
file pins what the tests ran against, the config templates are valid, and the systemd units
pass `systemd-analyze verify` at their installed paths. scripts/check-install.sh follows the
whole guide from scratch (a fresh venv from the lock file; minutes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PATHS = ("/opt/slidr", "/etc/slidr", "/var/lib/slidr", "/run/slidrd", "/var/log/slidrd")


def test_lock_file_is_current():
    """requirements.lock (docs/install.md) pins exactly what this environment runs."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    assert (REPO / "requirements.lock").read_text() == lock.render(), \
        "requirements.lock is stale: run `make lock`"


def test_install_templates_are_valid_configs(capsys):
    from slidr.cli import main
    files = [str(REPO / "systemd" / f) for f in ("slidrd.toml", "guardrails.toml")]
    assert main(["check-config", *files]) == 0, capsys.readouterr().err
    env = (REPO / "systemd" / "daily.env").read_text()
    flags = next(ln.split("=", 1)[1] for ln in env.splitlines()
                 if ln.startswith("SLIDR_DAILY_FLAGS="))
    flags = flags.replace("/etc/slidr/guardrails.toml", files[1])
    assert main(["daily", "--clicks", "c.parquet", "--registry", "r", *flags.split(),
                 "--check-config"]) == 0, capsys.readouterr().err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify_at_installed_paths(tmp_path):
    """The units as scripts/install.sh places them, their paths moved under a scratch root
    (executables standing in for the installed venv's), pass `systemd-analyze verify`."""
    root = tmp_path / "root"
    for exe in ("slidr", "slidrd"):
        p = root / "opt/slidr/.venv/bin" / exe
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    (root / "etc/slidr").mkdir(parents=True)
    (root / "etc/slidr/daily.env").write_text((REPO / "systemd/daily.env").read_text())
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in ("slidrd.service", "slidr-daily.service", "slidr-daily.timer"):
        text = (REPO / "systemd" / name).read_text()
        for p in PATHS:
            text = text.replace(p, f"{root}{p}")
        (units / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "slidrd.service", "slidr-daily.service",
                        "slidr-daily.timer"], cwd=units, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # And without the executables it would have failed: the check has teeth.
    (root / "opt/slidr/.venv/bin/slidrd").unlink()
    r = subprocess.run(["systemd-analyze", "verify", "slidrd.service"], cwd=units,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "slidrd" in r.stderr


def test_install_script_is_valid_shell():
    for f in ("install.sh", "check-install.sh", "bootstrap.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / f)], check=True, timeout=30)


@pytest.mark.slow
def test_wheel_builds_without_packaging_warnings(tmp_path):
    """`make wheel` (docs/install.md): setuptools has nothing to warn about (no package left
    out of the packages configuration), and the wheel holds every subpackage and the units."""
    import zipfile
    r = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    noise = [ln for ln in r.stderr.splitlines() if "absent from the packages" in ln
             or "SetuptoolsDeprecationWarning" in ln or "_DeprecatedInstaller" in ln]
    assert not noise, "\n".join(noise)
    (wheel,) = tmp_path.glob("slidr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("slidr/cli.py", "slidr/slidrd/main.py", "slidr/offline/daily.py",
                 "slidr/bench/cli.py", "slidr/store_redis.lua",
                 "slidr/bench/scenarios/sweep-redis.toml"):
        assert must in names, must
