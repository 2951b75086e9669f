"""Markdown tables (rows: data sets, columns: measures, as in the papers) and PNG plots of a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .plot import Panel, Series, line_plot
from .results import BIOU_THRESHOLDS

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: these numbers are meaningless (pipeline check only)"

# (key, header, scale, decimals): IoU-like measures in percent as HQ-SAM, SOD measures as Pi-SAM
MASK_COLUMNS = (
    ("iou", "mIoU", 100, 1), ("biou", "mBIoU", 100, 1), ("mba", "mBA", 100, 1),
    ("max_f", "maxFβ", 1, 3), ("weighted_f", "wFβ", 1, 3), ("s_measure", "Sm", 1, 3),
    ("mean_e", "meanEφ", 1, 3), ("mae", "MAE", 1, 3), ("hce", "HCEγ", 1, 0),
)  # fmt: skip
CLICK_STEPS = (1, 3, 5, 10, 20)


def _cell(value, scale: float = 1, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:.{decimals}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _variants(summary: dict) -> list[str]:
    return list(dict.fromkeys(v for d in summary["datasets"].values() for v in d["variants"]))


def _mask_section(summary: dict, variant: str) -> list[str]:
    rows, per_dataset = [], []
    for name, data in summary["datasets"].items():
        entry = data["variants"].get(variant)
        if entry is None:
            continue
        per_dataset.append(entry["metrics"])
        rows.append([name, str(entry["n"])] + [_cell(entry["metrics"][k], s, d) for k, _, s, d in MASK_COLUMNS])
    if len(per_dataset) > 1:  # HQ-SAM also reports the average over its data sets
        means = {k: _nanmean([m[k] for m in per_dataset]) for k, _, _, _ in MASK_COLUMNS}
        rows.append(["**mean**", ""] + [_cell(means[k], s, d) for k, _, s, d in MASK_COLUMNS])
    lines = _table(["data set", "n", *(h for _, h, _, _ in MASK_COLUMNS)], rows)
    recall_rows = [
        [name, *(_cell(data["variants"][variant]["biou_recall"][f"{t:.2f}"], 100, 1) for t in BIOU_THRESHOLDS)]
        for name, data in summary["datasets"].items() if variant in data["variants"]
    ]
    lines += ["", "Recall (%) of objects with boundary IoU > t:", ""]
    lines += _table(["data set", *(f"{t:.2f}" for t in BIOU_THRESHOLDS)], recall_rows)
    return lines


def _nanmean(values: Sequence) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _clicks_section(summary: dict, max_clicks: int) -> list[str]:
    steps = [k for k in CLICK_STEPS if k <= max_clicks]
    rows = []
    for name, data in summary["datasets"].items():
        entry = data["variants"].get("clicks")
        if entry is None:
            continue
        m, curve = entry["metrics"], entry["miou_per_click"]
        rows.append([name, str(entry["n"]), _cell(m["noc85"], 1, 2), _cell(m["noc90"], 1, 2),
                     str(m["nof85"]), str(m["nof90"]), *(_cell(curve[k - 1], 100, 1) for k in steps)])
    header = ["data set", "n", "NoC@85", "NoC@90", "NoF@85", "NoF@90", *(f"mIoU@{k}" for k in steps)]
    return _table(header, rows)


def markdown(summary: dict) -> str:
    """The run's tables: one per variant, rows data sets, columns measures."""
    run = summary["run"]
    lines = [f"# finesam eval: protocol `{run['protocol']}`, model `{run.get('model', 'unnamed')}`", ""]
    if run.get("random_weights"):
        lines += [f"**{RANDOM_WEIGHTS_WARNING}.**", ""]
    lines += [f"{summary['description']}", ""]
    if run["protocol"] == "clicks":
        lines += [f"## clicks (max {run['max_clicks']})", ""] + _clicks_section(summary, run["max_clicks"])
        lines += ["", f"## after the final click ({run['max_clicks']})", ""] + _mask_section(summary, "clicks")
    else:
        variants = _variants(summary)
        if len(variants) > 1:
            rows = [[name] + [_cell(data["variants"].get(v, {}).get("metrics", {}).get("iou"), 100, 1) for v in variants]
                    for name, data in summary["datasets"].items()]
            lines += ["## mIoU per setting", ""] + _table(["data set", *variants], rows) + [""]
        for variant in variants:
            lines += [f"## {variant}", ""] + _mask_section(summary, variant) + [""]
    if summary.get("skipped"):
        lines += ["", f"Skipped {len(summary['skipped'])} image(s): "
                  + "; ".join(f"{s['dataset']}/{s['name']} ({s['reason']})" for s in summary["skipped"][:10])]
    if run["protocol"] == "clicks":
        lines += ["", "Measures: IoU after each click (ignored pixels, e.g. GrabCut's 128 band, left out); NoC@t: "
                  "clicks to reach IoU >= t (the maximum if never), NoF@t: images that never reach it; the "
                  "final-click table scores the mask after the last click with the measures below."]
    lines += ["", "Measures: mIoU / mBIoU as HQ-SAM (logits > 0 vs GT > 128, boundary dilation 0.02), mBA as "
              "CascadePSP, maxFβ (β²=0.3), wFβ, Sm, meanEφ, MAE, HCEγ as PySODMetrics / DIS; see finesam.metrics."]
    return "\n".join(lines) + "\n"


def write_plots(summary: dict, out_dir: Path) -> list[Path]:
    """recall_biou.png (mask protocols) or iou_per_click.png (clicks); returns the files written.

    A run with random weights has the warning of ``table.md`` drawn over the plot (and in its PNG text)."""
    run = summary["run"]
    warning = RANDOM_WEIGHTS_WARNING if run.get("random_weights") else None
    if run["protocol"] == "clicks":
        xs = list(range(1, run["max_clicks"] + 1))
        series = [Series(name, xs, data["variants"]["clicks"]["miou_per_click"])
                  for name, data in summary["datasets"].items() if "clicks" in data["variants"]]
        return [line_plot(out_dir / "iou_per_click.png", [Panel(f"mIoU per click ({run['model']})", series)],
                          "clicks", "mIoU", (1, max(2, run["max_clicks"])),
                          xticks=[1] + list(range(5, run["max_clicks"] + 1, 5)), warning=warning)]
    panels = []
    for name, data in summary["datasets"].items():
        series = [Series(variant, BIOU_THRESHOLDS, [entry["biou_recall"][f"{t:.2f}"] for t in BIOU_THRESHOLDS])
                  for variant, entry in data["variants"].items()]
        panels.append(Panel(f"{name} ({run['model']}, {run['protocol']})", series))
    return [line_plot(out_dir / "recall_biou.png", panels, "boundary IoU threshold", "recall", (0.5, 0.95),
                      xticks=(0.5, 0.6, 0.7, 0.8, 0.9), warning=warning)]
