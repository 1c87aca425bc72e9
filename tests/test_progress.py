"""slidr/progress.py: a live line with an ETA on a terminal, one line per stage otherwise,
detailed lines with --progress, nothing with --quiet (docs/cli.md, "Progress")."""

from __future__ import annotations

import io

import pytest

from slidr import progress


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def stream(monkeypatch):
    def make(tty: bool, **mode: bool) -> Stream:
        s = Stream(tty)
        monkeypatch.setattr(progress, "_stream", lambda: s)
        progress.configure(**mode)
        return s
    yield make
    progress.configure()


def _job(n: int = 1000) -> None:
    with progress.job("slidr x", ("read", "work", "write")):
        progress.stage("read")
        progress.stage("work")
        bar = progress.Progress(n, "replay")
        for _ in range(10):
            bar.update(n // 10)
        bar.close()
        progress.stage("write")


def test_not_a_terminal_one_line_per_stage(stream):
    s = stream(False)
    _job()
    lines = s.getvalue().splitlines()
    assert [ln.split(":")[1].strip() for ln in lines] == ["[1/3] read", "[2/3] work",
                                                           "[3/3] write"], lines
    assert "replay 1,000 clicks in" in lines[1] and all(": done in " in ln for ln in lines)


def test_progress_flag_adds_tenths_with_eta(stream):
    s = stream(False, progress=True)
    _job()
    detail = [ln for ln in s.getvalue().splitlines() if ln.startswith("replay: ")]
    assert len(detail) == 10 and all("ETA" in ln for ln in detail), detail
    assert detail[-1].startswith("replay: 100% (1,000 of 1,000 clicks")


def test_terminal_redraws_with_eta_and_ends_each_stage_with_a_line(stream):
    s = stream(True)
    _job()
    text = s.getvalue()
    assert "\r" in text and "ETA" in text and "[2/3] work > replay [" in text
    done = [seg for seg in text.split("\r\x1b[K") if ": done in " in seg]
    assert len(done) == 3 and all(seg.endswith("\n") for seg in done)


def test_quiet_prints_nothing(stream):
    s = stream(True, quiet=True)
    _job()
    bar = progress.Progress(10, "alone")
    bar.update(10)
    bar.close()
    assert s.getvalue() == ""


def test_a_stopped_stage_is_not_reported_done(stream):
    s = stream(False)
    with progress.job("slidr daily", ("guardrails", "train")) as j:
        j.stage("guardrails")
        j.stop()
    assert s.getvalue() == ""
    with pytest.raises(RuntimeError), progress.job("slidr daily", ("guardrails",)) as j:
        j.stage("guardrails")
        raise RuntimeError("boom")
    assert s.getvalue() == ""


def test_a_bar_alone_is_its_own_stage(stream):
    s = stream(False)
    bar = progress.Progress(4, "simulate", unit="steps")
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert s.getvalue().splitlines() == [s.getvalue().splitlines()[0]]
    assert s.getvalue().startswith("simulate: 4 steps in ")


def test_train_stages_inside_daily_do_not_move_its_stages(stream):
    """`slidr daily` runs the training pipeline inside its "train" stage: the pipeline's own
    stage names must not be daily's, or its lines would jump back and forth."""
    from slidr.offline import cli_daily, pipeline
    assert not set(pipeline.STAGES) & set(cli_daily.STAGES)
    s = stream(False)
    with progress.job("slidr daily", cli_daily.STAGES):
        progress.stage("train")
        for name in pipeline.STAGES:
            progress.stage(name)  # ignored: not daily's
        progress.stage("calibrate")
    assert [ln.split("] ")[1].split(":")[0] for ln in s.getvalue().splitlines()] == \
        ["train", "calibrate"]


def test_detail_goes_on_the_stage_line(stream):
    s = stream(False)
    with progress.job("slidr daily", ("features",)):
        progress.stage("features")
        progress.detail("590,113 clicks/s, peak RSS 1.20 GiB")
    assert s.getvalue().rstrip().endswith("(590,113 clicks/s, peak RSS 1.20 GiB)")


def test_not_a_terminal_long_work_leaves_a_heartbeat_with_eta(stream, monkeypatch):
    """A stage of hours in the journal: a line per HEARTBEAT_S with the share done and the
    ETA, between the stage lines; short work (the other tests) gets none."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    s = stream(False)
    with progress.job("slidr daily", ("features", "train")):
        progress.stage("features")
        progress.stage("train")
        bar = progress.Progress(100, "mlp", unit="batches")
        for _ in range(10):
            clock[0] += progress.HEARTBEAT_S / 2
            bar.update(10)
        bar.close()
    lines = s.getvalue().splitlines()
    beats = [ln for ln in lines if "ETA" in ln]
    assert len(beats) == 4, lines  # at 20%, 40%, 60%, 80% (not at 100%: the stage line says it)
    assert beats[0] == "slidr daily: [2/2] train > mlp: 20% (20 of 100 batches after 5:00, " \
                       "ETA 20:00)", beats[0]
    assert lines[-1].startswith("slidr daily: [2/2] train: done in 25:00")
