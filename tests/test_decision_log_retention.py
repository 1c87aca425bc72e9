"""Decision-log retention (size and age limits, oldest files first, the open file kept) and the
compact encoding's size against the map-per-record format."""

from __future__ import annotations

import os
import time

import msgpack
import numpy as np
from slidr.slidrd.decision_log import DecisionLog

from slidr.decision_file import list_runs, log_files, read_decisions
from slidr.featurespec import N_FEATURES


def _batch(n: int, seed: int):
    rng = np.random.default_rng(seed)
    clicks = [{"ts": 1_700_000_000 + i, "user": f"u{rng.integers(1e6)}",
               "session": f"s{rng.integers(1e6)}", "ip": f"10.0.{i % 256}.{seed % 256}",
               "device": "mobile", "logged_in": bool(i % 2), "id": f"c{seed}-{i}"}
              for i in range(n)]
    feats = rng.random((n, N_FEATURES), dtype=np.float32)
    decisions = [{"id": c["id"], "invalid": bool(i % 3 == 0), "score": float(feats[i, 0]),
                  "threshold": 0.5, "slice": "mobile/in", "model": "v1", "reason": "model"}
                 for i, c in enumerate(clicks)]
    return clicks, feats, decisions


def test_size_limit_holds_over_many_rotations(tmp_path):
    limit = 60_000
    log = DecisionLog(str(tmp_path), max_bytes=8_000, max_total_bytes=limit)
    written = 0
    for b in range(200):
        clicks, feats, decisions = _batch(8, b)
        log.submit(clicks, feats, decisions, "v1")
        written += len(decisions)
        if b % 20 == 0:
            time.sleep(0.02)  # let the writer rotate along the way
    log.close()
    files = log_files(tmp_path)
    total = sum(p.stat().st_size for p in files)
    assert log.deleted_files > 10 and total <= limit
    # The oldest went first: what is left is the newest, contiguous, and readable.
    seqs = [int(p.name.rsplit("-", 1)[1].split(".")[0]) for p in files]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[-1] == log._seq
    recs = list(read_decisions(tmp_path))
    assert recs[-1]["click"]["id"] == "c199-7" and len(recs) < written


def test_age_limit_deletes_old_files_of_any_run_at_start(tmp_path):
    old = DecisionLog(str(tmp_path), run_id="20200101T000000-1")
    old.submit(*_batch(5, 1), "v1")
    old.close()
    (f,) = log_files(tmp_path)
    past = time.time() - 3 * 3600
    os.utime(f, (past, past))
    new = DecisionLog(str(tmp_path), max_age_s=3600, run_id="20261203T000000-2")
    new.submit(*_batch(5, 2), "v1")
    new.close()
    assert not f.exists() and new.deleted_files == 1
    assert [r.run for r in list_runs(tmp_path)] == ["20261203T000000-2"]


def test_compact_records_read_back_exactly_and_are_smaller(tmp_path):
    clicks, feats, decisions = _batch(200, 7)
    log = DecisionLog(str(tmp_path))
    log.submit(clicks, feats, decisions, "v1")
    log.close()
    recs = list(read_decisions(tmp_path, features_as="array"))
    assert [r["click"] for r in recs] == clicks and [r["decision"] for r in recs] == decisions
    assert np.array_equal(np.stack([r["features"] for r in recs]), feats)  # bit for bit
    compact = sum(p.stat().st_size for p in log_files(tmp_path)) / len(clicks)
    maps = sum(len(msgpack.packb({"t": time.time(), "click": c, "decision": d, "model": "v1",
                                  "features": f.tolist()}))
               for c, d, f in zip(clicks, decisions, feats, strict=True)) / len(clicks)
    assert compact < 0.75 * maps, (compact, maps)
