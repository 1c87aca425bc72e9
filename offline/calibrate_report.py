"""The calibration report: the comparison table, the one-line method choice, the figures and
the HTML page, all drawn from the result record that `calibrate.calibrate()` returns (its
`calibration`, `evaluation` and `curves`). Nothing here computes a threshold; the method is in
offline/calibrate.py."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import METHODS, chosen_method, global_thresholds


def selection_text(result: Mapping[str, Any]) -> str:
    """One line: which method is published and why (CalibConfig.method)."""
    sel = result["calibration"].get("selection") or {}
    name = {"slice": "slice-level", "global": "global@budget"}.get(chosen_method(result),
                                                                   chosen_method(result))
    return f"published method: {name} ({sel.get('mode', '-')}): {sel.get('reason', '-')}"


def comparison_rows(result: Mapping[str, Any], split: str = "test") -> list[list[Any]]:
    """[scope, method, IVR, FPR, coverage, (precision, recall)] rows for the table."""
    rows = []
    ev = result["evaluation"]
    scopes = ["overall"] + sorted(ev["slice"][split]["slices"])
    for scope in scopes:
        for name in METHODS:
            blk = ev[name][split]
            m = blk["overall"] if scope == "overall" else blk["slices"][scope]
            met = blk["coverage_floors_met"]
            if scope == "overall":
                floors = f"{sum(v is True for v in met.values())}/" \
                         f"{sum(v is not None for v in met.values())}"
            else:
                floors = {True: "yes", False: "NO", None: "-"}[met.get(scope)]
            rows.append([scope, name, m.get("threshold", None), m["ivr"], m["fpr"], m["coverage"],
                         floors, m.get("precision"), m.get("recall")])
    return rows


def table_text(result: Mapping[str, Any], split: str = "test") -> str:
    head = (f"{'scope':<12} {'method':<15} {'thr':>7} {'IVR':>7} {'FPR':>7} {'cover':>7} "
            f"{'floors':>6} {'prec':>6} {'recall':>6}")
    lines = [head, "-" * len(head)]
    for r in comparison_rows(result, split):
        lines.append(f"{r[0]:<12} {r[1]:<15} {_f(r[2], 4):>7} {_f(r[3], 4):>7} {_f(r[4], 4):>7} "
                     f"{_f(r[5], 3):>7} {r[6]:>6} {_f(r[7], 3):>6} {_f(r[8], 3):>6}")
    return "\n".join(lines)


def _correction_text(bc: Mapping[str, Any] | None) -> str:
    """One sentence on the slice-level budget correction (CalibConfig.budget_correction)."""
    if not bc or bc.get("method") == "none":
        return ""
    if "raw_ratio" not in bc:
        return f" Budget correction {bc['method']}: none applied ({bc.get('reason', '-')})."
    days = ", ".join(f"day {x['day']}: {x['slice_fpr']:.4f}" for x in bc.get("days", []))
    return (f" Budget correction {bc['method']}: slice-level fits on all but one fitted day "
            f"realised FPR {days} on the left-out day, {bc['raw_ratio']:.2f}x the budget; the "
            f"slices were solved with {bc.get('budget_solved', float('nan')):.5f}"
            + (" (the coverage floors bind)" if bc.get("floors_bind") else "") + ".")


def _selection_days_text(cal: Mapping[str, Any]) -> str:
    days = (cal.get("selection") or {}).get("days") or []
    if not days:
        return ""
    matched = all("matched_ivr" in x for x in days)
    head = ("slice IVR @ FPR vs one global threshold at that FPR; global@budget IVR @ FPR"
            if matched else "slice IVR @ FPR vs global@budget IVR @ FPR")
    return f" Left-out days ({head}): " + "; ".join(
        f"day {x['day']}: {x['slice_ivr']:.4f} @ {x['slice_fpr']:.4f} vs "
        + (f"{x['matched_ivr']:.4f}; " if matched else "")
        + f"{x['global_ivr']:.4f} @ {x['global_fpr']:.4f}" for x in days) + "."


def _f(v: Any, d: int) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{d}f}"


# ---------------------------------------------------------------- plots and html

def write_outputs(result: Mapping[str, Any], out_dir: str | Path, method: str | None = None,
                  thresholds_name: str = "thresholds.json",
                  training_report: str | Path | None = None) -> dict[str, str]:
    """thresholds.json + calibration.json + PNGs + calibration.html into out_dir (atomic files).
    method None: the method calibrate chose (CalibConfig.method); "slice", "global"
    (global@budget) or "global_knee" override it. The training report (`training_report`, or
    report.html beside) and calibration.html link to each other; both embed their figures."""
    from slidr.util import write_json

    from .report import clean
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    th = {None: result["thresholds"], "slice": result.get("slice_thresholds", result["thresholds"]),
          "global": None, "global_knee": None}[method]
    if method in ("global", "global_knee"):
        th = global_thresholds(result, "knee" if method == "global_knee" else "budget")
    write_json(out / thresholds_name, clean(th))
    write_json(out / "calibration.json", clean({"calibration": result["calibration"],
                                                 "evaluation": result["evaluation"]}))
    pngs = plot(result, out)
    html_path = out / "calibration.html"
    from .report import link_line, set_links, write_html
    write_html(html_path, html_page(result, pngs))
    _merge_into_report(out / "report.html", html_fragment(result, pngs))
    report = Path(training_report) if training_report else out / "report.html"
    if report.is_file():
        set_links(html_path, link_line("Training report", report, out))
        set_links(report, link_line("Calibration report", html_path, report.parent))
    return {"thresholds": str(out / thresholds_name), "html": str(html_path),
            "json": str(out / "calibration.json"), **{p: str(out / p) for p in pngs}}


def _merge_into_report(report: Path, fragment: str) -> None:
    """The training report gains the calibration section (curves with the chosen operating
    points, global vs slice-level side by side) when both sit in one directory (a bundle)."""
    if not report.exists():
        return
    from slidr.util import atomic_open
    page = report.read_text()
    marker = "<!-- slidr:calibration -->"
    if marker in page:
        page = page[: page.index(marker)] + "</body></html>\n"
    section = f"{marker}<h2 id='calibration'>Calibration</h2>{fragment}"
    page = page.replace("</body>", section + "</body>", 1) if "</body>" in page else page + section
    from .report import embed_images
    with atomic_open(report, "w") as f:
        f.write(embed_images(page, report.parent))


def plot(result: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_png
    cal = result["calibration"]
    names = list(result["curves"]["slices"])
    pngs = []
    if names:
        cols_n = 3
        rows_n = (len(names) + cols_n - 1) // cols_n
        fig, axes = plt.subplots(rows_n, cols_n, figsize=(4.2 * cols_n, 3.4 * rows_n),
                                 squeeze=False)
        for ax, s in zip(axes.flat, names, strict=False):
            c = result["curves"]["slices"][s]
            info = cal["slices"][s]
            fit = info["fit"]
            ff = np.linspace(info.get("fit_min_fpr", 0.0), info["fit_max_fpr"], 100)
            ax.plot(c["fpr"], c["ivr"], ".", ms=3, color="0.4", label="validation")
            ax.plot(ff, fit["a"] + fit["b"] * ff + fit["c"] * ff ** 2, "-", color="C0",
                    label=f"quadratic R²={fit['r2']:.3f}")
            if info["floor_fpr"] > 0:
                ax.axvline(info["floor_fpr"], color="C3", ls=":", label="coverage floor")
            ax.plot([info["f_star"]], [info["fitted_ivr_at_f_star"]], "o", color="C1",
                    label=f"chosen f={info['f_star']:.4f}")
            ax.set_title(f"{s}  (w={info['w']:.2f}, p={info['p']:.2f})", fontsize=9)
            ax.set_xlabel("slice FPR")
            ax.set_ylabel("slice IVR")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        pngs.append(save_png(fig, out / "calibration_slices.png"))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    g = result["curves"]["global"]
    k = result["curves"]["global_knee_index"]
    ax1.plot(g["fpr"], g["ivr"], "-", color="C0", label="overall (validation)")
    y0 = g["ivr"][0]
    ax1.plot([g["fpr"][0], g["fpr"][-1]], [y0, g["ivr"][-1]], ":", color="0.5", label="chord")
    ax1.plot([g["fpr"][k]], [g["ivr"][k]], "o", color="C3", label=f"knee t={g['threshold'][k]:.3f}")
    te = {n: result["evaluation"][n]["test"]["overall"] for n in result["evaluation"]}
    for n, mk in (("global_budget", "s"), ("slice", "*")):
        ax1.plot([te[n]["fpr"]], [te[n]["ivr"]], mk, ms=9, label=f"{n} (test)")
    ax1.set_xlabel("FPR")
    ax1.set_ylabel("IVR")
    ax1.set_title("global IVR-FPR curve and operating points")
    ax1.legend(fontsize=7)
    sl = sorted(result["evaluation"]["slice"]["test"]["slices"])
    x = np.arange(len(sl))
    for i, n in enumerate(("global_knee", "global_budget", "slice")):
        v = [result["evaluation"][n]["test"]["slices"][s]["ivr"] for s in sl]
        ax2.bar(x + (i - 1) * 0.27, v, 0.27, label=n)
    ax2.set_xticks(x, sl, rotation=30, fontsize=8)
    ax2.set_ylabel("IVR on the test day")
    ax2.set_title("global vs slice-level, per slice (held-out)")
    ax2.legend(fontsize=7)
    pngs.append(save_png(fig, out / "calibration_compare.png"))
    return pngs


def html_fragment(result: Mapping[str, Any], pngs: list[str]) -> str:
    cal = result["calibration"]
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c)) if isinstance(c, str) else _f(c, 4)}</td>" for c in r)
        + "</tr>" for r in comparison_rows(result))
    srows = "".join(
        f"<tr><td>{esc(s)}</td><td>{v['w']:.3f}</td><td>{v['p']:.3f}</td>"
        f"<td>{v['n_purchasing']}</td><td>{_f(v.get('fit', {}).get('r2'), 3)}</td>"
        f"<td>{_f(v.get('fit', {}).get('rmse'), 4)}</td>"
        f"<td>{_f(v.get('fit_min_fpr'), 4)}–{_f(v.get('fit_max_fpr'), 4)}</td>"
        f"<td>{v['floor_fpr']:.4f}</td>"
        f"<td>{_f(v.get('f_star', v.get('fpr')), 4)}</td><td>{v['threshold']:.4f}</td>"
        f"<td>{esc(v.get('fallback', 'fitted'))}</td></tr>"
        for s, v in cal["slices"].items())
    imgs = "".join(f'<img src="{esc(p)}" style="max-width:100%">' for p in pngs)
    return (
        '<section id="calibration"><h2>Calibration</h2>'
        f"<p>FPR budget {cal['fpr_budget']}, minimum robotic coverage per slice "
        f"{cal['min_coverage']:.0%} (overrides: {esc(str(cal['slice_min_coverage']) or '-')}); fitted on the validation day, evaluated on the held-out test "
        f"day. Knee: {esc(cal['knee_method'])}. Solver: {esc(str(cal['solver'].get('solver')))} "
        f"({esc(str(cal['solver'].get('status')))}). Rule: invalid iff score &gt; threshold."
        f"{esc(_correction_text(cal.get('budget_correction')))}</p>"
        f"<p><b>{esc(selection_text(result))}</b>{esc(_selection_days_text(cal))}</p>"
        "<h3>Held-out comparison</h3><p>global_budget: one threshold whose FPR on the fitted "
        "days equals the budget; global_matched: one threshold set on the held-out day itself "
        "to the FPR slice-level realised there (equal realised FPR; it sees the held-out day, "
        "so it favours global). floors: coverage floors met on the held-out day.</p>"
        "<table border=1 cellpadding=3><tr><th>scope</th><th>method"
        "</th><th>threshold</th><th>IVR</th><th>FPR</th><th>coverage</th><th>floors</th>"
        f"<th>precision</th><th>recall</th></tr>{rows}</table>"
        "<h3>Slice fits</h3><table border=1 cellpadding=3><tr><th>slice</th><th>w</th><th>p</th>"
        "<th>purchasing</th><th>R²</th><th>RMSE</th><th>fit range (FPR)</th><th>floor FPR</th><th>chosen FPR</th>"
        f"<th>threshold</th><th>how</th></tr>{srows}</table>{imgs}</section>")


def html_page(result: Mapping[str, Any], pngs: list[str]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>slidr calibration</title>"
            "</head><body>" + html_fragment(result, pngs) + "</body></html>\n")


