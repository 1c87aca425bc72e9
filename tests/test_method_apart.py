"""Method apart from presentation: calibration and backtest compute plain result records and
never draw; their report modules draw from those records."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_method_modules_hold_no_html_or_plotting():
    for name in ("calibrate.py", "backtest.py"):
        text = (REPO / "offline" / name).read_text()
        assert not re.search(r"<(table|tr|td|img|section|html)\b", text), name
        assert "matplotlib" not in text and "savefig" not in text, name


def test_calibration_runs_without_the_plotting_stack():
    code = ("import sys\n"
            "from slidr.offline import backtest, calibrate\n"
            "r = calibrate.calibrate(calibrate.synthetic_scores(n=20_000, seed=3))\n"
            "assert set(r) == set(calibrate.CalibrationResult.__annotations__), sorted(r)\n"
            "bad = [m for m in ('matplotlib', 'slidr.offline.calibrate_report',\n"
            "                   'slidr.offline.backtest_report') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_report_draws_from_the_record(tmp_path):
    from slidr.offline import calibrate, calibrate_report
    result = calibrate.calibrate(calibrate.synthetic_scores(n=20_000, seed=3))
    files = calibrate_report.write_outputs(result, tmp_path)
    assert Path(files["html"]).read_text().count("<tr>") > len(result["calibration"]["slices"])
    assert calibrate.write_outputs is calibrate_report.write_outputs  # old import path kept
