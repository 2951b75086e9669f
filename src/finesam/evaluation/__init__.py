"""Evaluation protocols of the SAM / HQ-SAM / Pi-SAM papers, and the ``finesam eval`` command.

>>> import finesam
>>> from finesam.data import open_dataset
>>> from finesam.evaluation import evaluate, make_protocol
>>> predictor = finesam.SamPredictor(finesam.load("hq_vit_b", "sam_hq_vit_b.pth"))    # doctest: +SKIP
>>> summary = evaluate(predictor, [open_dataset("DIS-VD=/data/DIS5K/DIS-VD")],        # doctest: +SKIP
...                    make_protocol("box"), "runs/hq_b_box")

Protocols (:mod:`.protocols`): ``box``, ``box-aspect``, ``noisy-box``, ``points``, ``clicks``,
``pi-clicks``; prompt simulation in :mod:`.prompts`; storage and summaries in :mod:`.results`.
"""

from .prompts import (
    Click,
    dn_box_noise,
    error_component_clicks,
    interior_point,
    mask_box,
    next_click,
    random_points,
    seeded_rng,
    squash_image,
    squash_mask,
)
from .protocols import (
    PROTOCOLS,
    BoxProtocol,
    ClickOutcome,
    ClicksProtocol,
    MaskOutcome,
    NoisyBoxProtocol,
    PiClicksProtocol,
    PointsProtocol,
    Protocol,
    SkipSample,
    has_output_modes,
    make_protocol,
)
from .results import ResultStore, number_of_clicks_to, score, summarize
from .runner import RankFailedError, RunMismatchError, evaluate, mask_file

__all__ = [
    "PROTOCOLS",
    "BoxProtocol",
    "Click",
    "ClickOutcome",
    "ClicksProtocol",
    "MaskOutcome",
    "NoisyBoxProtocol",
    "PiClicksProtocol",
    "PointsProtocol",
    "Protocol",
    "ResultStore",
    "RankFailedError",
    "RunMismatchError",
    "SkipSample",
    "dn_box_noise",
    "error_component_clicks",
    "evaluate",
    "interior_point",
    "has_output_modes",
    "make_protocol",
    "mask_box",
    "mask_file",
    "next_click",
    "number_of_clicks_to",
    "random_points",
    "score",
    "seeded_rng",
    "squash_image",
    "squash_mask",
    "summarize",
]
