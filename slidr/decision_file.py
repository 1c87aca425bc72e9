"""The decision log's file format: one owner for the writer (slidrd/decision_log.py) and every
reader (`slidr replay`, tests, tools).

A file is msgpack objects, concatenated. Format 2 (what slidrd writes) starts with a header map
and then holds one array per decision:

    {"slidr_decision_log": 2, "run": RUN_ID, "pid": PID, "started": UNIX_TIME}
    [t, model, click, decision, features]        # features: float32 little-endian bytes or nil

`click` and `decision` are the maps the daemon received and answered. Format 1 (older files,
and what tools may write by hand) is one map per decision with the keys t, click, decision,
model and features (a list of floats). Readers accept both and yield format 1's map, so a
record reads the same whatever wrote it; float32 → float64 is exact, so logged features are
bit for bit what the model saw.

File names: `decisions-<run>-<seq>.msgpack`, where the run id `<start>-<pid>` names one daemon
process's run (a `.part` suffix while the file is open). `list_runs` groups files by run.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

FORMAT = 2
HEADER_KEY = "slidr_decision_log"
_NAME = re.compile(r"^decisions-(?P<run>.+)-(?P<seq>\d+)\.msgpack(?:\.part)?$")


def header(run: str, started: float) -> dict[str, Any]:
    return {HEADER_KEY: FORMAT, "run": run, "pid": os.getpid(), "started": started}


def run_of(path: Path) -> str | None:
    m = _NAME.match(path.name)
    return m.group("run") if m else None


def log_files(directory: str | Path, include_partial: bool = False,
              run: str | None = None) -> list[Path]:
    """Decision files of a directory in write order (name order: run start, pid, sequence);
    `.part` files (a file still open, or left by a killed daemon) only when asked."""
    d = Path(directory)
    files = sorted(d.glob("decisions-*.msgpack"))
    if include_partial:
        files = sorted(files + sorted(d.glob("decisions-*.msgpack.part")))
    if run is not None:
        files = [p for p in files if run_of(p) == run]
    return files


@dataclass
class Run:
    run: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    first_mtime: float = 0.0
    last_mtime: float = 0.0


def list_runs(directory: str | Path, include_partial: bool = True) -> list[Run]:
    """The runs whose files are in a directory, oldest first."""
    runs: dict[str, Run] = {}
    for p in log_files(directory, include_partial):
        r = run_of(p)
        if r is None:
            continue
        st = p.stat()
        run = runs.setdefault(r, Run(r, first_mtime=st.st_mtime))
        run.files.append(p)
        run.bytes += st.st_size
        run.first_mtime = min(run.first_mtime, st.st_mtime)
        run.last_mtime = max(run.last_mtime, st.st_mtime)
    return list(runs.values())


def _as_record(obj: Any, features_as: str) -> dict[str, Any] | None:
    if isinstance(obj, dict):
        if HEADER_KEY in obj:
            return None
        rec = obj
        fv = rec.get("features")
        if features_as == "array" and fv is not None:
            rec["features"] = np.asarray(fv, dtype=np.float32)
        return rec
    if isinstance(obj, list) and len(obj) == 5:
        t, model, click, decision, blob = obj
        fv: Any = None
        if blob is not None:
            arr = np.frombuffer(blob, dtype="<f4")
            fv = arr.astype(np.float32) if features_as == "array" else arr.tolist()
        return {"t": t, "click": click, "decision": decision, "model": model, "features": fv}
    raise ValueError(f"not a decision record: {type(obj).__name__}")


class Counted:
    """A binary file whose reads advance a progress bar (bytes) when one is given."""

    def __init__(self, f: Any, bar: Any = None) -> None:
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.bar is not None:
            self.bar.update(len(data))
        return data


def read_file(path: Path, features_as: str = "list", bar: Any = None,
              problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every record of one file. A corrupt or truncated file yields what precedes the damage;
    the damage is reported by file and byte position (appended to `problems`, else printed
    on stderr) and the caller goes on with the next file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        up = msgpack.Unpacker(Counted(f, bar), raw=False, strict_map_key=False,
                              max_buffer_size=64 << 20)
        pos = 0
        try:
            for obj in up:
                rec = _as_record(obj, features_as)
                pos = up.tell()
                if rec is not None:
                    yield rec
        except (ValueError, msgpack.UnpackException) as e:
            why = str(e) or type(e).__name__
            _report(problems, f"{path}: corrupt at byte {pos} ({why}); the rest of this file "
                              "is skipped")
            return
        if pos < size and not path.name.endswith(".part"):
            _report(problems, f"{path}: truncated at byte {pos} of {size}; the torn record "
                              "is skipped")


def _report(problems: list[str] | None, msg: str) -> None:
    if problems is None:
        print(f"warning: {msg}", file=sys.stderr)
    else:
        problems.append(msg)


def read_decisions(directory: str | Path, include_partial: bool = False,
                   features_as: str = "list", run: str | None = None,
                   problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every record of a directory's decision files, in order (one run's with `run`).
    `features` comes back as a list of floats ("list") or a float32 array ("array")."""
    for p in log_files(directory, include_partial, run):
        yield from read_file(p, features_as, problems=problems)
