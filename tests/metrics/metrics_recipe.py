"""Deterministic (seeded) test masks for the metric reference values; numpy + OpenCV only.

Shared by ``make_reference.py`` (run in an isolated venv with PySODMetrics) and the tests
(run with finesam's venv), so both sides score byte-identical arrays; the reference file
stores a SHA-256 of every array so that a drift (e.g. another OpenCV blur) is caught
before any metric is compared.

A GT id is ``"ecssd/<stem>"``, ``"dis/<stem>@<k>"`` (DIS5K mask block-averaged by ``k``
in both axes, integer arithmetic) or ``"zeros:HxW"`` / ``"full:HxW"`` (synthetic).
A prediction spec is a dict ``{"kind": ..., "seed": ..., ...}`` applied to a *source* GT
(``src``, defaults to the GT itself); see :func:`make_pred`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

ECSSD_STEMS = ("0001", "0002", "0003", "0004", "0005")
DIS_STEM = "4#Architecture#10#Pavilion#5795028920_08884db993_o"
DIS_FACTOR = 5

PRED_SPECS = (
    {"kind": "perfect"},
    {"kind": "blur", "sigma": 3.0},
    {"kind": "blur_shift", "sigma": 2.0, "seed": 11, "max_shift": 12},
    {"kind": "erode", "size": 9},
    {"kind": "dilate", "size": 11},
    {"kind": "noisy", "sigma": 2.0, "noise": 0.2, "seed": 12},
    {"kind": "salt_pepper", "fraction": 0.003, "seed": 13},
    {"kind": "blocks", "count": 4, "seed": 14},
    {"kind": "low_contrast", "sigma": 4.0, "lo": 60, "span": 80},
    {"kind": "empty"},
    {"kind": "full"},
)

# predictions scored against the synthetic all-background / all-foreground GTs
SYNTHETIC_PRED_SPECS = (
    {"kind": "empty"},
    {"kind": "full"},
    {"kind": "blur", "sigma": 3.0},
    {"kind": "noisy", "sigma": 2.0, "noise": 0.2, "seed": 15},
)


def cases() -> list[dict]:
    """The reference cases, in order: ``{"id", "gt", "src", "pred"}``."""
    out = []
    gts = [f"ecssd/{s}" for s in ECSSD_STEMS] + [f"dis/{DIS_STEM}@{DIS_FACTOR}"]
    for gt in gts:
        for spec in PRED_SPECS:
            out.append({"id": f"{gt}|{spec['kind']}", "gt": gt, "src": gt, "pred": dict(spec)})
    for gt in ("zeros:400x267", "full:400x267"):
        for spec in SYNTHETIC_PRED_SPECS:
            out.append({"id": f"{gt}|{spec['kind']}", "gt": gt, "src": "ecssd/0001", "pred": dict(spec)})
    return out


def _read_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise FileNotFoundError(path)
    return m


def _block_mean(m: np.ndarray, k: int) -> np.ndarray:
    h, w = (m.shape[0] // k) * k, (m.shape[1] // k) * k
    s = m[:h, :w].astype(np.int64).reshape(h // k, k, w // k, k).sum(axis=(1, 3))
    return ((s + (k * k) // 2) // (k * k)).astype(np.uint8)  # rounded integer mean


def load_gt(gt_id: str, root: Path = DATA_ROOT) -> np.ndarray:
    """uint8 GT mask ``(H, W)`` for a GT id."""
    if gt_id.startswith(("zeros:", "full:")):
        kind, size = gt_id.split(":")
        h, w = (int(v) for v in size.split("x"))
        return np.full((h, w), 0 if kind == "zeros" else 255, np.uint8)
    if gt_id.startswith("ecssd/"):
        return _read_mask(root / "ecssd" / "gt" / f"{gt_id[6:]}.png")
    if gt_id.startswith("dis/"):
        stem, k = gt_id[4:].rsplit("@", 1)
        return _block_mean(_read_mask(root / "dis5k_samples" / "gt" / f"{stem}.png"), int(k))
    raise ValueError(f"unknown GT id {gt_id!r}")


def _blur(m: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) with zero fill (no wrap-around)."""
    h, w = m.shape
    out = np.zeros_like(m)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = m[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def make_pred(src: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 prediction ``(H, W)`` derived from the uint8 GT ``src`` by ``spec``."""
    kind = spec["kind"]
    binary = np.where(src > 128, 255, 0).astype(np.uint8)
    rng = np.random.default_rng(spec.get("seed", 0))
    if kind == "perfect":
        return src.copy()
    if kind == "empty":
        return np.zeros_like(src)
    if kind == "full":
        return np.full_like(src, 255)
    if kind == "blur":
        return _blur(binary, spec["sigma"])
    if kind == "blur_shift":
        dy, dx = (int(v) for v in rng.integers(-spec["max_shift"], spec["max_shift"] + 1, size=2))
        return _shift(_blur(binary, spec["sigma"]), dy, dx)
    if kind in ("erode", "dilate"):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (spec["size"], spec["size"]))
        op = cv2.erode if kind == "erode" else cv2.dilate
        return op(binary, kernel)
    if kind == "noisy":
        p = 0.15 + 0.7 * (_blur(binary, spec["sigma"]) / 255.0)
        p = np.clip(p + rng.normal(0.0, spec["noise"], size=src.shape), 0.0, 1.0)
        return np.round(p * 255).astype(np.uint8)
    if kind == "salt_pepper":
        flip = rng.random(src.shape) < spec["fraction"]
        return np.where(flip, 255 - binary, binary).astype(np.uint8)
    if kind == "blocks":
        out = binary.copy()
        h, w = src.shape
        for _ in range(spec["count"]):
            bh, bw = int(rng.integers(h // 16, h // 5)), int(rng.integers(w // 16, w // 5))
            y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            out[y : y + bh, x : x + bw] = 255 - out[y : y + bh, x : x + bw]
        return out
    if kind == "low_contrast":
        b = _blur(binary, spec["sigma"]).astype(np.int64)
        return (spec["lo"] + b * spec["span"] // 255).astype(np.uint8)
    raise ValueError(f"unknown prediction kind {kind!r}")


def make_case(case: dict, root: Path = DATA_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)``, both uint8 ``(H, W)``, for one entry of :func:`cases`."""
    gt = load_gt(case["gt"], root)
    src = gt if case["src"] == case["gt"] else load_gt(case["src"], root)
    return make_pred(src, case["pred"]), gt


def digest(a: np.ndarray) -> str:
    """Short SHA-256 of an array's shape, dtype and bytes."""
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
