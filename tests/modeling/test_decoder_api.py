"""A decoder's declaration answers the questions generic code asks of it (HQ output modes,
whether multimask matters, the ONNX metadata form), and the built-in decoders have the decoder
interface written down in ``decoder_api``."""

from __future__ import annotations

import json

import pytest
import torch

from finesam.errors import InvalidInputError
from finesam.modeling.contracts.decoder_api import ClickCorrectingDecoder, DecoderCapabilities, MaskDecoderInterface, OutputMode
from finesam.onnx.export import DEFAULT_LAYOUT, GraphMode, _metadata, export_mode
from finesam.registry import REGISTRY

BUILT_IN = ("mobile_sam", "hq_vit_tiny", "pi_vit_b")


def declared(name: str) -> DecoderCapabilities:
    return REGISTRY[name].capabilities


@pytest.mark.parametrize("name", BUILT_IN)
def test_metadata_round_trip_equals_what_the_onnx_export_writes(name):
    with torch.device("meta"):
        model = REGISTRY[name].build()
    model = model.to_empty(device="cpu")  # values do not matter: only the declaration is read
    written = _metadata(model, GraphMode(OutputMode()), name, True, 17, DEFAULT_LAYOUT, None)["capabilities"]
    capabilities = declared(name)
    assert capabilities.to_metadata() == written
    assert DecoderCapabilities.from_metadata(json.loads(json.dumps(written))) == capabilities


def test_metadata_without_a_key_is_refused_with_the_fix():
    values = declared("hq_vit_tiny").to_metadata()
    del values["output_modes"]
    with pytest.raises(InvalidInputError, match=r"lacks \['output_modes'\].*export the model again"):
        DecoderCapabilities.from_metadata(values)


def test_output_modes_are_checked_with_the_allowed_ones_listed():
    hq, sam = declared("hq_vit_tiny"), declared("mobile_sam")
    assert hq.default_output_mode == "sum" and sam.default_output_mode is None
    for mode in (None, "sum", "hq_only", "sam_only", "candidates"):
        hq.check_output_mode(mode)
    sam.check_output_mode(None)
    with pytest.raises(InvalidInputError, match=r"hq_output 'sum' is not an output mode of mobile_sam; allowed: none \(it is not an HQ model\)"):
        sam.check_output_mode("sum", model="mobile_sam")
    with pytest.raises(InvalidInputError, match=r"--hq-output 'best' is not an output mode of this model; allowed: sum, hq_only, sam_only, candidates"):
        hq.check_output_mode("best", parameter="--hq-output")


def test_whether_multimask_matters():
    sam, hq, pi = declared("mobile_sam"), declared("hq_vit_tiny"), declared("pi_vit_b")
    assert sam.takes_multimask and hq.takes_multimask and not pi.takes_multimask
    assert sam.multimask_matters() and sam.multimask_matters(None)
    assert hq.multimask_matters() and hq.multimask_matters("hq_only") and hq.multimask_matters("sam_only")
    assert not hq.multimask_matters("candidates")  # always the 3 candidates
    assert not pi.multimask_matters()  # one high-resolution mask whatever the flag


@pytest.mark.parametrize("name", BUILT_IN)
def test_export_default_multimask_is_the_declared_one(name):
    with torch.device("meta"):
        model = REGISTRY[name].build()
    assert export_mode(model).output.multimask == declared(name).takes_multimask


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_decoders_have_the_written_interface(name):
    with torch.device("meta"):
        decoder = REGISTRY[name].build().mask_decoder
    assert isinstance(decoder, MaskDecoderInterface)
    assert isinstance(decoder, ClickCorrectingDecoder) == decoder.capabilities.corrects_clicks


def test_prompt_kinds_are_checked_against_the_declaration():
    pi, sam = declared("pi_vit_b"), declared("mobile_sam")
    pi.check_prompt_kinds(points=False, boxes=True, masks=False)
    sam.check_prompt_kinds(points=True, boxes=True, masks=True)
    with pytest.raises(InvalidInputError, match=r"takes a box prompt only.*got points.*correct\(\.\.\.\)"):
        pi.check_prompt_kinds(points=True, boxes=False, masks=False)
    with pytest.raises(InvalidInputError, match="got no prompt"):
        sam.check_prompt_kinds(points=False, boxes=False, masks=False)
