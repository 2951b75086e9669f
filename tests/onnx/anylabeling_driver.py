"""Runs in the annotation tool's own venv (not finesam's): its ``SegmentAnythingONNX`` class
encodes a photo and predicts masks for prompts given as the tool's marks, exactly as the
tool calls it. Used by tests/onnx/test_anylabeling.py through a subprocess.

    python anylabeling_driver.py --module anylabeling.services.auto_labeling.sam_onnx
        --encoder E.onnx --decoder D.onnx --image photo.npy --marks marks.json --out result.npz
        [--features features.npz]   # replace the encoder's outputs (the official ones)

Writes the canvas the encoder got, the encoder outputs the decoder got and, per prompt,
the masks ``predict_masks`` returned (logits at the photo's size, before thresholding).
"""

from __future__ import annotations

import argparse
import importlib
import json

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("module", "encoder", "decoder", "image", "marks", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--features")
    args = parser.parse_args()
    tool = importlib.import_module(args.module)
    model = tool.SegmentAnythingONNX(args.encoder, args.decoder)
    seen = {}
    run_encoder = model.encoder_session.run

    def recording_run(names, inputs, *rest):  # the canvas as the tool feeds its encoder
        seen["canvas"] = next(iter(inputs.values()))
        return run_encoder(names, inputs, *rest)

    model.encoder_session.run = recording_run
    embedding = model.encode(np.load(args.image))
    if args.features:
        with np.load(args.features) as features:
            for key in features.files:
                assert key in embedding, (key, sorted(embedding))
                embedding[key] = features[key]
    results = {"canvas": seen["canvas"]}
    for key, value in embedding.items():
        if isinstance(value, np.ndarray):
            results[f"features_{key}"] = value
    with open(args.marks) as file:
        prompts = json.load(file)
    for index, marks in enumerate(prompts):
        results[f"masks_{index}"] = np.asarray(model.predict_masks(embedding, marks))
    np.savez(args.out, **results)


if __name__ == "__main__":
    main()
