"""Per-image records, their on-disk store (CSV + curves .npz, resumable) and data-set summaries.

A run directory holds:

- ``per_image.csv``: one row per (data set, image, variant, trial) with the per-image
  measures (exact float ``repr``), the image size and the prompt used, in original-image
  pixels (column ``prompt_original_px``, see :data:`.protocols.PROMPT_FRAME`); the ``clicks``
  protocol has the IoU after each click and every measure of the mask after the final click;
- ``curves.npz``: per row, the image's F-measure and E-measure curves (256 thresholds), which
  the data-set max-F / mean-F / max-E / mean-E need (the mean curve over images);
- summaries are always recomputed from these two files, so an interrupted and resumed run
  gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..data import Sample
from ..errors import InvalidInputError
from ..metrics import METRIC_KEYS, MaskMetrics
from ..outputs import write_atomically
from .protocols import ClickOutcome, MaskOutcome, Protocol

PROMPT_COLUMN = "prompt_original_px"  # the column's name says the frame of its coordinates

ID_COLUMNS = ("dataset", "name", "variant", "trial", "height", "width")
#: per-image values averaged over images (the rest of METRIC_KEYS come from the mean curves)
AVERAGED_KEYS = ("iou", "biou", "mba", "adp_f", "weighted_f", "mae", "s_measure", "adp_e", "hce")
CURVE_KEYS = ("max_f", "mean_f", "max_e", "mean_e")
BIOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95
NOC_THRESHOLDS = (0.85, 0.90)
CURVES_FLUSH_SECONDS = 30.0


def columns_for(protocol: Protocol) -> list[str]:
    """CSV header for a protocol's rows (clicks: NoC, IoU per click, then the measures at the final click)."""
    measures = list(METRIC_KEYS)
    if protocol.kind == "clicks":
        measures = ["noc85", "noc90"] + [f"iou_{k}" for k in range(1, protocol.max_clicks + 1)] + measures
    return [*ID_COLUMNS, *measures, PROMPT_COLUMN]


@dataclass
class Record:
    """One CSV row (``values``) and the (2, 256) F / E curves of its (final) mask."""

    values: dict
    curves: np.ndarray | None = None

    @property
    def key(self) -> str:
        v = self.values
        return record_key(v["dataset"], v["name"], v["variant"], v["trial"])


def record_key(dataset: str, name: str, variant: str, trial) -> str:
    return f"{dataset}\t{name}\t{variant}\t{int(trial)}"


def number_of_clicks_to(ious: Sequence[float], threshold: float) -> int:
    """NoC: 1-based index of the first click with IoU >= threshold; ``len(ious)`` if never."""
    for index, value in enumerate(ious, start=1):
        if value >= threshold:
            return index
    return len(ious)


def score(outcome, sample: Sample, dataset: str, hce: bool = True) -> Record:
    """Measure one protocol outcome against the sample's ground truth (a click run: its final mask)."""
    values = {"dataset": dataset, "name": sample.name, "variant": outcome.variant, "trial": outcome.trial,
              "height": sample.gt.shape[0], "width": sample.gt.shape[1], PROMPT_COLUMN: outcome.prompt}
    if isinstance(outcome, ClickOutcome):
        values.update({f"noc{round(t * 100)}": number_of_clicks_to(outcome.ious, t) for t in NOC_THRESHOLDS})
        values.update({f"iou_{k}": float(v) for k, v in enumerate(outcome.ious, start=1)})
    elif not isinstance(outcome, MaskOutcome):
        raise InvalidInputError(f"score expects a MaskOutcome or ClickOutcome, got {type(outcome).__name__}")
    if outcome.mask is None:
        raise InvalidInputError(f"{dataset}/{sample.name}: the {outcome.variant!r} outcome has no mask to score "
                                "(a ClickOutcome needs the mask after its final click)")
    metrics = MaskMetrics(hce=hce)
    measured = metrics.update(outcome.mask, sample.gt, sample.ignore)
    curves = metrics.curves()
    return Record({**values, **{k: float(measured[k]) for k in METRIC_KEYS}}, np.stack([curves["f"], curves["e"]]))


def _parse(value: str, column: str):
    if column in ("dataset", "name", "variant", PROMPT_COLUMN):
        return value
    if column in ("trial", "height", "width", "noc85", "noc90"):
        return int(value)
    return float(value)


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class ResultStore:
    """Append-only per-image results in ``out_dir``, resumable after an interruption.

    An image counts as done when all its ``rows_per_image`` rows are in the CSV and (for
    mask protocols) all their curves are in ``curves.npz``; anything else is dropped on
    :meth:`open` and recomputed.
    """

    def __init__(self, out_dir: str | os.PathLike, columns: Sequence[str], rows_per_image: int, with_curves: bool) -> None:
        self.dir = Path(out_dir)
        self.csv_path = self.dir / "per_image.csv"
        self.curves_path = self.dir / "curves.npz"
        self.columns = list(columns)
        self.rows_per_image = rows_per_image
        self.with_curves = with_curves
        self.rows: list[dict] = []
        self.curves: dict[str, np.ndarray] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        self._file = None

    # --- reading and cleaning ------------------------------------------------------------------
    def open(self) -> set[tuple[str, str]]:
        """Load what a previous run left, keep complete images only; returns their (dataset, name)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rows = self._read_rows()
        self.curves = self._read_curves() if self.with_curves else {}
        per_image: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            per_image.setdefault((row["dataset"], row["name"]), []).append(row)
        done = set()
        for image, image_rows in per_image.items():
            complete = len({(r["variant"], r["trial"]) for r in image_rows}) == self.rows_per_image
            if self.with_curves:
                complete &= all(record_key(*image, r["variant"], r["trial"]) in self.curves for r in image_rows)
            if complete:
                done.add(image)
        self.rows = [r for r in rows if (r["dataset"], r["name"]) in done]
        kept = {record_key(r["dataset"], r["name"], r["variant"], r["trial"]) for r in self.rows}
        self.curves = {k: v for k, v in self.curves.items() if k in kept}
        self._rewrite_csv()
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")
        return done

    def _read_rows(self) -> list[dict]:
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return []
            if header != self.columns:
                raise InvalidInputError(
                    f"{self.csv_path} has other columns than this run ({len(header)} vs {len(self.columns)}): it "
                    "comes from another protocol or version; use another `out_dir` or `overwrite`",
                    parameters=("out_dir", "overwrite"),
                )
            rows = []
            for fields in reader:
                if len(fields) != len(self.columns):  # a line cut by an interruption
                    continue
                try:
                    rows.append({c: _parse(v, c) for c, v in zip(self.columns, fields)})
                except ValueError:
                    continue
            return rows

    def _read_curves(self) -> dict[str, np.ndarray]:
        if not self.curves_path.is_file():
            return {}
        try:
            with np.load(self.curves_path, allow_pickle=False) as data:
                return {str(k): v for k, v in zip(data["keys"], data["curves"])}
        except (OSError, ValueError, KeyError):  # a file cut by an interruption: recompute
            return {}

    def _rewrite_csv(self) -> None:
        def write(temporary: str) -> None:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(self.columns)
                for row in self.rows:
                    writer.writerow([_text(row[c]) for c in self.columns])

        write_atomically(self.csv_path, write)
        if self.with_curves:
            self._write_curves()

    # --- writing -------------------------------------------------------------------------------
    def add(self, records: Iterable[Record]) -> None:
        """Append all rows of one image (one write, flushed); curves are saved every 30 s."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for record in records:
            row = {c: record.values[c] for c in self.columns}
            self.rows.append(row)
            writer.writerow([_text(row[c]) for c in self.columns])
            if self.with_curves:
                self.curves[record.key] = record.curves
                self._dirty = True
        self._file.write(buffer.getvalue())
        self._file.flush()
        if self._dirty and time.monotonic() - self._last_flush > CURVES_FLUSH_SECONDS:
            self._write_curves()

    def _write_curves(self) -> None:
        keys = sorted(self.curves)
        curves = np.stack([self.curves[k] for k in keys]) if keys else np.zeros((0, 2, 256))
        def write(temporary: str) -> None:
            with open(temporary, "wb") as handle:  # a handle: given a path, np.savez would append .npz
                np.savez(handle, keys=np.array(keys, dtype=str), curves=curves)

        write_atomically(self.curves_path, write)
        self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.with_curves and self._dirty:
            self._write_curves()
        if self._file is not None:
            self._file.close()
            self._file = None


# --- summaries ---------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()) if array.size else float("nan")


def summarize_masks(rows: Sequence[dict], curves: Sequence[np.ndarray]) -> dict:
    """Data-set scores of one variant, as :meth:`MaskMetrics.compute` (plus BIoU recall).

    rows: per-image rows; curves: their (2, 256) F / E curves in the same order.
    """
    mean_curves = np.mean(np.stack(curves).astype(np.float64), axis=0)
    metrics = {k: _mean([r[k] for r in rows]) for k in AVERAGED_KEYS}
    metrics.update({"max_f": float(mean_curves[0].max()), "mean_f": float(mean_curves[0].mean()),
                    "max_e": float(mean_curves[1].max()), "mean_e": float(mean_curves[1].mean())})
    biou = np.array([r["biou"] for r in rows])
    return {
        "n": len(rows),
        "metrics": {k: metrics[k] for k in METRIC_KEYS},
        "biou_recall": {f"{t:.2f}": float(np.mean(biou > t)) for t in BIOU_THRESHOLDS},
    }


def summarize_clicks(rows: Sequence[dict], curves: Sequence[np.ndarray], max_clicks: int) -> dict:
    """Every measure of :func:`summarize_masks` at the final click, plus NoC@85/90 (mean), NoF
    (images never reaching the IoU) and the mean IoU after each click."""
    ious = np.array([[r[f"iou_{k}"] for k in range(1, max_clicks + 1)] for r in rows], dtype=np.float64)
    summary = summarize_masks(rows, curves)
    for threshold in NOC_THRESHOLDS:
        tag = round(threshold * 100)
        summary["metrics"][f"noc{tag}"] = _mean([r[f"noc{tag}"] for r in rows])
        summary["metrics"][f"nof{tag}"] = int(np.sum(~(ious >= threshold).any(axis=1)))
    summary["miou_per_click"] = [float(v) for v in ious.mean(axis=0)]
    return summary


def summarize(store_rows: Sequence[dict], curves: dict[str, np.ndarray], protocol: Protocol,
              selection: dict[str, Sequence[str]]) -> dict:
    """Per data set and variant summaries over the selected images (``dataset -> names``)."""
    wanted = {(d, n) for d, names in selection.items() for n in names}
    result: dict[str, dict] = {}
    for dataset in selection:
        rows = [r for r in store_rows if r["dataset"] == dataset and (dataset, r["name"]) in wanted]
        variants: dict[str, dict] = {}
        for variant in dict.fromkeys(v for v, _ in protocol.variants()):
            variant_rows = [r for r in rows if r["variant"] == variant]
            if not variant_rows:
                continue
            variant_curves = [curves[record_key(dataset, r["name"], variant, r["trial"])] for r in variant_rows]
            if protocol.kind == "clicks":
                variants[variant] = summarize_clicks(variant_rows, variant_curves, protocol.max_clicks)
            else:
                variants[variant] = summarize_masks(variant_rows, variant_curves)
        result[dataset] = {"images": len({r["name"] for r in rows}), "variants": variants}
    return result


def json_ready(value):
    """NaN / inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
