"""The operator files shipped in deploy/: the Prometheus alert rules and the Grafana dashboard
load, have the shape their tools expect, and name only metrics slidrd exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from slidr.slidrd.metrics import Metrics
from slidr.slidrd.monitor import Monitor, Reference

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "slidr-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "slidr-dashboard.json"
METRIC = re.compile(r"\b((?:slidr|process)_[a-z0-9_]+)")


def load_yaml(path: Path) -> object:
    """The rules file is YAML written in its JSON subset (loadable without a YAML library);
    PyYAML, when installed, must read it the same."""
    data = json.loads(path.read_text())
    try:
        import yaml
    except ImportError:
        return data
    assert yaml.safe_load(path.read_text()) == data
    return data


def exported() -> set[str]:
    """Every series name slidrd's /metrics exposes (histograms with _bucket/_sum/_count), with
    a monitor that has closed a window so its per-slice gauges exist."""
    m = Metrics()
    clock = [0.0]
    mon = Monitor(m, window_clicks=100, window_s=0.0, clock=lambda: clock[0])
    m.monitor = mon
    mon.on_swap("v1", Reference("calibration", 0.05, {"app/in": 0.05}), old_rejected=False)
    m.decisions["app/in"] += 200
    m.invalid["app/in"] += 10
    m.latency["total"].observe_many(np.array([0.001]))
    clock[0] = 1.0
    mon.tick()
    names = set()
    for line in m.render().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_alert_rules_load_and_name_exported_metrics() -> None:
    rules = load_yaml(RULES)
    assert isinstance(rules, dict)
    groups = rules["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    # What the runbook promises an operator is paged or ticketed for.
    assert {"SlidrFailOpenRateHigh", "SlidrIvrOutOfBand", "SlidrLatencyP999OverContract",
            "SlidrReloadFailed", "SlidrMonitorRolledBack"} <= set(alerts)
    assert "cause" in alerts["SlidrFailOpenRateHigh"]["expr"]  # by cause
    have = exported()
    for name, r in alerts.items():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert r["labels"]["severity"] in ("page", "ticket")
        assert r["annotations"]["runbook"].startswith("docs/runbook.md#")
        used = set(METRIC.findall(r["expr"]))
        assert used, name
        missing = used - have
        assert not missing, f"{name} names metrics slidrd does not export: {missing}"


def test_runbook_anchors_exist() -> None:
    text = (DEPLOY.parent / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.M)}
    rules = load_yaml(RULES)
    assert isinstance(rules, dict)
    for g in rules["groups"]:
        for r in g["rules"]:
            anchor = r["annotations"]["runbook"].split("#", 1)[1]
            assert anchor in anchors, (r["alert"], anchor, sorted(anchors))


def test_dashboard_loads_and_names_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for want in ("latency per stage", "ivr per slice", "fail-open by cause", "batch size",
                 "loop lag", "model version"):
        assert want in titles, want
    have = exported()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    for e in exprs:
        used = set(METRIC.findall(e))
        assert used, e
        assert not used - have, f"{e}: {used - have} not exported by slidrd"
