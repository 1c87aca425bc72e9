"""`slidr daily` on a real log whose traffic lacks slices: a TalkingData subset has no desktop
and no logged-in clicks. Absent slices are reported and left to the global threshold; the data
guardrails do not refuse for them, and a refusal by the model guardrails says what more data
would be needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from slidr.offline import daily
from slidr.offline import guardrails as gr
from slidr.offline.importers import import_talkingdata, write_import

REAL = Path(os.environ.get("SLIDR_REAL_DATA", Path(__file__).resolve().parents[1] / ".."
                           / "shared" / "data" / "real"))
TD = REAL / "talkingdata_train_sample" / "train_sample.csv"

pytestmark = pytest.mark.skipif(not TD.exists(), reason="real TalkingData sample not present")


@pytest.fixture(scope="module")
def td_subset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("td")
    lines = TD.read_text().splitlines(keepends=True)
    (d / "sample.csv").write_text("".join(lines[:40_001]))  # header + 40,000 clicks
    out = d / "log"
    write_import(import_talkingdata(d / "sample.csv"), out)
    return out


def test_absent_slices_are_reported_not_refused(td_subset: Path) -> None:
    checks = {c.name: c for c in gr.check_log(gr.read_log_columns(td_subset / "clicks.parquet"))}
    vol = checks["slice_volume"]
    assert vol.passed, vol.message
    assert "absent from the log: desktop/in, desktop/out, mobile/in, app/in" in vol.message
    assert "left to the global threshold" in vol.message
    assert {"desktop/in", "mobile/in"} <= set(vol.details["global_threshold"])
    assert all(c.passed for c in checks.values()), gr.explain(list(checks.values()))


@pytest.mark.slow
def test_daily_on_real_subset_judges_what_the_data_supports(td_subset: Path,
                                                             tmp_path: Path) -> None:
    res = daily.run_daily(td_subset / "clicks.parquet", td_subset / "customers.parquet",
                          tmp_path / "reg", tmp_path / "work",
                          daily.DailyConfig(epochs=3, progress=False), log=lambda m: None)
    data = [c for c in res["checks"] if c["kind"] == "data"]
    assert data and all(c["passed"] for c in data), res["reason"]
    assert res["status"] in ("published", "refused_model"), res["reason"]
    if res["status"] == "refused_model":
        # The model guardrails judge what this little data supports and say what more it needs
        # (or, for a share of robots over the ceiling, which limit it is over).
        assert ("needs >=" in res["reason"] or "would be with >=" in res["reason"]
                or "over --max-ivr 0.6" in res["reason"]), res["reason"]
        assert "desktop/in (0 clicks" not in res["reason"]
