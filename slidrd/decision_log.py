"""The decision log: every answer, with its features, written off the hot path.

The event loop hands over one tuple per batch (a deque append: no lock, no system call, no
wake-up); a writer thread that looks every `poll_s` (5 ms) turns them into records in rotating
files `decisions-<run>-<seq>.msgpack` (format: slidr/decision_file.py, a header map and one
compact array per decision, features as float32 bytes). A file is written as `.part` and
renamed when closed, so a finished name is always a complete file.

Retention: after each rotation (and at start) the oldest finished files of the directory, of
any run, are deleted while the directory holds more than `max_total_bytes` or while the oldest
is older than `max_age_s` (0 = no age limit). The open file is never deleted.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from slidr.decision_file import header, log_files, read_decisions

__all__ = ["DecisionLog", "log_files", "read_decisions"]


class DecisionLog:
    def __init__(self, directory: str, max_bytes: int = 256 << 20, with_features: bool = True,
                 max_queued_batches: int = 100_000, poll_s: float = 0.005,
                 max_total_bytes: int = 0, max_age_s: float = 0.0,
                 run_id: str | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes  # 0 = no size limit
        self.max_age_s = max_age_s  # 0 = no age limit
        self.deleted_files = 0
        self.deleted_bytes = 0
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
        self.started = time.time()
        # One daemon process's run: its start time and pid (each worker is its own run).
        self.run_id = run_id or f"{self._start}-{os.getpid()}"
        self._f: Any = None
        self._size = 0
        self._name = ""
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="slidrd-decision-log", daemon=True)
        self._t.start()

    # ---- called on the event loop (cheap)
    def submit(self, clicks: list[Any], features: np.ndarray | None, decisions: list[Any],
               model: str) -> None:
        """One batch: the clicks, (n, N_FEATURES) features or None (fail-open), decision dicts."""
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
        self._name = f"decisions-{self.run_id}-{self._seq:05d}.msgpack"
        self._f = open(self.dir / (self._name + ".part"), "wb", buffering=1 << 20)
        head = msgpack.packb(header(self.run_id, self.started), use_bin_type=True)
        self._f.write(head)
        self._size = len(head)

    def _close_file(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.dir / (self._name + ".part"), self.dir / self._name)
        self._f = None
        self.prune()

    def prune(self) -> None:
        """Delete the oldest finished files beyond the size and age limits (any run's)."""
        if not self.max_total_bytes and not self.max_age_s:
            return
        files = []
        for p in log_files(self.dir):
            try:
                st = p.stat()
            except FileNotFoundError:  # another worker pruned it
                continue
            files.append((p, st.st_size, st.st_mtime))
        total = sum(f[1] for f in files)
        now = time.time()
        for p, size, mtime in files:
            too_big = bool(self.max_total_bytes) and total > self.max_total_bytes
            too_old = bool(self.max_age_s) and now - mtime > self.max_age_s
            if not (too_big or too_old):
                break
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            total -= size
            self.deleted_files += 1
            self.deleted_bytes += size

    def _run(self) -> None:
        try:
            self.prune()
        except OSError as e:
            self._error = e
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
            # float32 bytes: exact, and a third of a list of N_FEATURES floats.
            f32 = np.ascontiguousarray(features, dtype="<f4")
            chunks = [pack([wall, model, clicks[i], d, f32[i].tobytes()])
                      for i, d in enumerate(decisions)]
        else:
            chunks = [pack([wall, model, clicks[i], d, None]) for i, d in enumerate(decisions)]
        blob = b"".join(chunks)
        self._f.write(blob)
        self._size += len(blob)
        self.written += len(decisions)
        if self._size >= self.max_bytes:
            self._close_file()
