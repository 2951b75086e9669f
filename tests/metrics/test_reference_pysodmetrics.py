"""finesam.metrics vs PySODMetrics 1.6.2 on real masks (values in reference_pysodmetrics.json).

The masks are rebuilt by metrics_recipe.py and checked against the stored SHA-256 first;
make_reference.py (run in an isolated venv) produced the reference values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import metrics_recipe as recipe
from finesam.metrics import (
    METRIC_KEYS,
    MaskMetrics,
    adaptive_emeasure,
    adaptive_fmeasure,
    emeasure_curve,
    fmeasure_curve,
    human_correction_effort,
    mae,
    s_measure,
    weighted_fmeasure,
)

REFERENCE = json.loads((Path(__file__).with_name("reference_pysodmetrics.json")).read_text())
TOL = 1e-6
SOD_KEYS = ("max_f", "mean_f", "adp_f", "weighted_f", "mae", "s_measure", "max_e", "mean_e", "adp_e", "hce")

pytestmark = pytest.mark.skipif(
    not recipe.DATA_ROOT.is_dir(), reason=f"shared test data not found at {recipe.DATA_ROOT}"
)


@pytest.fixture(scope="module")
def scored():
    """Every reference case scored once through MaskMetrics: (cases, per-image dicts, metrics)."""
    metrics = MaskMetrics()
    cases, per_image = [], []
    for case in REFERENCE["cases"]:
        pred, gt = recipe.make_case(case)
        cases.append((case, pred, gt))
        per_image.append(metrics.update(pred, gt))
    return cases, per_image, metrics


def test_reference_file_is_complete():
    assert [c["id"] for c in REFERENCE["cases"]] == [c["id"] for c in recipe.cases()]
    assert REFERENCE["versions"]["pysodmetrics"] == "1.6.2"


def test_masks_are_regenerated_byte_identically(scored):
    cases, _, _ = scored
    for case, pred, gt in cases:
        assert list(gt.shape) == case["shape"], case["id"]
        assert recipe.digest(gt) == case["gt_sha256"], f"{case['id']}: GT differs from the reference's"
        assert recipe.digest(pred) == case["pred_sha256"], (
            f"{case['id']}: prediction differs from the reference's (OpenCV/numpy changed the recipe?)"
        )


def test_per_image_values_match(scored):
    cases, per_image, _ = scored
    worst = {k: 0.0 for k in SOD_KEYS}
    for (case, _, _), ours in zip(cases, per_image):
        ref = case["ref"]
        assert ours["hce"] == ref["hce"], f"{case['id']}: HCE {ours['hce']} != {ref['hce']}"
        for k in SOD_KEYS:
            worst[k] = max(worst[k], abs(ours[k] - ref[k]))
            assert ours[k] == pytest.approx(ref[k], abs=TOL), f"{case['id']}: {k}"
    assert max(worst.values()) < TOL, worst


def test_curves_match_at_sampled_thresholds(scored):
    cases, _, _ = scored
    for case, pred, gt in cases:
        f, e = fmeasure_curve(pred, gt), emeasure_curve(pred, gt)
        assert f.shape == e.shape == (256,)
        for t in REFERENCE["curve_thresholds"]:
            assert f[t] == pytest.approx(case["ref"]["f_at"][str(t)], abs=TOL), (case["id"], t)
            assert e[t] == pytest.approx(case["ref"]["e_at"][str(t)], abs=TOL), (case["id"], t)


def test_dataset_aggregates_match(scored):
    _, _, metrics = scored
    result = metrics.compute()
    assert tuple(result) == METRIC_KEYS
    for k in SOD_KEYS:
        assert result[k] == pytest.approx(REFERENCE["dataset"][k], abs=TOL), k


def test_per_image_functions_agree_with_accumulator(scored):
    cases, per_image, _ = scored
    for (case, pred, gt), ours in list(zip(cases, per_image))[:11]:  # the ecssd/0001 cases
        f, e = fmeasure_curve(pred, gt), emeasure_curve(pred, gt)
        assert ours["max_f"] == f.max() and ours["mean_f"] == f.mean()
        assert ours["max_e"] == e.max() and ours["mean_e"] == e.mean()
        assert ours["adp_f"] == adaptive_fmeasure(pred, gt)
        assert ours["adp_e"] == adaptive_emeasure(pred, gt)
        assert ours["weighted_f"] == weighted_fmeasure(pred, gt)
        assert ours["mae"] == mae(pred, gt)
        assert ours["s_measure"] == s_measure(pred, gt)
        assert ours["hce"] == human_correction_effort(pred, gt)


def test_bool_and_float_predictions_score_like_uint8(scored):
    cases, per_image, _ = scored
    for (case, pred, gt), ours in zip(cases, per_image):
        if case["gt"] != "ecssd/0002":
            continue
        as_float = MaskMetrics().update(pred / 255.0, gt)  # p = v / 255 exactly as for uint8
        for k in SOD_KEYS:
            assert as_float[k] == ours[k], (case["id"], k)
        if np.isin(pred, (0, 255)).all():
            as_bool = MaskMetrics().update(pred > 128, gt > 128)
            assert as_bool == ours, case["id"]
