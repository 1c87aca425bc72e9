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


def _boundaries(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, model) of every record of an undamaged decision file (the header has
    model "")."""
    import msgpack
    up = msgpack.Unpacker(raw=False, strict_map_key=False)
    up.feed(data)
    out, pos = [], 0
    for obj in up:
        end = up.tell()
        model = obj[1] if isinstance(obj, list) else str(obj.get("model", "")) \
            if isinstance(obj, dict) else ""
        out.append((pos, end, model))
        pos = end
    assert pos == len(data)
    return out


def test_bad_window_with_a_damaged_file(tmp_path, registry, traffic):  # noqa: F811
    """A corrupt file and a truncated one inside the bad window: each is reported by file and
    by the byte position where its readable records end; the records before the damage and
    those of every other file are still corrected, and only those."""
    from slidr.offline.replay_decisions import load_model, replay_decisions

    from slidr.decision_file import read_file
    logdir = write_log(tmp_path / "dlog", traffic)
    files = sorted(logdir.glob("decisions-*.msgpack"))
    bad_files = [p for p in files if any(r["model"] == "bad" for r in read_file(p))]
    assert len(bad_files) >= 3
    n_bad = {p: sum(r["model"] == "bad" for r in read_file(p)) for p in files}
    assert sum(n_bad.values()) == len(BAD)
    # Corrupt: 16 bytes that are no msgpack type, in the middle of the first bad file.
    hit, cut = bad_files[0], bad_files[1]
    data = hit.read_bytes()
    recs = _boundaries(data)
    mid = next(a + 1 for a, b, m in recs if m == "bad" and a + 1 < b and a >= len(data) // 3)
    hit.write_bytes(data[:mid] + b"\xc1" * 16 + data[mid:])
    hit_at = max(a for a, _, _ in recs if a < mid)  # the damaged record starts there
    lost = sum(m == "bad" for a, _, m in recs if a >= hit_at)
    # Truncated: the second bad file cut inside one of its bad records (a torn write).
    data = cut.read_bytes()
    recs = _boundaries(data)
    a, b = next((a, b) for a, b, m in recs if m == "bad" and a >= len(data) // 2)
    cut.write_bytes(data[:(a + b) // 2])
    lost += sum(m == "bad" for x, _, m in recs if x >= a)
    assert 0 < lost < len(BAD)

    out = tmp_path / "o.jsonl"
    s = replay_decisions(logdir, load_model(registry=registry.path), out, bad_window="bad")
    assert len(s.problems) == 2, s.problems
    corrupt = [p for p in s.problems if "corrupt" in p]
    torn = [p for p in s.problems if "truncated" in p]
    assert corrupt and corrupt[0].startswith(f"{hit}: corrupt at byte {hit_at} ("), s.problems
    assert torn and torn[0].startswith(f"{cut}: truncated at byte {a} of {(a + b) // 2}"), \
        s.problems
    # Everything readable was processed: the bad model's decisions before each damage and
    # in every other file, corrected through the current bundle like an undamaged log's.
    assert s.selected == len(BAD) - lost
    clicks, x, decisions, feats = traffic
    rows = {r["click_id"]: r for r in read_out(out)}
    assert len(rows) == s.selected
    inv2, _ = expected(traffic, -3.0)
    ids = {c["click_id"]: i for i, c in enumerate(clicks)}
    for cid, r in rows.items():
        i = ids[cid]
        assert i in BAD and r["original"]["model"] == "bad"
        if feats[i] is not None:
            assert r["invalid"] == inv2[i] and r["replayed_with"] == "v2"
    later = [p for p in files if p not in (hit, cut) and n_bad[p]]
    assert later and all(c["click_id"] in rows for p in later for c in
                         (r["click"] for r in read_file(p)) if ids[c["click_id"]] in BAD)
