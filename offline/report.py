"""The training report: metrics.json, PNG plots (matplotlib Agg) and one static report.html."""

from __future__ import annotations

import base64
import html
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from slidr.util import atomic_open, write_json

SCORERS = ("model", "logistic", "velocity")
COLOURS = {"model": "#1f77b4", "logistic": "#ff7f0e", "velocity": "#2ca02c"}


def clean(o: Any) -> Any:
    """NaN/inf -> None and numpy -> Python, so metrics.json is strict JSON."""
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return clean(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, dpi: int = 90, bbox_inches: str | None = "tight") -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches=bbox_inches)


def save_png(fig: Any, path: Path, dpi: int = 90) -> str:
    """tight_layout, write the PNG atomically, close the figure; -> the file name."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    _save(fig, path, dpi, bbox_inches=None)
    plt.close(fig)
    return path.name


_IMG = re.compile(r"""(<img\s[^>]*?src=)(["'])([^"'<>]+?\.(png|svg))\2""", re.I)


def embed_images(page: str, base: Path) -> str:
    """Every <img src="x.png"> whose file is in `base` becomes a data: URI, so the page is one
    self-contained file that can be mailed or archived (the PNG files stay beside it)."""
    def sub(m: re.Match[str]) -> str:
        f = base / m.group(3)
        if "/" in m.group(3) or not f.is_file():
            return m.group(0)
        mime = "image/svg+xml" if m.group(4).lower() == "svg" else "image/png"
        data = base64.b64encode(f.read_bytes()).decode("ascii")
        return f"{m.group(1)}{m.group(2)}data:{mime};base64,{data}{m.group(2)}"
    return _IMG.sub(sub, page)


def write_html(path: Path, page: str) -> None:
    """A report page, its figures embedded, written atomically."""
    with atomic_open(path, "w") as f:
        f.write(embed_images(page, path.parent))


def link_line(label: str, target: Path, page_dir: Path) -> str:
    """<p class='links'> with a relative link from a page in page_dir to `target`."""
    rel = os.path.relpath(target, page_dir)
    return (f"<p class='links'>{html.escape(label)}: <a href='{html.escape(rel)}'>"
            f"{html.escape(rel)}</a></p>")


def set_links(path: Path, line: str) -> None:
    """Put (or replace) the links line under the page's <h1> and rewrite it atomically."""
    page = path.read_text()
    page = re.sub(r"<!-- slidr:links -->.*?<!-- /slidr:links -->", "", page, flags=re.S)
    block = f"<!-- slidr:links -->{line}<!-- /slidr:links -->"
    i = page.find("</h1>")
    page = page[:i + 5] + block + page[i + 5:] if i >= 0 else block + page
    with atomic_open(path, "w") as f:
        f.write(page)


def plot_curves(curves: dict[str, Any], fpr_target: float, out: Path) -> list[str]:
    plt = _plt()
    files = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name in SCORERS:
        c = curves[name]["overall"]
        ax.plot(c["fpr"], c["ivr"], label=name, color=COLOURS[name])
    ax.axvline(fpr_target, ls=":", color="grey", label=f"FPR target {fpr_target:g}")
    ax.set_xlabel("FPR (invalidated purchasing clicks)")
    ax.set_ylabel("IVR (invalidated clicks)")
    ax.set_title("IVR-FPR, all traffic, test day")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "ivr_fpr_overall.png")
    plt.close(fig)
    files.append("ivr_fpr_overall.png")

    names = sorted(k for k in curves["model"] if k != "overall")
    if names:
        cols = 3
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for i, sn in enumerate(names):
            ax = axes[i // cols][i % cols]
            for name in SCORERS:
                if sn in curves[name]:
                    c = curves[name][sn]
                    ax.plot(c["fpr"], c["ivr"], label=name, color=COLOURS[name])
            ax.axvline(fpr_target, ls=":", color="grey")
            ax.set_title(sn)
            ax.set_xlabel("slice FPR")
            ax.set_ylabel("slice IVR")
            ax.grid(alpha=0.3)
        for j in range(len(names), rows * cols):
            axes[j // cols][j % cols].axis("off")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("IVR-FPR per slice, test day (each curve on the slice's own clicks)")
        fig.tight_layout()
        _save(fig, out / "ivr_fpr_slices.png")
        plt.close(fig)
        files.append("ivr_fpr_slices.png")
    return files


def plot_distributions(scores: dict[str, np.ndarray], is_te: np.ndarray, cols: dict[str, Any],
                       out: Path) -> list[str]:
    plt = _plt()
    files = []
    groups = [("weak label", "scores_by_weak_label.png",
               {"human (weak)": cols["weak_label"][is_te] == 1,
                "non-human (weak)": cols["weak_label"][is_te] == 0})]
    if cols.get("is_robot") is not None:
        r = cols["is_robot"][is_te]
        groups.append(("ground truth", "scores_by_truth.png", {"human (true)": ~r,
                                                               "robot (true)": r}))
    for title, fname, masks in groups:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        for ax, name in zip(axes, SCORERS, strict=True):
            s = scores[name][is_te].astype(np.float64)
            if name == "velocity":
                s = np.log1p(s)
            bins = np.linspace(np.min(s), np.max(s) + 1e-9, 50)
            for lab, m in masks.items():
                if m.any():
                    ax.hist(s[m], bins=bins, alpha=0.55, density=True, label=lab)
            ax.set_yscale("log")
            ax.set_title(name + (" (log1p clicks/min)" if name == "velocity" else " (robot prob)"))
            ax.legend(fontsize=8)
        fig.suptitle(f"score distributions on the test day, by {title}")
        fig.tight_layout()
        _save(fig, out / fname)
        plt.close(fig)
        files.append(fname)
    return files


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4f}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def write(out: Path, doc: dict[str, Any], curves: dict[str, Any], scores: dict[str, np.ndarray],
          is_te: np.ndarray, cols: dict[str, Any], meta: dict[str, Any]) -> None:
    doc = clean(doc)
    write_json(out / "metrics.json", doc)
    pngs = plot_curves(curves, doc["fpr_target"], out) + plot_distributions(scores, is_te, cols,
                                                                            out)
    truth = cols.get("is_robot") is not None
    keys = ["ivr", "fpr", "coverage", "auc", "weak_precision", "weak_recall"]
    if truth:
        keys += ["precision", "recall", "auc_true"]
    parts = ["<!doctype html><meta charset='utf-8'><title>slidr training report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;"
             "padding:3px 7px;text-align:right}th{background:#eee}.note{background:#fff7d6;"
             "padding:.6em 1em;border-left:4px solid #e0b000}</style>",
             "<h1>slidr training report</h1>",
             f"<p class='note'><b>What these numbers mean.</b> {html.escape(doc['source']['text'])}</p>",
             f"<p>{meta['n_clicks']:,} clicks; split: {html.escape(meta['split']['rule'])}; "
             f"train {meta['split']['n_train']:,} / validation {meta['split']['n_val']:,} / test "
             f"{meta['split']['n_test']:,} clicks. Weak labels: {html.escape(meta['label_source'])}"
             f" (human share {meta['weak_label_human_share']:.3f}). Feature spec "
             f"{meta['feature_spec_hash']}.</p>",
             "<h2>Operating point</h2>",
             f"<p>Each scorer's threshold is set on the <b>test day</b> so that its overall FPR "
             f"= {doc['fpr_target']:g} (invalid iff score &gt; threshold); so the IVR columns "
             "compare scorers at equal FPR. Per slice, <i>IVR@FPR target</i> uses the slice's "
             "own threshold at the same FPR target (the equal-FPR comparison inside a slice). "
             f"Coverage: {html.escape(doc['coverage_definition'])}. AUC: robot score vs weak "
             "label (non-human = positive).</p>"]
    rows = [[n, doc[n]["threshold"]] + [doc[n]["overall"].get(k) for k in keys]
            for n in SCORERS]
    parts.append("<h2>All traffic, test day</h2>" + _table(["scorer", "threshold"] + keys, rows))
    rows = [[n, doc[n]["threshold_from_validation"]["threshold"]]
            + [doc[n]["threshold_from_validation"].get(k) for k in
               ("ivr", "fpr", "coverage", "precision", "recall")] for n in SCORERS]
    parts.append("<h3>Deployable variant: threshold set on the validation day, applied to test"
                 "</h3>" + _table(["scorer", "threshold", "ivr", "fpr", "coverage", "precision",
                                   "recall"], rows))
    parts.append(f"<img src='{pngs[0]}'>")
    parts.append("<h2>Per slice, test day</h2>")
    skeys = ["ivr_at_fpr_target", "ivr", "fpr", "coverage", "auc"] + (
        ["precision", "recall"] if truth else [])
    rows = []
    for sn in sorted(doc["model"]["slices"]):
        for n in SCORERS:
            m = doc[n]["slices"][sn]
            rows.append([sn, n, m["n"], m["n_purchasing"]] + [m.get(k) for k in skeys])
    parts.append(_table(["slice", "scorer", "clicks", "purchasing"]
                        + [k.replace("_", " ") for k in skeys], rows))
    comp = doc["comparison"]
    hdr = ["where", "baseline", "model IVR", "baseline IVR", "model wins", "within noise"]
    if truth:
        hdr += ["model true precision", "baseline true precision", "model true recall",
                "baseline true recall"]
    rows = []
    for base in ("logistic", "velocity"):
        for where, c in comp[base].items():
            r = [where, base, c["model_ivr"], c["baseline_ivr"], c["model_wins"],
                 c["within_noise"]]
            if truth:
                r += [c.get("model_precision"), c.get("baseline_precision"),
                      c.get("model_recall"), c.get("baseline_recall")]
            rows.append(r)
    parts.append("<h3>Model vs baselines: IVR at FPR = target (each on its own threshold)</h3>"
                 "<p><i>within noise</i>: the IVR ranges at FPR = target x (1 &plusmn; "
                 "1/sqrt(target x purchasing clicks)) overlap, i.e. the difference is smaller "
                 "than what the sampling noise of the FPR estimate alone can move.</p>"
                 + _table(hdr, rows))
    if len(pngs) > 1 and pngs[1] == "ivr_fpr_slices.png":
        parts.append("<img src='ivr_fpr_slices.png'>")
    if truth and doc.get("label_quality"):
        lq = doc["label_quality"]
        parts.append("<h2>Weak labels vs ground truth (test day)</h2>")
        parts.append(_table(["measure", "value"], [[k.replace("_", " "), v]
                                                   for k, v in lq.items()]))
        rows = [[n, doc[n]["overall"].get("weak_precision"), doc[n]["overall"].get("precision"),
                 doc[n]["overall"].get("weak_recall"), doc[n]["overall"].get("recall"),
                 doc[n]["overall"].get("auc"), doc[n]["overall"].get("auc_true")]
                for n in SCORERS]
        parts.append("<p>Where the weak-label view and the truth disagree: the weak label "
                     "calls every non-purchasing, low-RFM click non-human, so weak precision "
                     "understates true precision and weak recall is measured against a far "
                     "larger 'non-human' set than the real robots.</p>" + _table(
                         ["scorer", "weak precision", "true precision", "weak recall",
                          "true recall", "AUC (weak)", "AUC (truth)"], rows))
    for p in pngs:
        if p.startswith("scores_"):
            parts.append(f"<img src='{p}' style='max-width:100%'>")
    par = meta.get("onnx_parity", {})
    parts.append("<h2>Model</h2>" + _table(["item", "value"], [
        ["architecture", meta["model"]["arch"]],
        ["best epoch / epochs run", f"{meta['model']['best_epoch']} / "
                                    f"{meta['model']['epochs_run']}"],
        ["sample weights", meta["sample_weights"]],
        ["ONNX vs torch max abs diff", par.get("max_abs_diff")],
        ["replay clicks/s", meta["replay"]["clicks_per_s"]],
        ["replay store", meta["replay"]["store"]]]))
    write_html(out / "report.html", "\n".join(parts) + "\n")
