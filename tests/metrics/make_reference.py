"""Regenerate ``reference_pysodmetrics.json`` with PySODMetrics 1.6.2 (not a finesam dependency).

PySODMetrics pins versions that clash with finesam's, so run this in an isolated venv
outside the repository::

    python3 -m venv /tmp/sodenv
    /tmp/sodenv/bin/pip install pysodmetrics==1.6.2 opencv-python-headless scikit-image
    /tmp/sodenv/bin/python tests/metrics/make_reference.py [--data-root ../shared/data]

The masks come from ``metrics_recipe.py`` (numpy + OpenCV only; the tests rebuild the
same arrays and check their SHA-256 before comparing). For each case the per-image values
are stored, and for the whole list the data-set values as PySODMetrics aggregates them
(max/mean of the mean curve over images, mean of the per-image values).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import scipy
import skimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import metrics_recipe as recipe  # noqa: E402

import py_sod_metrics as sod  # noqa: E402

# thresholds t (binary map: uint8(p * 255) >= t) at which curve values are stored
CURVE_THRESHOLDS = (0, 1, 64, 128, 200, 255)


class Evaluator:
    """The PySODMetrics measures that finesam.metrics.MaskMetrics reports."""

    def __init__(self):
        self.fm = sod.FmeasureV2(
            metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fm_v1 = sod.Fmeasure(beta=0.3)  # deprecated class, cross-checked against V2
        self.wfm = sod.WeightedFmeasure(beta=1)
        self.mae = sod.MAE()
        self.sm = sod.Smeasure(alpha=0.5)
        self.em = sod.Emeasure()
        self.hce = sod.HumanCorrectionEffortMeasure(relax=5, epsilon=2.0)

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        for m in (self.fm, self.fm_v1, self.wfm, self.mae, self.sm, self.em, self.hce):
            m.step(pred, gt)

    def results(self, with_curves: bool) -> dict:
        fm = self.fm.get_results()["fm"]
        fm_v1 = self.fm_v1.get_results()["fm"]
        # PySODMetrics' curves run from threshold 255 down to 0: index 255 - t is threshold t
        f_curve, e_curve = fm["dynamic"], self.em.get_results()["em"]["curve"]
        diff = max(
            float(np.abs(f_curve - fm_v1["curve"]).max()), abs(float(fm["adaptive"]) - float(fm_v1["adp"]))
        )
        assert diff < 1e-12, f"Fmeasure and FmeasureV2 disagree by {diff}"
        out = {
            "max_f": float(f_curve.max()),
            "mean_f": float(f_curve.mean()),
            "adp_f": float(fm["adaptive"]),
            "weighted_f": float(self.wfm.get_results()["wfm"]),
            "mae": float(self.mae.get_results()["mae"]),
            "s_measure": float(self.sm.get_results()["sm"]),
            "max_e": float(e_curve.max()),
            "mean_e": float(e_curve.mean()),
            "adp_e": float(self.em.get_results()["em"]["adp"]),
            "hce": float(self.hce.get_results()["hce"]),
        }
        if with_curves:
            out["f_at"] = {str(t): float(f_curve[255 - t]) for t in CURVE_THRESHOLDS}
            out["e_at"] = {str(t): float(e_curve[255 - t]) for t in CURVE_THRESHOLDS}
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=recipe.DATA_ROOT)
    parser.add_argument("--output", type=Path, default=HERE / "reference_pysodmetrics.json")
    args = parser.parse_args()

    all_eval = Evaluator()
    cases = []
    for case in recipe.cases():
        pred, gt = recipe.make_case(case, args.data_root)
        single = Evaluator()
        single.step(pred, gt)
        all_eval.step(pred, gt)
        cases.append(
            {
                **case,
                "shape": list(gt.shape),
                "gt_sha256": recipe.digest(gt),
                "pred_sha256": recipe.digest(pred),
                "ref": single.results(with_curves=True),
            }
        )
        print(f"{case['id']:<60} hce={cases[-1]['ref']['hce']:g}", flush=True)

    reference = {
        "generator": "tests/metrics/make_reference.py (masks: tests/metrics/metrics_recipe.py)",
        "versions": {
            "pysodmetrics": "1.6.2",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
        },
        "settings": {"fm_beta2": 0.3, "wfm_beta": 1, "sm_alpha": 0.5, "hce_relax": 5, "hce_epsilon": 2.0},
        "curve_thresholds": list(CURVE_THRESHOLDS),
        "dataset": all_eval.results(with_curves=False),
    }
    # one line per case keeps the file small and diffable
    text = json.dumps(reference, indent=1)[:-2]
    text += ',\n "cases": [\n' + ",\n".join("  " + json.dumps(c) for c in cases) + "\n ]\n}\n"
    json.loads(text)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
