"""`slidr replay --bad-window V`: only the decisions V made (its fail-open answers included),
re-scored through the restored bundle, flips per slice and direction; an interrupted replay
resumes where it stopped and gives the same output as one that was not interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_replay_tool import expected, read_out, registry, traffic  # noqa: F401 (fixtures)

from slidr.cli import main as slidr_main

BAD = range(200, 420)  # the records the bad model decided


def write_log(d: Path, traffic, batch: int = 32) -> Path:  # noqa: F811
    """The daemon's writer; records of BAD carry model "bad", the others "v1"."""
    from slidr.slidrd.decision_log import DecisionLog
    clicks, x, decisions, feats = traffic
    log = DecisionLog(str(d), max_bytes=20_000)
    for s in range(0, len(clicks), batch):
        e = min(s + batch, len(clicks))
        for model in ("v1", "bad"):
            for with_f in (True, False):
                idx = [i for i in range(s, e) if (feats[i] is not None) == with_f
                       and (i in BAD) == (model == "bad")]
                if not idx:
                    continue
                f = np.stack([x[i] for i in idx]) if with_f else None
                log.submit([clicks[i] for i in idx], f,
                           [{**decisions[i], "model": model} for i in idx], model)
    log.close()
    return d


def test_bad_window_selects_its_decisions(tmp_path, registry, traffic, capsys):  # noqa: F811
    logdir = write_log(tmp_path / "dlog", traffic)
    out = tmp_path / "corrected.jsonl"
    assert slidr_main(["replay", "--decisions", str(logdir), "--registry", str(registry.path),
                       "--bad-window", "bad", "--out", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    clicks, x, decisions, feats = traffic
    rows = read_out(out)
    rows.sort(key=lambda r: int(r["click_id"][1:]))  # fail-open records follow their batch
    assert [r["click_id"] for r in rows] == [clicks[i]["click_id"] for i in BAD]
    assert s["selected"] == len(BAD) and s["read"] == len(clicks) and s["bad_window"] == "bad"
    fail_open = [i for i in BAD if feats[i] is None]
    assert s["skipped"] == len(fail_open) > 0  # its fail-open answers are in the window
    assert {r["original"]["model"] for r in rows} == {"bad"}
    inv2, _ = expected(traffic, -3.0)  # v2, the registry's current bundle
    for i, r in zip(BAD, rows, strict=True):
        if feats[i] is not None:
            assert r["invalid"] == inv2[i] and r["replayed_with"] == "v2"
    per = s["by_slice"]
    assert sum(p["newly_invalid"] for p in per.values()) == s["newly_invalid"] > 0
    assert sum(p["newly_valid"] for p in per.values()) == s["newly_valid"]
    assert sum(p["changed"] for p in per.values()) == s["changed"]
    # Text summary: direction per slice.
    assert slidr_main(["replay", "--decisions", str(logdir), "--registry", str(registry.path),
                       "--bad-window", "bad", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bad window of bad: 220 of its decisions selected" in text and "now invalid" in text
    # Replaying the bad model through itself is refused.
    assert slidr_main(["replay", "--decisions", str(logdir), "--registry", str(registry.path),
                       "--model-version", "v2", "--bad-window", "v2", "--out", str(out)]) == 2


@pytest.mark.parametrize("recompute", [False, True])
def test_interrupted_replay_resumes(tmp_path, registry, traffic, recompute):  # noqa: F811
    from slidr.offline.replay_decisions import load_model, replay_decisions
    logdir = write_log(tmp_path / "dlog", traffic)
    model = load_model(registry=registry.path)
    whole = tmp_path / "whole.jsonl"
    s_whole = replay_decisions(logdir, model, whole, chunk=64, bad_window="bad",
                               recompute_features=recompute)
    out = tmp_path / "resumed.jsonl"
    s1 = replay_decisions(logdir, model, out, chunk=64, bad_window="bad",
                          recompute_features=recompute, stop_after=300)
    assert not out.exists()
    partial = out.with_name(out.name + ".partial")
    state = json.loads(out.with_name(out.name + ".resume.json").read_text())
    assert state["records"] == s1.read == 320 and partial.stat().st_size == state["out_bytes"]
    with open(partial, "ab") as f:  # a torn write after the last checkpoint
        f.write(b'{"click_id": "torn')
    s2 = replay_decisions(logdir, model, out, chunk=64, bad_window="bad",
                          recompute_features=recompute, resume=True)
    assert s2.resumed_at == 320
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not out.with_name(out.name + ".resume.json").exists()
    for k in ("read", "selected", "replayed", "skipped", "changed", "newly_invalid",
              "newly_valid", "invalid_before", "invalid_after", "by_slice"):
        assert getattr(s2, k) == getattr(s_whole, k), k
    # Without --resume it starts over (and a stale state for other arguments is ignored).
    s3 = replay_decisions(logdir, model, out, chunk=64, resume=True)
    assert s3.resumed_at == 0 and s3.selected == len(traffic[0])


def test_bad_window_with_a_damaged_file(tmp_path, registry, traffic):  # noqa: F811
    """A corrupt file inside the bad window is reported by file and byte position; the
    records of every other file (and those before the damage) are still corrected."""
    from slidr.offline.replay_decisions import load_model, replay_decisions

    from slidr.decision_file import read_file
    logdir = write_log(tmp_path / "dlog", traffic)
    files = sorted(logdir.glob("decisions-*.msgpack"))
    bad_files = [p for p in files if any(r["model"] == "bad" for r in read_file(p))]
    assert len(bad_files) >= 2
    hit = bad_files[0]
    data = hit.read_bytes()
    hit.write_bytes(data[: len(data) // 2] + b"\xc1" * 16 + data[len(data) // 2:])
    s = replay_decisions(logdir, load_model(registry=registry.path), tmp_path / "o.jsonl",
                         bad_window="bad")
    assert len(s.problems) == 1 and str(hit) in s.problems[0]
    assert "corrupt at byte" in s.problems[0]
    assert 0 < s.selected < len(BAD)
