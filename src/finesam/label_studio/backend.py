"""What the Label Studio ML backend computes, without the web framework: a prediction per task,
from the prompts Label Studio sends (``params.context.result``), as brush regions.

Label Studio sends the whole context on every click: the regions of smart KeyPointLabels /
RectangleLabels tags drawn so far, in order. They are replayed on one
:class:`~finesam.predict.interactive.InteractiveSession` (a rectangle -> ``set_box``, a keypoint ->
``add_click(positive=is_positive)``), so the mask is the one the session gives for that sequence:
SAM / HQ-SAM refine with the previous logits, Pi-SAM corrects its box mask with the clicks. The
image's features are cached by its pixels, so a click costs one decoder run per region.
"""

from __future__ import annotations

import math
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError
from ..formats.brush import mask_to_brush_rle
from ..predict.interactive import InteractiveSession
from ..predict.predictor import SamPredictor
from ..server.cache import FeatureCache, image_key
from .config import PROMPT_TAGS, ControlTag, LabelingConfig, LabelingConfigError
from .images import ImageReader, LabelStudioHost

#: Coordinates a little past 100 % from rounding in the browser are taken as the edge.
PERCENT_TOLERANCE = 1e-6
MAX_TASKS = 10_000
MAX_CONTEXT_REGIONS = 1_000


class RequestError(InvalidInputError):
    """A request the backend refuses (answered 400 with the message)."""


@dataclass(frozen=True)
class PromptRegion:
    """One context region in percent of the image: a box (x0, y0, x1, y1) or a click (x, y)."""

    kind: str  # "box" or "click"
    percent: tuple[float, ...]
    positive: bool = True

    def pixels(self, height: int, width: int) -> tuple[float, ...]:
        scale = (width / 100.0, height / 100.0)
        return tuple(value * scale[i % 2] for i, value in enumerate(self.percent))


@dataclass(frozen=True)
class Context:
    """The prompts of one object: the Image they are on, its BrushLabels tag, the label, the regions."""

    image_name: str
    brush: ControlTag
    label: str
    regions: tuple[PromptRegion, ...]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{where} must be a number (percent of the image), got {value!r}")
    if not math.isfinite(value):
        raise RequestError(f"{where} is {value}; coordinates must be finite percentages of the image (0 to 100)")
    return float(value)


def _percent(value: Any, where: str) -> float:
    number = _number(value, where)
    if not -PERCENT_TOLERANCE <= number <= 100 + PERCENT_TOLERANCE:
        raise RequestError(f"{where} is {number:g}, outside 0..100: Label Studio's coordinates are percentages of the image")
    return min(max(number, 0.0), 100.0)


def _region(index: int, region: Any, config: LabelingConfig) -> tuple[str, str | None, PromptRegion]:
    """(the Image name, the region's label or None, the prompt) of context region ``index``."""
    where = f"context region {index}"
    if not isinstance(region, dict):
        raise RequestError(f"{where} must be a JSON object (a Label Studio region), got {type(region).__name__}")
    kind = region.get("type")
    from_name, to_name = region.get("from_name"), region.get("to_name")
    tag = config.prompts.get(from_name) if isinstance(from_name, str) else None
    if tag is None:
        known = ", ".join(f"{t.kind} {t.name!r}" for t in config.prompts.values()) or "none"
        raise RequestError(f"{where} is for the tag {from_name!r}, which is not a KeyPointLabels or RectangleLabels tag of "
                           f"the labeling config (those are: {known}); the backend takes clicks and boxes of such tags")
    if kind != PROMPT_TAGS[tag.kind]:
        raise RequestError(f"{where} has type {kind!r}, but its tag {from_name!r} is {tag.kind} (type {PROMPT_TAGS[tag.kind]!r})")
    if not isinstance(to_name, str) or to_name not in config.images:
        raise RequestError(f"{where} points at {to_name!r}, which is not an Image tag of the labeling config "
                           f"(Images: {', '.join(map(repr, config.images)) or 'none'})")
    if to_name not in tag.to_names:
        raise RequestError(f"{where} points at the Image {to_name!r}, but its tag {from_name!r} labels {', '.join(tag.to_names)}")
    value = region.get("value")
    if not isinstance(value, dict):
        raise RequestError(f"{where} has no 'value' object with its coordinates")
    labels = value.get(kind)
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(label, str) for label in labels)):
        raise RequestError(f"{where}: value.{kind} must be a list of label names, got {labels!r}")
    label = labels[0] if labels else None
    x, y = _percent(value.get("x"), f"{where}: value.x"), _percent(value.get("y"), f"{where}: value.y")
    if kind == "keypointlabels":
        positive = region.get("is_positive", True)
        if not isinstance(positive, bool):
            raise RequestError(f"{where}: is_positive must be true or false, got {positive!r}")
        return to_name, label, PromptRegion("click", (x, y), positive)
    if _number(value.get("rotation", 0), f"{where}: value.rotation") % 360 != 0:
        raise RequestError(f"{where} is a rotated rectangle; a box prompt is upright: draw the box without rotation")
    width, height = _percent(value.get("width"), f"{where}: value.width"), _percent(value.get("height"), f"{where}: value.height")
    right, bottom = x + width, y + height
    if right > 100 + PERCENT_TOLERANCE or bottom > 100 + PERCENT_TOLERANCE:
        raise RequestError(f"{where} reaches x + width = {right:g}, y + height = {bottom:g}, past 100: "
                           "the box must lie inside the image")
    return to_name, label, PromptRegion("box", (x, y, min(right, 100.0), min(bottom, 100.0)))


def parse_context(context: Any, config: LabelingConfig, corrects_clicks: bool) -> Context | None:
    """The prompts of ``params.context`` (None when there are none: no interaction yet)."""
    if context is None:
        return None
    if not isinstance(context, dict):
        raise RequestError(f"params.context must be an object with a 'result' list, got {type(context).__name__}")
    result = context.get("result")
    if result is None or result == []:
        return None
    if not isinstance(result, list):
        raise RequestError(f"params.context.result must be a list of regions, got {type(result).__name__}")
    if len(result) > MAX_CONTEXT_REGIONS:
        raise RequestError(f"params.context.result has {len(result)} regions; at most {MAX_CONTEXT_REGIONS} are replayed")
    parsed = [_region(i, region, config) for i, region in enumerate(result)]
    image_names = {name for name, _, _ in parsed}
    if len(image_names) > 1:
        raise RequestError(f"the context's regions point at several Images ({', '.join(sorted(image_names))}); "
                           "one object is prompted on one image")
    image_name = parsed[0][0]
    brush = config.brush_for(image_name)
    label = next((label for _, label, _ in parsed if label), None)
    if label is None:
        raise RequestError("no region of the context has a label: choose a label of the KeyPointLabels / RectangleLabels "
                           "tag before clicking")
    if brush.labels and label not in brush.labels:
        raise LabelingConfigError(f"the prompt's label {label!r} is not a label of the BrushLabels tag {brush.name!r} "
                                  f"({', '.join(map(repr, brush.labels))}): give the KeyPointLabels / RectangleLabels tags "
                                  "the same Label values as the BrushLabels tag")
    regions = tuple(region for _, _, region in parsed)
    if corrects_clicks and regions[0].kind != "box":
        raise RequestError("this model (Pi-SAM) corrects the mask of a box: draw a rectangle (RectangleLabels) "
                           "around the object first, then click to correct it")
    return Context(image_name, brush, label, regions)


@dataclass
class ProjectSettings:
    """What ``/setup`` told the backend about one Label Studio project."""

    label_config: str | None = None
    host: LabelStudioHost | None = None


@dataclass
class Backend:
    """The model, its feature cache, the image reader and what each project's ``/setup`` said.

    ``host``: Label Studio's URL and token from ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``
    (None: the ones ``/setup`` sends). ``auto_generator``: an
    :class:`~finesam.predict.automatic_mask_generator.AutomaticMaskGenerator` that predicts every
    object of a task without prompts (None: such tasks get no regions).
    """

    model: Any
    model_name: str
    reader: ImageReader
    cache: FeatureCache
    host: LabelStudioHost | None = None
    auto_generator: Any = None
    random_weights: bool = False
    projects: dict[str, ProjectSettings] = field(default_factory=dict)
    _configs: dict[str, LabelingConfig] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="finesam-model"),
                                        repr=False)
    encoder_runs: int = 0

    @property
    def model_version(self) -> str:
        return f"finesam-{self.model_name}" + ("-random-weights" if self.random_weights else "")

    def compute(self, function: Callable, *args):
        """Run ``function(*args)`` on the model's one worker thread (a predictor is not thread-safe,
        and the CPU's threads are shared anyway)."""
        return self._worker.submit(function, *args).result()

    # --- setup ------------------------------------------------------------------------------------
    def setup(self, project: Any, schema: Any, hostname: Any, access_token: Any) -> dict:
        """Remember a project's labeling config and where its Label Studio runs; checks the config."""
        config = self.config(schema)
        config.image_for_brush()  # a config without a BrushLabels tag on an Image is refused now
        host = None
        if isinstance(hostname, str) and hostname.strip():
            host = LabelStudioHost.parse(hostname, access_token if isinstance(access_token, str) else None,
                                         source="the hostname Label Studio sent to /setup")
        with self._lock:
            self.projects[project_id(project)] = ProjectSettings(schema, host)
        return {"model_version": self.model_version}

    def config(self, xml: Any) -> LabelingConfig:
        with self._lock:
            cached = self._configs.get(xml) if isinstance(xml, str) else None
        if cached is not None:
            return cached
        config = LabelingConfig.parse(xml)
        with self._lock:
            if len(self._configs) > 64:
                self._configs.clear()
            self._configs[xml] = config
        return config

    def host_for(self, project: Any) -> LabelStudioHost | None:
        """Label Studio's URL and token: the environment's, else the project's ``/setup``, else the latest ``/setup``."""
        if self.host is not None:
            return self.host
        with self._lock:
            settings = self.projects.get(project_id(project))
            if settings is None and self.projects:
                settings = list(self.projects.values())[-1]
        return settings.host if settings is not None else None

    # --- predict ----------------------------------------------------------------------------------
    def predict(self, body: Any) -> dict:
        """``/predict``: ``{"results": [one entry per task]}``; refusals raise :class:`RequestError`."""
        if not isinstance(body, dict):
            raise RequestError("the /predict body must be a JSON object with 'tasks' (and 'label_config', 'params')")
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise RequestError("the /predict body needs 'tasks': a non-empty list of Label Studio tasks")
        if len(tasks) > MAX_TASKS:
            raise RequestError(f"{len(tasks)} tasks in one request; at most {MAX_TASKS}")
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise RequestError(f"task {index} is not a Label Studio task: an object with a 'data' object")
        project = body.get("project")
        label_config = body.get("label_config")
        if label_config is None:
            with self._lock:
                settings = self.projects.get(project_id(project))
            label_config = settings.label_config if settings is not None else None
        config = self.config(label_config)
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            raise RequestError(f"'params' must be an object, got {type(params).__name__}")
        context = parse_context((params or {}).get("context"), config, self.model.capabilities.corrects_clicks)
        host = self.host_for(project)
        if context is None and self.auto_generator is None:
            config.image_for_brush()  # still a clear error for a config the backend cannot serve
            return {"results": [{"result": [], "score": 0.0, "model_version": self.model_version} for _ in tasks]}
        if context is not None and len(tasks) > 1:
            raise RequestError(f"a context (clicks, boxes) belongs to one task, but {len(tasks)} tasks were sent")
        results = []
        for task in tasks:
            if context is not None:
                results.append(self._prompted(task, context, config, host))
            else:
                results.append(self._automatic(task, config, host))
        return {"results": results}

    def _image(self, task: dict, image_name: str, config: LabelingConfig, host: LabelStudioHost | None) -> np.ndarray:
        key = config.images[image_name]
        if key not in task["data"]:
            raise RequestError(f"task {task.get('id', '?')} has no data field {key!r}, which the Image tag {image_name!r} "
                               f"reads (value=\"${key}\")")
        return self.reader.read(task["data"][key], host)

    def _predictor(self, image: np.ndarray) -> SamPredictor:
        """A predictor with the image's features, from the cache or encoded now (on the worker thread)."""
        def encode() -> Any:
            def encode_now():
                encoder = SamPredictor(self.model, keep_early_feature=False)
                encoder.set_image(image)
                self.encoder_runs += 1
                return encoder.image_features
            return self.compute(encode_now)

        entry, _ = self.cache.get_or_encode(image_key(image), encode)
        predictor = SamPredictor(self.model, keep_early_feature=False)
        predictor.set_features(entry.features, image.shape[:2])
        return predictor

    def _prompted(self, task: dict, context: Context, config: LabelingConfig, host: LabelStudioHost | None) -> dict:
        image = self._image(task, context.image_name, config, host)
        height, width = image.shape[:2]
        predictor = self._predictor(image)

        def replay():
            session = InteractiveSession(predictor)
            for region in context.regions:
                if region.kind == "box":
                    session.set_box(region.pixels(height, width))
                else:
                    session.add_click(*region.pixels(height, width), positive=region.positive)
            return session.result

        result = self.compute(replay)
        region = self._brush_region(result.mask, context.brush.name, context.image_name, context.label, result.score)
        return {"result": [region], "score": result.score, "model_version": self.model_version}

    def _automatic(self, task: dict, config: LabelingConfig, host: LabelStudioHost | None) -> dict:
        image_name, brush = config.image_for_brush()
        image = self._image(task, image_name, config, host)
        if not brush.labels:
            raise LabelingConfigError(f"the BrushLabels tag {brush.name!r} has no Label: --auto labels its masks with the "
                                      "first Label of the tag")
        records = self.compute(self.auto_generator.generate, image)
        regions = [self._brush_region(r["segmentation"], brush.name, image_name, brush.labels[0], float(r["predicted_iou"]))
                   for r in records]
        score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
        return {"result": regions, "score": score, "model_version": self.model_version}

    @staticmethod
    def _brush_region(mask: np.ndarray, from_name: str, to_name: str, label: str, score: float) -> dict:
        height, width = mask.shape
        return {
            "id": secrets.token_hex(5),
            "from_name": from_name,
            "to_name": to_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
            "score": float(score),
            "readonly": False,
        }


def project_id(project: Any) -> str:
    """Label Studio's project id of its ``project`` field (``"<id>.<created timestamp>"``)."""
    return str(project).split(".", 1)[0] if project is not None else ""
