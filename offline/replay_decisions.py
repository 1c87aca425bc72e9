"""Delayed decisions: replay traffic through a chosen bundle (docs/daemon.md, "Decision log").

Two sources:

* the daemon's decision log (`--decisions`: a directory of `decisions-*.msgpack` files as
  slidrd/decision_log.py writes them, or JSON-lines / msgpack files of the same records).
  A record is `{"click", "decision": {...}, "features", "model", "t"}` (the daemon's shape) or
  the flat `{"click", "features", "score", "threshold", "slice", "model", "reason",
  "invalid"}`. By default the logged features are re-scored, so the new decision uses exactly
  what the daemon knew at the time; records logged without features (the daemon failed open
  before computing them) are passed through as skipped unless --recompute-features.
* a click log (`--log`: Parquet/CSV in the click contract), whose features are always
  recomputed through the feature kernel, as training does.

`--recompute-features` replays every click of the source, in order, through a fresh embedded
feature kernel (the same code as serving), so records without logged features get them too.
The counters then start from an empty store at the first record, as an offline replay does.

Each output row is the decision contract plus `replayed_with` (the bundle version), `changed`
(invalid differs from the original decision; null when there was none, as for a click log)
and `original` (the logged decision's invalid / score / threshold / model / reason). The
output (JSON lines, or msgpack when it ends in .msgpack) is written beside its final name as
`OUT.partial` and renamed when complete; the summary reports how many decisions changed
(newly invalid and newly valid, overall and per slice) and the IVR before and after.

A bad model's window (`--bad-window VERSION`, docs/runbook.md): only the records that version
decided, its fail-open answers included (a daemon's fail-open answer names the model it was
serving), re-scored through the restored bundle (the registry's current one by default).

Resumable: after every chunk the output is synced and `OUT.resume.json` records how many
records were read, the output's length and the summary so far; `--resume` after an
interruption truncates `OUT.partial` to that length and goes on from the next record (with
--recompute-features the records before it are fed to the kernel again, unscored). Memory is
bounded by the chunk size whatever the size of the log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from slidr import decision_file
from slidr.contract import (
    DEVICE_CODE,
    ClickBatch,
    batch_from_table,
    iter_log_chunks,
    slice_name,
    validate_click,
)
from slidr.featurespec import N_FEATURES

CHUNK = 8192


# ---------------------------------------------------------------- the bundle

@dataclass
class ReplayModel:
    """A verified bundle's scorer and thresholds, as the replay needs them."""

    version: str
    scorer: Any
    thresholds: np.ndarray  # float64 indexed by device_code * 2 + logged_in
    path: Path

    def decide(self, x: np.ndarray, dev: np.ndarray, li: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores, thresholds and invalid flags, the daemon's rule: invalid = score > thr."""
        scores = self.scorer.infer(np.ascontiguousarray(x, dtype=np.float32))
        thr = self.thresholds[dev.astype(np.intp) * 2 + li.astype(np.intp)]
        return scores, thr, scores > thr


def load_model(bundle: str | Path | None = None, registry: str | Path | None = None,
               version: str | None = None, backend: str = "onnxruntime",
               verify: bool = True) -> ReplayModel:
    """Open a bundle directory, or a registry's `version` ("current", "previous" or a name;
    default current). The bundle is verified (checksums, feature spec) before use."""
    from slidr.registry import Bundle, BundleError, Registry

    if (bundle is None) == (registry is None):
        raise ValueError("give exactly one of a bundle directory or a registry")
    b: Bundle | None
    try:
        if bundle is not None:
            b = Bundle(bundle)
        else:
            assert registry is not None
            reg = Registry(registry)
            want = version or "current"
            if want == "current":
                b = reg.current()
            elif want == "previous":
                b = reg.previous()
            else:
                b = reg.bundle(want)
            if b is None:
                raise ValueError(f"registry {registry} has no {want} bundle")
        if verify:
            b.verify()
    except BundleError as e:
        raise RuntimeError(f"bundle cannot be used for replay: {e}") from None
    from slidr.slidrd.model import threshold_table
    table, _method = threshold_table(b.thresholds)  # the daemon's table, indexed the same way
    from slidr.engines import select_scorer
    return ReplayModel(b.version, select_scorer(b.model_path, backend=backend), table, b.path)


# ---------------------------------------------------------------- reading decision logs

def _decision_files(src: Path, include_partial: bool = False, run: str | None = None
                    ) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"decision log not found: {src}")
    files = sorted(p for p in src.iterdir() if p.is_file() and (
        p.name.endswith(".msgpack") or p.suffix in (".jsonl", ".json", ".ndjson")))
    if include_partial:
        # A daemon that was killed leaves its open file as .part; a torn last record is
        # simply not yielded by the msgpack reader.
        files += sorted(p for p in src.iterdir() if p.name.endswith(".msgpack.part"))
    if run is not None:
        files = [p for p in files if decision_file.run_of(p) == run]
        if not files:
            known = ", ".join(r.run for r in decision_file.list_runs(src)) or "none"
            raise FileNotFoundError(f"no decision files of run {run} in {src} (runs: {known})")
    if not files:
        raise FileNotFoundError(f"no decision files (*.msgpack, *.jsonl) in {src}")
    return files


def read_records(src: str | Path, include_partial: bool = False, bar: Any = None,
                 run: str | None = None, problems: list[str] | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Every record of a decision log (directory or file), in file-name then write order.
    msgpack: slidr/decision_file.py's format (a damaged file is reported by file and byte
    position and the others are still read); JSON lines: one object per line.
    `bar`: a slidr.progress.Progress counting the bytes read."""
    for p in _decision_files(Path(src), include_partial, run):
        if p.name.endswith((".msgpack", ".msgpack.part")):
            yield from decision_file.read_file(p, bar=bar, problems=problems)
        else:
            with open(p) as f:
                for lineno, line in enumerate(f, 1):
                    if bar is not None:
                        bar.update(len(line))
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{p}:{lineno}: not a JSON line: {e}") from None


@dataclass
class Record:
    click: dict[str, Any]
    features: list[float] | None
    original: dict[str, Any]  # invalid, score, threshold, slice, model, reason


def normalise(rec: Any, where: str) -> Record:
    """Either record shape -> Record; ValueError naming the record if it has no click."""
    if not isinstance(rec, Mapping) or not isinstance(rec.get("click"), Mapping):
        raise ValueError(f"{where}: decision record has no 'click' map")
    d = rec.get("decision")
    d = d if isinstance(d, Mapping) else rec
    orig = {k: d.get(k) for k in ("invalid", "score", "threshold", "slice", "model", "reason")}
    if orig["model"] is None:
        orig["model"] = rec.get("model")
    feats = rec.get("features")
    if isinstance(feats, bytes | bytearray):  # raw little-endian float32 row
        if len(feats) != 4 * N_FEATURES:
            raise ValueError(f"{where}: features are {len(feats)} bytes, expected "
                             f"{4 * N_FEATURES} ({N_FEATURES} float32)")
        feats = np.frombuffer(feats, "<f4").tolist()
    if feats is not None and len(feats) != N_FEATURES:
        raise ValueError(f"{where}: features have {len(feats)} values, expected {N_FEATURES}")
    return Record(dict(rec["click"]), feats, orig)


# ---------------------------------------------------------------- the replay

@dataclass
class Summary:
    model: str
    source: str
    features: str  # "logged" | "recomputed"
    read: int = 0
    replayed: int = 0
    skipped: int = 0  # no features to score
    changed: int = 0
    newly_invalid: int = 0
    newly_valid: int = 0
    invalid_before: int = 0  # among replayed records with an original decision
    with_original: int = 0
    invalid_after: int = 0
    original_fail_open: int = 0
    by_slice: dict[str, dict[str, int]] = field(default_factory=dict)
    out: str = ""
    run: str | None = None
    problems: list[str] = field(default_factory=list)  # damaged files, by file and position
    bad_window: str | None = None  # the version whose decisions were selected
    selected: int = 0  # records written (all of them without a selection)
    resumed_at: int = 0  # records read before a --resume picked up

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ivr_before"] = (self.invalid_before / self.with_original) if self.with_original else None
        d["ivr_after"] = (self.invalid_after / self.replayed) if self.replayed else None
        return d


class _Writer:
    """Rows to a binary file: msgpack maps, or JSON lines (UTF-8)."""

    def __init__(self, f: IO[bytes], msgpack_out: bool) -> None:
        self.f = f
        if msgpack_out:
            import msgpack
            self._pack = msgpack.Packer(use_bin_type=True).pack
        else:
            self._pack = None

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        if self._pack is not None:
            self.f.write(b"".join(self._pack(r) for r in rows))
        else:
            self.f.write("".join(json.dumps(r, separators=(",", ":")) + "\n"
                                 for r in rows).encode())


def _slice_codes(clicks: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    dev = np.fromiter((DEVICE_CODE[c["device"]] for c in clicks), np.uint8, len(clicks))
    li = np.fromiter((bool(c["logged_in"]) for c in clicks), np.uint8, len(clicks))
    return dev, li


def _emit(model: ReplayModel, s: Summary, w: _Writer, recs: list[Record], x: np.ndarray,
          dev: np.ndarray, li: np.ndarray) -> None:
    """Score one chunk (x holds NaN rows for records that cannot be scored) and write it."""
    n = len(recs)
    ok = ~np.isnan(x).any(axis=1)
    scores = np.full(n, np.nan)
    thr = model.thresholds[dev.astype(np.intp) * 2 + li.astype(np.intp)]
    inv = np.zeros(n, bool)
    if ok.any():
        sc, _, iv = model.decide(x[ok], dev[ok], li[ok])
        scores[ok], inv[ok] = sc, iv
    rows = []
    for i, r in enumerate(recs):
        sl = slice_name(int(dev[i]), int(li[i]))
        o = r.original
        if str(o.get("reason") or "").startswith("fail_open"):
            s.original_fail_open += 1
        per = s.by_slice.setdefault(sl, {"replayed": 0, "with_original": 0,
                                         "invalid_before": 0, "invalid_after": 0,
                                         "changed": 0, "newly_invalid": 0, "newly_valid": 0})
        if not ok[i]:
            s.skipped += 1
            rows.append({"click_id": r.click.get("click_id"), "invalid": bool(o.get("invalid")),
                         "score": o.get("score"), "threshold": o.get("threshold"), "slice": sl,
                         "model": o.get("model"), "reason": "replay_skipped:no_features",
                         "replayed_with": model.version, "changed": False, "original": o})
            continue
        now = bool(inv[i])
        had = o.get("invalid")
        changed = None if had is None else (now != bool(had))
        s.replayed += 1
        per["replayed"] += 1
        s.invalid_after += now
        per["invalid_after"] += now
        if had is not None:
            s.with_original += 1
            per["with_original"] += 1
            s.invalid_before += bool(had)
            per["invalid_before"] += bool(had)
            if changed:
                s.changed += 1
                per["changed"] += 1
                s.newly_invalid += now
                s.newly_valid += not now
                per["newly_invalid"] += now
                per["newly_valid"] += not now
        rows.append({"click_id": r.click.get("click_id"), "invalid": now,
                     "score": float(scores[i]), "threshold": float(thr[i]), "slice": sl,
                     "model": model.version, "reason": "model", "replayed_with": model.version,
                     "changed": changed, "original": o})
    w.write(rows)


def _resume_key(src: str | Path, model: ReplayModel, out: str | Path, recompute: bool,
                only_fail_open: bool, include_partial: bool, run: str | None,
                bad_window: str | None) -> dict[str, Any]:
    files = _decision_files(Path(src), include_partial, run)
    return {"src": str(Path(src).resolve()), "model": model.version, "out": str(out),
            "recompute": recompute, "only_fail_open": only_fail_open, "run": run,
            "bad_window": bad_window,
            "files": [[p.name, p.stat().st_size] for p in files]}


def _load_resume(state_path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        st = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    return st if isinstance(st, dict) and st.get("key") == key else None


def replay_decisions(src: str | Path, model: ReplayModel, out: str | Path,
                     recompute_features: bool = False, only_fail_open: bool = False,
                     chunk: int = CHUNK, include_partial: bool = False,
                     run: str | None = None, bad_window: str | None = None,
                     resume: bool = False, stop_after: int | None = None) -> Summary:
    """Re-decide the records of a decision log (one daemon run's with `run`; only those the
    model `bad_window` decided, with its fail-open answers, when given) with `model`; write
    delayed decisions. `resume`: go on from OUT.resume.json if it matches this replay.
    `stop_after` (tests): stop after that many records, as an interruption would."""
    from slidr.util import Progress, fsync_dir
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    state_path = out.with_name(out.name + ".resume.json")
    key = _resume_key(src, model, out, recompute_features, only_fail_open, include_partial, run,
                      bad_window)
    state = _load_resume(state_path, key) if resume else None
    s = Summary(model.version, str(src), "recomputed" if recompute_features else "logged",
                out=str(out), run=run, bad_window=bad_window)
    skip = 0
    if state is not None and partial.exists():
        s = Summary(**{**state["summary"], "problems": []})
        skip = s.resumed_at = int(state["records"])
        f = open(partial, "r+b")  # noqa: SIM115 - closed below
        f.truncate(int(state["out_bytes"]))
        f.seek(0, os.SEEK_END)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(partial, "wb")  # noqa: SIM115 - closed below
    total = sum(size for _name, size in key["files"])
    bar = Progress(total, "replay", unit="bytes")
    kernel = _kernel() if recompute_features else None
    msgpack_out = str(out).endswith(".msgpack")

    def checkpoint() -> None:
        f.flush()
        os.fsync(f.fileno())
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "records": s.read, "out_bytes": f.tell(),
                                   "summary": dict(s.__dict__)}))
        os.replace(tmp, state_path)

    with f:
        w = _Writer(f, msgpack_out)
        buf: list[Record] = []
        first = s.read  # records before this one were written by the interrupted replay

        def flush() -> None:
            clicks = [r.click for r in buf]
            if kernel is not None:
                # Every click feeds the counters; only the selected ones are written.
                x = kernel.features(ClickBatch.from_clicks(clicks, validate=False))
            else:
                x = np.full((len(buf), N_FEATURES), np.nan, np.float32)
                for i, r in enumerate(buf):
                    if r.features is not None:
                        x[i] = r.features
            keep = np.arange(s.read - len(buf), s.read) >= first
            if only_fail_open:
                keep &= np.array([str(r.original.get("reason") or "").startswith("fail_open")
                                  for r in buf], bool)
            if bad_window is not None:
                keep &= np.array([r.original.get("model") == bad_window for r in buf], bool)
            sel = [r for r, k in zip(buf, keep, strict=True) if k]
            if sel:
                dev, li = _slice_codes([r.click for r in sel])
                _emit(model, s, w, sel, x[keep], dev, li)
                s.selected += len(sel)
            buf.clear()
            checkpoint()

        for i, rec in enumerate(read_records(src, include_partial, bar, run, s.problems)):
            if i < skip and kernel is None:
                continue  # written before the interruption; nothing to feed
            r = normalise(rec, f"{src}: record {i}")
            validate_click(r.click, i)
            buf.append(r)
            s.read = i + 1
            if len(buf) >= chunk:
                flush()
                if stop_after is not None and s.read >= stop_after:
                    bar.close()
                    return s
        if buf:
            flush()
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, out)
    fsync_dir(out.parent)
    state_path.unlink(missing_ok=True)
    bar.close()
    return s


def replay_click_log(log: str | Path, model: ReplayModel, out: str | Path,
                     chunk_rows: int = 65536) -> Summary:
    """Recompute features for a click log through the kernel and decide every click."""
    from slidr.util import Progress, atomic_open

    from .replay import count_rows
    s = Summary(model.version, str(log), "recomputed", out=str(out))
    kernel = _kernel()
    bar = Progress(count_rows(log) or 1, "replay", unit="clicks")
    msgpack_out = str(out).endswith(".msgpack")
    with atomic_open(out, "wb") as f:
        w = _Writer(f, msgpack_out)
        for tbl in iter_log_chunks(log, chunk_rows=chunk_rows):
            batch = batch_from_table(tbl)
            x = kernel.features(batch)
            ids = tbl.column("click_id").to_pylist()
            recs = [Record({"click_id": cid}, None, {"invalid": None, "score": None,
                                                     "threshold": None, "slice": None,
                                                     "model": None, "reason": None})
                    for cid in ids]
            _emit(model, s, w, recs, x, batch.device, batch.logged_in)
            s.read += len(ids)
            bar.update(len(ids))
    bar.close()
    return s


def _kernel() -> Any:
    from slidr.kernel import FeatureKernel
    return FeatureKernel()


def format_summary(s: Summary) -> str:
    d = s.as_dict()

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4%}"
    lines = [f"replayed {s.replayed:,} of {s.read:,} decisions through {s.model} "
             f"(features {s.features}); skipped {s.skipped:,} without features"]
    if s.bad_window is not None:
        lines.append(f"bad window of {s.bad_window}: {s.selected:,} of its decisions selected "
                     f"(fail-open answers included)")
    if s.resumed_at:
        lines.append(f"resumed after record {s.resumed_at:,}")
    lines += [
             f"changed {s.changed:,}: {s.newly_invalid:,} newly invalid, "
             f"{s.newly_valid:,} newly valid; originally fail-open {s.original_fail_open:,}",
             f"IVR before {pct(d['ivr_before'])}  after {pct(d['ivr_after'])}"]
    for sl in sorted(s.by_slice):
        p = s.by_slice[sl]
        before = (p["invalid_before"] / p["with_original"]) if p["with_original"] else None
        after = (p["invalid_after"] / p["replayed"]) if p["replayed"] else None
        lines.append(f"  {sl:<12} {p['replayed']:>9,} clicks  IVR {pct(before):>9} -> "
                     f"{pct(after):>9}  changed {p['changed']:,} (now invalid "
                     f"{p.get('newly_invalid', 0):,}, now valid {p.get('newly_valid', 0):,})")
    lines.extend(f"warning: {p}" for p in s.problems)
    lines.append(f"delayed decisions -> {s.out}")
    return "\n".join(lines)


def format_runs(src: str | Path) -> str:
    """The daemon runs whose decision files are in a directory (for `slidr replay --list-runs`)."""
    import time
    runs = decision_file.list_runs(src)
    if not runs:
        return f"no decision files in {src}"
    rows = [f"{'run':<28} {'files':>5} {'MiB':>9}  first write -> last write (UTC)"]
    for r in runs:
        t0 = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.first_mtime))
        t1 = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.last_mtime))
        rows.append(f"{r.run:<28} {len(r.files):>5} {r.bytes / 2**20:>9.1f}  {t0} -> {t1}")
    return "\n".join(rows)
