"""slidrd configuration validation, command line, and import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest
from daemon_helpers import REPO
from slidr.slidrd import config as C


def build(tmp_path, **kv):
    kv.setdefault("registry", str(tmp_path))
    return C.build(kv, {}, file_name="t.toml")


def test_defaults_and_overrides(tmp_path):
    cfg = C.build({"registry": str(tmp_path), "port": 1234, "deadline_ms": 3},
                  {"port": 999, "max_batch": None})
    assert cfg.port == 999 and cfg.deadline_ms == 3.0 and cfg.max_batch == 512


@pytest.mark.parametrize("kv,needle", [
    ({"prot": 1}, "unknown key 'prot'"),
    ({"max_batchsize": 1}, "did you mean"),
    ({"port": "80"}, "'port' must be an integer"),
    ({"port": True}, "'port' must be an integer"),
    ({"port": 70000}, "out of range"),
    ({"deadline_ms": 0}, "out of range"),
    ({"deadline_ms": "fast"}, "must be a number"),
    ({"max_batch": 0}, "out of range"),
    ({"decision_log_features": 1}, "true or false"),
    ({"backend": "cuda"}, "must be one of"),
    ({"redis": "localhost:6379"}, "redis:// "),
    ({"workers": 2}, "embedded store"),
    ({"workers": 2, "redis": "redis://127.0.0.1:1/0", "port": 0}, "fixed port"),
    ({"max_inflight_per_conn": 10, "max_inflight_total": 5}, "must not exceed"),
    ({"inline_store": "yes"}, "unknown key 'inline_store'"),
    ({"pipeline_depth": 0}, "out of range"),
])
def test_bad_values_are_named(tmp_path, kv, needle):
    with pytest.raises(C.ConfigError) as ei:
        build(tmp_path, **kv)
    assert needle.split(" ")[0] in str(ei.value) or needle in str(ei.value), str(ei.value)


def test_registry_required_and_must_exist(tmp_path):
    with pytest.raises(C.ConfigError, match="registry"):
        C.build({}, {})
    with pytest.raises(C.ConfigError, match="not found"):
        C.build({"registry": str(tmp_path / "nope")}, {})


def test_toml_file_and_cli(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text(f'[slidrd]\nregistry = "{tmp_path}"\nport = 7000\nmax_wait_us = 250\n')
    out = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", "serve", "--config", str(f),
                          "--port", "7001", "--check-config"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"port": 7001' in out.stdout and '"max_wait_us": 250' in out.stdout
    f.write_text(f'registry = "{tmp_path}"\nmax_batch = -3\n')
    out = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", "serve", "--config", str(f)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "config error" in out.stderr and "max_batch" in out.stderr and "Traceback" not in out.stderr
    f.write_text("registry = [unclosed\n")
    out = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", "serve", "--config", str(f)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not valid TOML" in out.stderr


def test_workers_with_embedded_store_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", "serve", "--registry",
                          str(tmp_path), "--workers", "2"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "embedded store" in out.stderr and "--redis" in out.stderr


def test_empty_registry_refused_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", "serve", "--registry",
                          str(tmp_path), "--port", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no current bundle" in out.stderr, out.stderr


def test_import_does_not_pull_torch_or_cvxpy():
    code = ("import sys; import slidr.slidrd.main, slidr.slidrd.server, slidr.slidrd.batcher, "
            "slidr.slidrd.model, slidr.slidrd.cli_admin, slidr.errors; "
            "from slidr.engines import select_scorer; "
            "bad = [m for m in ('torch', 'cvxpy', 'matplotlib', 'tensorrt', 'pycuda') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_json_log_lines():
    """`slidrd serve --json`: one JSON object per log record, for log shippers."""
    import json
    import logging

    from slidr.slidrd.main import _JsonLines
    rec = logging.LogRecord("slidrd", logging.WARNING, __file__, 1, "worker %d slow", (3,), None)
    d = json.loads(_JsonLines(worker=2).format(rec))
    assert d["level"] == "warning" and d["message"] == "worker 3 slow" and d["worker"] == 2


def test_every_option_is_a_flag_and_a_key(tmp_path):
    """One declaration: each Config field is a TOML key and a `slidrd serve` flag."""
    from slidr.slidrd.main import build_parser
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {a.dest: a for a in serve._actions if a.option_strings}
    for name, opt in C.OPTIONS.items():
        assert name in flags and flags[name].option_strings == [opt.flag], name
    args = build_parser().parse_args(["serve", "--registry", str(tmp_path),
                                      "--decision-log-features", "false", "--deadline-ms", "2"])
    from slidr.slidrd.main import load_config
    cfg = load_config(args)
    assert cfg.decision_log_features is False and cfg.deadline_ms == 2.0 and cfg.port == 7411
