"""The decision log: every answer, with its features, written off the hot path.

The event loop hands over one tuple per batch (a deque append: no lock, no system call, no
wake-up); a writer thread that looks every `poll_s` (5 ms) turns them into
msgpack records (one map per decision, concatenated — "msgpack lines") in rotating files
`decisions-<start>-<pid>-<seq>.msgpack`; `features` is the model's input row (24 floats,
exact float32 values) or null. A file is written as `.part` and renamed when closed,
so a finished name is always a complete file. `read_decisions(dir)` reads them back in order.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np


class DecisionLog:
    def __init__(self, directory: str, max_bytes: int = 256 << 20, with_features: bool = True,
                 max_queued_batches: int = 100_000, poll_s: float = 0.005) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.with_features = with_features
        # Waking the writer once per batch (a Queue put) cost the loop a futex wake and a GIL
        # hand-off per batch, the largest single item of a lone click's cost; the writer polls.
        self.q: deque[Any] = deque()
        self.max_queued = max_queued_batches
        self.poll_s = poll_s
        self._stop = False
        self.dropped = 0
        self.written = 0
        self._seq = 0
        self._start = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._f: Any = None
        self._size = 0
        self._name = ""
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="slidrd-decision-log", daemon=True)
        self._t.start()

    # ---- called on the event loop (cheap)
    def submit(self, clicks: list[Any], features: np.ndarray | None, decisions: list[Any],
               model: str) -> None:
        """One batch: the clicks, (n, 24) features or None (fail-open), decision dicts."""
        if len(self.q) >= self.max_queued:
            self.dropped += len(decisions)
            return
        self.q.append((clicks, features, decisions, model, time.time()))

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, close the file, stop the thread."""
        self._stop = True
        self._t.join(timeout)

    # ---- writer thread
    def _open(self) -> None:
        self._seq += 1
        self._name = f"decisions-{self._start}-{os.getpid()}-{self._seq:05d}.msgpack"
        self._f = open(self.dir / (self._name + ".part"), "wb", buffering=1 << 20)
        self._size = 0

    def _close_file(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.dir / (self._name + ".part"), self.dir / self._name)
        self._f = None

    def _run(self) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        q = self.q
        while True:
            if not q:
                if self._stop:
                    break
                time.sleep(self.poll_s)
                continue
            # Drain whatever is queued before flushing, so bursts cost one flush.
            while q:
                item = q.popleft()
                try:
                    self._write(packer, item)
                except BaseException as e:  # keep the loop alive; the count tells the operator
                    self._error = e
                    self.dropped += len(item[2])
            if self._f is not None:
                self._f.flush()
        self._close_file()

    def _write(self, packer: msgpack.Packer, item: Any) -> None:
        clicks, features, decisions, model, wall = item
        if self._f is None:
            self._open()
        pack = packer.pack
        if features is not None and self.with_features:
            # float32 -> float64 is exact, so the logged list is bit-for-bit what the model saw.
            feats = features.tolist()
            chunks = [pack({"t": wall, "click": clicks[i], "decision": d, "model": model,
                            "features": feats[i]})
                      for i, d in enumerate(decisions)]
        else:
            chunks = [pack({"t": wall, "click": clicks[i], "decision": d, "model": model,
                            "features": None})
                      for i, d in enumerate(decisions)]
        blob = b"".join(chunks)
        self._f.write(blob)
        self._size += len(blob)
        self.written += len(decisions)
        if self._size >= self.max_bytes:
            self._close_file()


def log_files(directory: str | Path) -> list[Path]:
    """Finished log files in write order (name order: start time, pid, sequence)."""
    return sorted(p for p in Path(directory).glob("decisions-*.msgpack"))


def read_decisions(directory: str | Path, include_partial: bool = False,
                   features_as: str = "list") -> Iterator[dict[str, Any]]:
    """Every record of the finished files in a directory, in order. `features` comes back as a
    list of floats ("list", as stored) or a float32 array ("array")."""
    files = log_files(directory)
    if include_partial:
        files += sorted(Path(directory).glob("decisions-*.msgpack.part"))
    for p in files:
        with open(p, "rb") as f:
            for rec in msgpack.Unpacker(f, raw=False, strict_map_key=False):
                fv = rec.get("features")
                if features_as == "array" and fv is not None:
                    rec["features"] = np.asarray(fv, dtype=np.float32)
                yield rec
