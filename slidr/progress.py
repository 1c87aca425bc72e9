"""Progress of long work on stderr, the same way in every command (docs/cli.md, "Progress").

- On a terminal: one live line per stage, redrawn, with a bar, a rate and an ETA; when the
  stage ends the line is replaced by "[i/n] stage: done in T".
- Not a terminal (a pipe, a log file, the systemd journal): one line per finished stage, and
  in between only a heartbeat line (share done and ETA) when a piece of work runs longer than
  HEARTBEAT_S since the last line, so a job of hours leaves a short journal that still says
  where it is.
- `--progress`: the detailed lines (every 10% of a stage, with its ETA) also when stderr is not
  a terminal. `--quiet`: nothing.

A command sets the mode once (`configure`) and may open a `job` with named stages; the code
doing the work only opens `Progress` bars (slidr.util.Progress is this class) and, for jobs,
calls `stage(name)` when it moves on. Nothing here prints when no command configured it to,
except a bare Progress bar in a library call (as before: enabled by its caller).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

AUTO, ON, OFF = "auto", "on", "off"
HEARTBEAT_S = 300.0  # not a terminal: at most one line per this many seconds of one piece of work
_mode = AUTO
_job: Job | None = None


def configure(*, quiet: bool = False, progress: bool = False) -> None:
    global _mode
    _mode = OFF if quiet else (ON if progress else AUTO)


def mode() -> str:
    return _mode


def _stream() -> TextIO:
    return sys.stderr


def _isatty() -> bool:
    try:
        return _stream().isatty()
    except (AttributeError, ValueError):
        return False


def fmt_seconds(s: float) -> str:
    if s != s or s < 0:
        return "?"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}:{sec:02d}"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}"


class Job:
    """Named stages of one command: `stage(name)` ends the current one (its line) and starts the
    next. Lines look like `slidr daily: [2/6] features: done in 12.3 s`."""

    def __init__(self, prog: str, stages: Sequence[str]) -> None:
        self.prog = prog
        self.stages = list(stages)
        self.current: str | None = None
        self.detail = ""
        self.t_stage = self.t0 = time.perf_counter()
        self.tty = _isatty()
        self.done: dict[str, float] = {}

    def index(self, name: str) -> str:
        n = len(self.stages)
        i = self.stages.index(name) + 1 if name in self.stages else len(self.done) + 1
        return f"[{i}/{max(n, i)}]"

    def stage(self, name: str) -> None:
        if self.stages and name not in self.stages:
            return  # a step of a called function (train inside daily): part of this stage
        self.finish()
        self.current = name
        self.detail = ""
        self.t_stage = time.perf_counter()
        if _mode != OFF and self.tty:
            _stream().write(f"\r\x1b[K{self.prog}: {self.index(name)} {name} ...")
            _stream().flush()

    def stop(self) -> None:
        """The current stage did not complete (refused, failed): no "done" line for it; the
        command's own message says why."""
        if self.current is not None and self.tty and _mode != OFF:
            _stream().write("\r\x1b[K")
            _stream().flush()
        self.current = None

    def finish(self) -> None:
        """End the current stage (if any): its one line."""
        if self.current is None:
            return
        dt = time.perf_counter() - self.t_stage
        self.done[self.current] = dt
        if _mode != OFF:
            detail = f" ({self.detail})" if self.detail else ""
            clear = "\r\x1b[K" if self.tty else ""
            _stream().write(f"{clear}{self.prog}: "
                            f"{self.index(self.current)} {self.current}: done in "
                            f"{fmt_seconds(dt)}{detail}\n")
            _stream().flush()
        self.current = None


@contextmanager
def job(prog: str, stages: Sequence[str]) -> Iterator[Job]:
    """Stages of a command; the last stage's line is written when the block ends (also on an
    error: the stage that failed is then not reported as done)."""
    global _job
    j = Job(prog, stages)
    prev, _job = _job, j
    ok = False
    try:
        yield j
        ok = True
    finally:
        if ok:
            j.finish()
        elif j.current is not None and j.tty and _mode != OFF:
            _stream().write("\n")
        _job = prev


def stage(name: str) -> float:
    """Move the current job (if a command opened one) to stage `name`; returns perf_counter()
    so a caller can time the stage in the same line."""
    if _job is not None:
        _job.stage(name)
    return time.perf_counter()


def detail(text: str) -> None:
    """Add to the current stage's line (e.g. "590,113 clicks/s, peak RSS 1.2 GiB")."""
    if _job is not None and _job.current is not None:
        _job.detail = (_job.detail + "; " if _job.detail else "") + text


class Progress:
    """A progress bar for `total` units of one piece of work (replay, training epochs, days).

    Inside a job it is the current stage's live line on a terminal and silent otherwise
    (the stage's line says when it is done). Alone, it is its own stage: a live line on a
    terminal, one line when it closes otherwise. With --progress also a line per 10% and its
    ETA. `enabled=False` (a caller that wants no output) silences it whatever the mode."""

    def __init__(self, total: int, label: str, unit: str = "clicks", enabled: bool = True) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.unit = unit
        self.n = 0
        self.t0 = time.perf_counter()
        self.enabled = enabled and _mode != OFF
        self.tty = _isatty()
        self.job = _job
        self._last_decile = -1
        self._last_draw = 0.0
        self._last_line = self.t0
        self._drawn = False

    def _eta(self, now: float) -> float:
        done = self.n / self.total
        return (now - self.t0) * (1 - done) / done if done > 0 else float("nan")

    def update(self, k: int) -> None:
        self.n += k
        if not self.enabled:
            return
        now = time.perf_counter()
        frac = min(self.n / self.total, 1.0)
        rate = self.n / max(now - self.t0, 1e-9)
        if self.tty:
            if now - self._last_draw < 0.1 and self.n < self.total:
                return
            self._last_draw = now
            bar = "#" * int(frac * 24)
            head = (f"{self.job.prog}: {self.job.index(self.job.current)} {self.job.current} > "
                    if self.job is not None and self.job.current else "")
            _stream().write(f"\r\x1b[K{head}{self.label} [{bar:<24}] {frac:6.1%} "
                            f"{rate:,.0f} {self.unit}/s ETA {fmt_seconds(self._eta(now))}")
            _stream().flush()
            self._drawn = True
        elif _mode == ON:
            dec = int(frac * 10)
            if dec != self._last_decile:
                self._last_decile = dec
                _stream().write(f"{self.label}: {frac:.0%} ({self.n:,} of {self.total:,} "
                                f"{self.unit}, ETA {fmt_seconds(self._eta(now))})\n")
                _stream().flush()
        elif now - self._last_line >= HEARTBEAT_S and self.n < self.total:
            self._last_line = now
            head = (f"{self.job.prog}: {self.job.index(self.job.current)} {self.job.current} > "
                    if self.job is not None and self.job.current else "")
            _stream().write(f"{head}{self.label}: {frac:.0%} ({self.n:,} of {self.total:,} "
                            f"{self.unit} after {fmt_seconds(now - self.t0)}, ETA "
                            f"{fmt_seconds(self._eta(now))})\n")
            _stream().flush()

    def close(self) -> None:
        if not self.enabled:
            return
        dt = time.perf_counter() - self.t0
        summary = f"{self.n:,} {self.unit} in {fmt_seconds(dt)}"
        if self.job is not None:
            self.job.detail = (self.job.detail + "; " if self.job.detail else "") + \
                f"{self.label} {summary}"
            if self.tty and self._drawn:
                _stream().write("\r\x1b[K")
                _stream().flush()
            return
        if self.tty:
            _stream().write(f"\r\x1b[K{self.label}: {summary}\n" if self._drawn else "")
        else:
            _stream().write(f"{self.label}: {summary}\n")
        _stream().flush()
