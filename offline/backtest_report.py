"""The backtest report: the text summary, the figures and backtest.html, drawn from the result
record that `backtest.run_backtest()` returns (rows per held-out day, pooled counts,
bootstrap, win gate); backtest.json is that record as written. Nothing here computes a
threshold or a count; the method is in offline/backtest.py."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backtest import LABELS, POOLED_METHODS, _div, _pooled, day_view, feasible

# One colour and one marker per method in every figure.
COLOURS = {"slice": "C1", "global_budget": "C0", "chosen": "C2", "global_knee": "C7",
           "global_matched": "C4"}
MARKERS = {"slice": "o", "global_budget": "s", "chosen": "^", "global_knee": "D",
           "global_matched": "v"}


# ---------------------------------------------------------------- text

def _pct(x: float | None, d: int = 1) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:+.{d}%}"


def _n(x: float | None, d: int = 4) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def text_report(result: Mapping[str, Any], days: bool = False) -> str:
    cfgd = result["config"]
    calib = cfgd["calib"]
    lines = [f"pooled over held-out days ({len(cfgd['runs'])} run(s), fit window "
             f"{cfgd['val_days']} day(s)); floors: min coverage {cfgd['min_coverage']:g}, "
             f"overrides {cfgd['slice_min_coverage'] or '-'}"]
    head = (f"{'budget':>6} {'method':<24} {'days':>4} {'IVR':>7} {'FPR':>7} {'FPR/b':>6} "
            f"{'cover':>6} {'floors':>6} {'vs g@b':>7}")
    lines += [head, "-" * len(head)]
    for b in cfgd["budgets"]:
        for m in POOLED_METHODS:
            p = _pooled(result, b, m)
            lines.append(f"{b:>6.3f} {LABELS[m]:<24} {p['days']:>4} {_n(p['ivr'])} "
                         f"{_n(p['fpr'])} {_n(p['fpr_over_budget'], 2):>6} "
                         f"{_n(p['coverage'], 3):>6} "
                         f"{p['floors_met']}/{p['floors_judged']:<4} "
                         f"{_pct(p['ivr_gain_vs_global_budget']):>7}")
    lines.append("")
    for bs in result["bootstrap"]:
        if "slice" not in bs:
            lines.append(f"budget {bs['budget']:.3f}: no feasible held-out day")
            continue
        for m in ("slice", "chosen"):
            x = bs[m]
            iv = x.get("ivr_gain_interval")
            fv = x.get("fpr_ratio_interval")
            lines.append(
                f"budget {bs['budget']:.3f} {LABELS[m]} vs global@budget, bootstrap over "
                f"{bs['days']} days ({bs['level']:.0%}): IVR gain {_pct(x['ivr_gain'])}"
                + (f" [{_pct(iv[0])}, {_pct(iv[1])}]" if iv else "")
                + f", FPR ratio {_n(x['fpr_ratio'], 3)}"
                + (f" [{_n(fv[0], 3)}, {_n(fv[1], 3)}]" if fv else "")
                + (f"; higher IVR at <= FPR in {x['p_win']:.0%} of resamples"
                   if "p_win" in x else ""))
    lines.append("")
    for s in result["per_day_summary"]:
        lines.append(
            f"budget {s['budget']:.3f}, per day ({s['days']} days, {s['infeasible_days']} "
            f"infeasible): slice-level IVR higher on {s['slice_ivr_higher']}, FPR <= on "
            f"{s['slice_fpr_le']}, both on {s['slice_both']} (and floors met: "
            f"{s['slice_both_and_floors']}); floors met slice {s['slice_floors_met']}, "
            f"global@budget {s['global_budget_floors_met']}; auto picks global on "
            f"{s['auto_picks_global']}")
    if days:
        lines += ["", f"{'run':<10} {'day':>4} {'budget':>6} {'slice IVR':>9} {'@FPR':>7} "
                      f"{'g@b IVR':>8} {'@FPR':>7} {'gain':>7} {'floors':>6} {'auto':>6}"]
        for r in result["rows"]:
            if "infeasible" in r:
                lines.append(f"{r['run_name']:<10} {r['test_day']:>4} {r['budget']:>6.3f} "
                             f"infeasible (min budget {_n(r['infeasible']['min_budget'])})")
                continue
            a, g = day_view(r, "slice", calib), day_view(r, "global_budget", calib)
            lines.append(f"{r['run_name']:<10} {r['test_day']:>4} {r['budget']:>6.3f} "
                         f"{_n(a['ivr']):>9} {_n(a['fpr']):>7} {_n(g['ivr']):>8} "
                         f"{_n(g['fpr']):>7} {_pct(_div(a['ivr'], g['ivr']) - 1):>7} "
                         f"{'yes' if a['floors_met'] else 'NO':>6} "
                         f"{'slice' if r['chosen_method'] == 'slice' else 'global':>6}")
    g = result["gate"]
    lines += ["", "win gate (" + g["rule"] + "): " + ("PASSED" if g["passed"] else "FAILED")]
    for x in g["budgets"]:
        if not x["passed"]:
            lines.append(f"  budget {x['budget']:g}: " + "; ".join(x["reasons"]))
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots and html

def plot(result: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_png
    budgets = result["config"]["budgets"]
    calib = result["config"]["calib"]
    pngs = []

    # 1. Pooled IVR vs FPR per method across budgets; gain and FPR/budget with intervals.
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4))
    for m in ("global_budget", "slice", "chosen"):
        mk = MARKERS[m]
        pts = [_pooled(result, b, m) for b in budgets]
        ax1.plot([p["fpr"] for p in pts], [p["ivr"] for p in pts], "-" + mk,
                 color=COLOURS[m], label=LABELS[m])
        for b in budgets:  # per run (seed), small
            rp = [p for p in result["pooled_by_run"] if p["budget"] == b and p["method"] == m]
            ax1.plot([p["fpr"] for p in rp], [p["ivr"] for p in rp], mk, ms=3, alpha=0.35,
                     color=COLOURS[m])
    k = _pooled(result, budgets[0], "global_knee")
    if k["days"]:
        ax1.plot([k["fpr"]], [k["ivr"]], "D", color=COLOURS["global_knee"],
                 label=f"{LABELS['global_knee']} (no budget)")
    for b in budgets:
        ax1.axvline(b, ls=":", color="0.7", lw=0.8)
    ax1.set_xlabel("pooled held-out FPR")
    ax1.set_ylabel("pooled held-out IVR")
    ax1.set_title("pooled over held-out days (small: per run)", fontsize=10)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    x = np.arange(len(budgets))
    for j, m in enumerate(("slice", "chosen")):
        g, lo, hi = [], [], []
        for bs in result["bootstrap"]:
            v = bs.get(m, {})
            g.append(100 * v.get("ivr_gain", np.nan))
            iv = v.get("ivr_gain_interval", [np.nan, np.nan])
            lo.append(100 * iv[0])
            hi.append(100 * iv[1])
        g_, lo_, hi_ = np.array(g), np.array(lo), np.array(hi)
        ax2.errorbar(x + (j - 0.5) * 0.15, g_, yerr=[g_ - lo_, hi_ - g_], fmt=MARKERS[m],
                     capsize=3, color=COLOURS[m], label=LABELS[m])
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(x, [f"{b:g}" for b in budgets])
    ax2.set_xlabel("FPR budget")
    ax2.set_ylabel("pooled IVR vs global@budget (%)")
    ax2.set_title(f"IVR gain, {result['bootstrap'][0]['level']:.0%} bootstrap over days",
                  fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    for j, m in enumerate(("global_budget", "slice", "chosen")):
        ax3.plot(x + (j - 1) * 0.12, [_pooled(result, b, m)["fpr_over_budget"] for b in budgets],
                 MARKERS[m], color=COLOURS[m], label=LABELS[m])
    ax3.axhline(1, color="k", lw=0.8)
    ax3.set_xticks(x, [f"{b:g}" for b in budgets])
    ax3.set_xlabel("FPR budget")
    ax3.set_ylabel("pooled held-out FPR / budget")
    ax3.set_title("FPR spent", fontsize=10)
    ax3.legend(fontsize=7)
    ax3.grid(alpha=0.3)
    pngs.append(save_png(fig, out / "backtest_pooled.png", dpi=80))

    # 2. Per day: slice vs global@budget IVR gain against the FPR difference.
    cols_n = min(len(budgets), 4)
    rows_n = (len(budgets) + cols_n - 1) // cols_n
    fig, axes = plt.subplots(rows_n, cols_n, figsize=(4 * cols_n, 3.6 * rows_n), squeeze=False)
    for ax, b in zip(axes.flat, budgets, strict=False):
        ok = feasible(r for r in result["rows"] if r["budget"] == b)
        dx, dy, met = [], [], []
        for r in ok:
            vs, vg = day_view(r, "slice", calib), day_view(r, "global_budget", calib)
            dx.append(vs["fpr"] - vg["fpr"])
            dy.append(100 * (_div(vs["ivr"], vg["ivr"]) - 1))
            met.append(vs["floors_met"])
        dx_, dy_, met_ = np.array(dx), np.array(dy), np.array(met, dtype=bool)
        ax.plot(dx_[met_], dy_[met_], "o", ms=4, color="C1", label="floors met")
        ax.plot(dx_[~met_], dy_[~met_], "x", ms=5, color="C3", label="floor missed")
        p, gp = _pooled(result, b, "slice"), _pooled(result, b, "global_budget")
        if p["days"]:
            ax.plot([p["fpr"] - gp["fpr"]], [100 * p["ivr_gain_vs_global_budget"]], "*",
                    ms=14, color="k", label="pooled")
        ax.axhline(0, color="k", lw=0.7)
        ax.axvline(0, color="k", lw=0.7)
        s = next(x for x in result["per_day_summary"] if x["budget"] == b)
        ax.set_title(f"budget {b:g}: better IVR at <= FPR on {s['slice_both']}/{s['days']} "
                     "days", fontsize=9)
        ax.set_xlabel("FPR slice - FPR global@budget")
        ax.set_ylabel("IVR slice / global@budget - 1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(budgets):]:
        ax.axis("off")
    pngs.append(save_png(fig, out / "backtest_days.png", dpi=80))
    return pngs


def html_page(result: Mapping[str, Any], pngs: Sequence[str]) -> str:
    esc = html.escape
    cfgd = result["config"]
    calib = cfgd["calib"]
    budgets = cfgd["budgets"]

    def td(v: Any) -> str:
        return f"<td>{esc(str(v))}</td>"

    pooled_rows = "".join(
        "<tr>" + td(f"{b:g}") + td(LABELS[m]) + td(p["days"]) + td(_n(p["ivr"]))
        + td(_n(p["fpr"])) + td(_n(p["fpr_over_budget"], 2)) + td(_n(p["coverage"], 3))
        + td(_n(p.get("precision"), 3)) + td(_n(p.get("recall"), 3))
        + td(f"{p['floors_met']}/{p['floors_judged']}")
        + td(_pct(p["ivr_gain_vs_global_budget"])) + "</tr>"
        for b in budgets for m in POOLED_METHODS for p in [_pooled(result, b, m)])
    boot_rows = ""
    for bs in result["bootstrap"]:
        for m in ("slice", "chosen"):
            x = bs.get(m)
            if not x:
                continue
            iv, fv = x.get("ivr_gain_interval"), x.get("fpr_ratio_interval")
            boot_rows += ("<tr>" + td(f"{bs['budget']:g}") + td(LABELS[m]) + td(bs["days"])
                          + td(_pct(x["ivr_gain"]))
                          + td(f"[{_pct(iv[0])}, {_pct(iv[1])}]" if iv else "-")
                          + td(_n(x["fpr_ratio"], 3))
                          + td(f"[{_n(fv[0], 3)}, {_n(fv[1], 3)}]" if fv else "-")
                          + td(f"{x['p_win']:.0%}" if "p_win" in x else "-") + "</tr>")
    floor_rows = ""
    for b in budgets:
        sp, gp = _pooled(result, b, "slice"), _pooled(result, b, "global_budget")
        for s, v in sp["slices"].items():
            g = gp["slices"][s]
            floor_rows += ("<tr>" + td(f"{b:g}") + td(s) + td(v["population"]["purchasing"])
                           + td(v["population"]["heuristic"]) + td(_n(v["min_coverage"], 2))
                           + td(_n(v["coverage"], 3))
                           + td({True: "yes", False: "NO", None: "-"}[v["floor_met"]])
                           + td(_n(g["coverage"], 3))
                           + td({True: "yes", False: "NO", None: "-"}[g["floor_met"]])
                           + td(_n(v["fpr"], 4)) + td(_n(g["fpr"], 4)) + "</tr>")
    run_rows = ""
    for r in cfgd["runs"]:
        for b in budgets:
            ps = {p["method"]: p for p in result["pooled_by_run"]
                  if p["run"] == r and p["budget"] == b}
            cells = "".join(td(f"{_n(ps[m]['ivr'])} @ {_n(ps[m]['fpr'])}")
                            for m in ("slice", "global_budget", "chosen"))
            run_rows += ("<tr>" + td(Path(r).name) + td(f"{b:g}") + td(ps["slice"]["days"])
                         + cells + td(_pct(ps["slice"]["ivr_gain_vs_global_budget"]))
                         + td(f"{ps['slice']['floors_met']}/{ps['slice']['floors_judged']}")
                         + "</tr>")
    day_sum = "".join(
        "<tr>" + td(f"{s['budget']:g}") + td(s["days"]) + td(s["infeasible_days"])
        + td(s["slice_ivr_higher"]) + td(s["slice_fpr_le"]) + td(s["slice_both"])
        + td(s["slice_both_and_floors"]) + td(s["slice_floors_met"])
        + td(s["global_budget_floors_met"]) + td(s["auto_picks_global"])
        + td(_pct(s["mean_over_days"]["slice_gain_vs_global_budget"])) + "</tr>"
        for s in result["per_day_summary"])
    day_rows = ""
    for r in result["rows"]:
        head = td(r["run_name"]) + td(r["test_day"]) + td(",".join(map(str, r["fit_days"]))) \
            + td(f"{r['budget']:g}")
        if "infeasible" in r:
            day_rows += ("<tr>" + head + f"<td colspan=7>infeasible (minimum budget "
                         f"{_n(r['infeasible']['min_budget'])})</td></tr>")
            continue
        a, g = day_view(r, "slice", calib), day_view(r, "global_budget", calib)
        gm = day_view(r, "global_matched", calib)
        day_rows += ("<tr>" + head + td(f"{_n(a['ivr'])} @ {_n(a['fpr'])}")
                     + td(f"{_n(g['ivr'])} @ {_n(g['fpr'])}")
                     + td(_pct(_div(a["ivr"], g["ivr"]) - 1))
                     + td("yes" if a["floors_met"] else "NO")
                     + td("yes" if g["floors_met"] else "NO")
                     + td("slice" if r["chosen_method"] == "slice" else "global")
                     + td(_n(gm["ivr"])) + "</tr>")
    gt = result["gate"]
    gate_html = (f"<p><b>Win gate ({esc(gt['rule'])}): {'PASSED' if gt['passed'] else 'FAILED'}"
                 "</b></p><ul>" + "".join(
                     f"<li>budget {x['budget']:g}: "
                     + ("passed" if x["passed"] else esc("; ".join(x["reasons"]))) + "</li>"
                     for x in gt["budgets"]) + "</ul>")
    imgs = "".join(f'<p><img src="{esc(p)}" style="max-width:100%"></p>' for p in pngs)
    n_days = sum(len(v) for v in result["plan"].values())
    tbl = "<table border=1 cellpadding=3>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>slidr backtest</title>"
        "</head><body><h1>Calibration backtest on held-out days</h1>"
        f"<p>{len(cfgd['runs'])} run(s) ({esc(', '.join(Path(r).name for r in cfgd['runs']))}), "
        f"{n_days} held-out day(s) per budget. For every held-out day t the thresholds are "
        f"fitted on the {cfgd['val_days']} scored day(s) before t (calibrate.calibrate, as "
        "`slidr calibrate` does) and evaluated on day t. Coverage floors: minimum "
        f"{cfgd['min_coverage']:g}, overrides {esc(str(cfgd['slice_min_coverage'] or '-'))}. "
        f"Calibration settings: {esc(json.dumps(calib, sort_keys=True))}. "
        "Rule: invalid iff score &gt; threshold.</p>"
        + gate_html
        + "<h2>Pooled over the held-out days</h2><p>Counts (invalidated clicks, purchasing "
        "clicks, heuristic-robotic clicks) summed over every feasible held-out day of all "
        "runs, then the ratios; floors: slices whose pooled coverage meets their minimum "
        "coverage, of those with a minimum &gt; 0 and heuristic-robotic clicks. "
        "global@matched is an oracle (one threshold set on each held-out day itself to "
        "slice-level's realised FPR there).</p>"
        + tbl + "<tr><th>budget</th><th>method</th><th>days</th><th>IVR</th><th>FPR</th>"
        "<th>FPR/budget</th><th>coverage</th><th>precision</th><th>recall</th><th>floors met"
        f"</th><th>IVR vs global@budget</th></tr>{pooled_rows}</table>"
        f"<h2>Bootstrap over held-out days ({result['bootstrap'][0]['level']:.0%} intervals, "
        f"{cfgd['bootstrap']} resamples of the (run, day) units)</h2>"
        + tbl + "<tr><th>budget</th><th>method</th><th>days</th><th>pooled IVR gain vs "
        "global@budget</th><th>interval</th><th>pooled FPR ratio vs global@budget</th>"
        "<th>interval</th><th>resamples with higher IVR at &lt;= FPR</th></tr>"
        f"{boot_rows}</table>"
        "<h2>Coverage floors per slice, pooled</h2>" + tbl
        + "<tr><th>budget</th><th>slice</th><th>purchasing</th><th>heuristic</th>"
        "<th>min coverage</th><th>slice-level coverage</th><th>met</th>"
        "<th>global@budget coverage</th><th>met</th><th>slice-level FPR</th>"
        f"<th>global@budget FPR</th></tr>{floor_rows}</table>"
        "<h2>Per run, pooled (IVR @ FPR)</h2>" + tbl
        + "<tr><th>run</th><th>budget</th><th>days</th><th>slice-level</th>"
        "<th>global@budget</th><th>auto</th><th>slice IVR vs global@budget</th>"
        f"<th>floors met</th></tr>{run_rows}</table>"
        "<h2>Day by day</h2><p>On how many held-out days slice-level had the higher IVR, an "
        "FPR at most global@budget's, both, both with its floors met; mean over days of the "
        "per-day IVR ratio.</p>" + tbl
        + "<tr><th>budget</th><th>days</th><th>infeasible</th><th>IVR higher</th>"
        "<th>FPR &lt;=</th><th>both</th><th>both + floors</th><th>floors met (slice)</th>"
        "<th>floors met (global@budget)</th><th>auto picks global</th>"
        f"<th>mean per-day IVR gain</th></tr>{day_sum}</table>"
        + imgs
        + "<h3>Every held-out day</h3>" + tbl
        + "<tr><th>run</th><th>day</th><th>fitted on</th><th>budget</th>"
        "<th>slice IVR @ FPR</th><th>global@budget IVR @ FPR</th><th>IVR gain</th>"
        "<th>floors (slice)</th><th>floors (global@budget)</th><th>auto</th>"
        f"<th>global@matched IVR</th></tr>{day_rows}</table>"
        f"<p>Wall time {result['wall_s']:.0f} s.</p></body></html>\n")


def write_outputs(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, str]:
    """backtest.json (every row), backtest.html and its PNGs into out_dir (atomic files)."""
    from slidr.util import atomic_open

    from .report import clean
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = clean({"count_fields": {"population": "clicks of the held-out day per slice: clicks, "
                                                "purchasing, heuristic (robotic), robots (truth)",
                                  "invalidated": "of those, the ones with score > threshold"},
                 **result})
    with atomic_open(out / "backtest.json", "w") as f:  # compact: hundreds of rows
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    pngs = plot(result, out)
    from .report import write_html
    write_html(out / "backtest.html", html_page(result, pngs))
    return {"json": str(out / "backtest.json"), "html": str(out / "backtest.html"),
            **{p: str(out / p) for p in pngs}}
