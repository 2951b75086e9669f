"""What the web tool keeps per browser session: open images, their objects, the object being drawn.

An image's committed objects live in an :class:`ObjectList`: private to the session for an
upload, shared by every session that opened the same file of ``--images DIR`` (two tabs or two
browsers on one image see and extend one list, so neither overwrites the other's objects).

Framework-free: every method raises a :class:`~finesam.errors.FinesamError` on bad input (the
app maps them to 4xx answers). Interaction goes through
:class:`~finesam.predict.interactive.InteractiveSession`, one per open image; the image features
come from the shared :class:`~finesam.server.cache.FeatureCache`, so a click never runs the encoder.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..data.images import PALETTE
from ..errors import InvalidInputError, NothingToUndoError
from ..predict.interactive import InteractiveSession
from ..predict.predictor import SamPredictor
from .cache import FeatureCache, image_key

#: Images one browser session keeps open; opening one more closes the least recently used.
MAX_IMAGES_PER_SESSION = 8
#: Browser sessions kept; a new one drops the least recently active that holds no unsaved work.
MAX_SESSIONS = 256
#: Largest object id (the 16-bit instance PNG).
MAX_OBJECT_ID = 65535
logger = logging.getLogger("finesam.server")


class NotFoundError(InvalidInputError):
    """An image or object id that this browser session does not have (HTTP 404)."""


class ConflictError(InvalidInputError):
    """A step that the current state does not allow, e.g. committing before any prompt (HTTP 409)."""


class NotSavedError(ConflictError):
    """A change kept in memory that could not be written to the images folder (HTTP 409, ``saved``
    false). ``answer``: the fields of the step's normal answer, so that the page still shows it."""

    def __init__(self, message: str, answer: dict | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}


class OutputModePredictor(SamPredictor):
    """A :class:`SamPredictor` whose ``predict`` uses the HQ output mode chosen in the page
    (``hq_output``; None: the model's default), so that :class:`InteractiveSession` honours it."""

    hq_output: str | None = None

    def predict(self, *args, **kwargs):
        if self.hq_output is not None and kwargs.get("hq_output") is None and kwargs.get("hq_token_only") is None:
            kwargs["hq_output"] = self.hq_output
        return super().predict(*args, **kwargs)


def mask_runs(mask: np.ndarray) -> list[int]:
    """Row-major run lengths of an (H, W) bool mask, starting with a (possibly empty) background run:
    what the page draws (cheaper to send and to decode in JavaScript than a PNG)."""
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if not flat[0] else [0] + runs


def colour_of(object_id: int) -> list[int]:
    """The overlay colour of an object (the palette of :func:`finesam.data.images.overlay`)."""
    return [int(v) for v in PALETTE[(object_id - 1) % len(PALETTE)]]


@dataclass
class AnnotatedObject:
    """A committed object: mask (H, W) bool, the model's score, the prompts that made it."""

    id: int
    mask: np.ndarray
    score: float
    box: list[float] | None
    clicks: list[list[float]]
    saved: bool = False  # written to the images folder as it is

    def describe(self) -> dict:
        return {"id": self.id, "score": self.score, "area": int(self.mask.sum()), "colour": colour_of(self.id),
                "box": self.box, "clicks": self.clicks, "mask": mask_runs(self.mask), "saved": self.saved}


@dataclass(eq=False)
class ObjectList:
    """The committed objects of one image. ``version`` counts commits and deletions;
    ``saved_version`` is the version written to the images folder (for an upload: the version last
    exported), so ``unsaved`` says whether closing the image would lose work. Change it, and
    write it, under ``lock``."""

    objects: list[AnnotatedObject] = field(default_factory=list)
    next_object_id: int = 1
    version: int = 0
    saved_version: int = 0
    save_error: str | None = None  # why the last save failed; None after a successful one
    lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def resumed(cls, objects: list[AnnotatedObject]) -> "ObjectList":
        """The list of objects read back from the images folder (saved as they are)."""
        for annotated in objects:
            annotated.saved = True
        return cls(list(objects), max((o.id for o in objects), default=0) + 1)

    @property
    def unsaved(self) -> bool:
        return self.version != self.saved_version

    def changed(self) -> None:
        self.version += 1

    def mark_saved(self, version: int) -> None:
        """The objects as of ``version`` are written (a later change stays unsaved)."""
        self.saved_version = version
        self.save_error = None
        if version == self.version:
            for annotated in self.objects:
                annotated.saved = True


@dataclass
class OpenImage:
    """One image open in a browser session."""

    id: str
    name: str
    image: np.ndarray
    key: str
    predictor: OutputModePredictor
    relative_path: str | None = None  # inside --images DIR
    annotations: ObjectList = field(default_factory=ObjectList)  # shared between sessions for a folder image
    session: InteractiveSession = field(init=False)
    _saved_correction: object = None

    def __post_init__(self) -> None:
        self.session = InteractiveSession(self.predictor)

    @property
    def objects(self) -> list[AnnotatedObject]:
        return self.annotations.objects

    @property
    def next_object_id(self) -> int:
        return self.annotations.next_object_id

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def find(self, object_id: int) -> AnnotatedObject:
        for annotated in self.objects:
            if annotated.id == object_id:
                return annotated
        raise NotFoundError(f"object {object_id} does not exist in image {self.name!r} (it may have been deleted)")

    def current(self) -> dict:
        """The object being drawn: its prompts, mask (run lengths), score, and whether undo can act."""
        session = self.session
        result = session.result
        return {
            "box": list(session.box) if session.box is not None else None,
            "clicks": [[x, y, int(positive)] for x, y, positive in session.clicks],
            "mask": mask_runs(result.mask) if result is not None else None,
            "score": result.score if result is not None else None,
            "can_undo": session.box is not None or bool(session.clicks),  # every step adds a box or a click
            "colour": colour_of(self.next_object_id),
        }

    def saving_state(self) -> dict:
        """What the page shows of the objects' saving: their ids, whether some change is not
        written (folder images) or not exported (uploads), and why the last save failed."""
        listing = self.annotations
        with listing.lock:
            return {"object_ids": [o.id for o in listing.objects], "unsaved": listing.unsaved,
                    "save_error": listing.save_error}

    def describe(self) -> dict:
        with self.annotations.lock:
            objects = [o.describe() for o in self.objects]
            saving = self.saving_state()
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height,
                "path": self.relative_path, "objects": objects, "current": self.current(), **saving}


@dataclass
class BrowserSession:
    id: str
    images: OrderedDict[str, OpenImage] = field(default_factory=OrderedDict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    active: str | None = None
    hq_output: str | None = None  # the HQ output mode chosen in the page, for every image
    last_seen: float = field(default_factory=time.monotonic)

    def image(self, image_id: str) -> OpenImage:
        opened = self.images.get(image_id)
        if opened is None:
            raise NotFoundError(f"image id {image_id!r} is not open in this browser session; open the image again")
        self.images.move_to_end(image_id)
        return opened

    @property
    def holds_unsaved_work(self) -> bool:
        # Without the session's lock (a long step may hold it): a copy of the values is atomic.
        return any(opened.annotations.unsaved for opened in list(self.images.values()))


def drop_oldest(entries: OrderedDict, limit: int, keep: Callable[[object], bool], what: str) -> None:
    """Drop the oldest entries of ``entries`` until at most ``limit`` remain, never one that
    ``keep`` protects (unsaved work): then more than ``limit`` stay."""
    for key in list(entries):
        if len(entries) <= limit:
            return
        if not keep(entries[key]):
            del entries[key]
    if len(entries) > limit:
        logger.warning("finesam serve: %d %s hold unsaved work; keeping all of them (limit %d)", len(entries), what, limit)


class Annotator:
    """The model, the feature cache and every browser session: what the HTTP endpoints call.

    Every model computation runs on one worker thread (:meth:`compute`), one at a time: the CPU
    threads are shared anyway, a predictor is not thread-safe, and memory freed by the encoder is
    reused by the next encoding instead of piling up in each request thread's allocator arena.
    """

    def __init__(self, model, cache: FeatureCache, hq_output: str | None = None) -> None:
        self.model = model
        self.cache = cache
        self.capabilities = model.capabilities
        self.default_hq_output = hq_output
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finesam-model")
        self._sessions: OrderedDict[str, BrowserSession] = OrderedDict()
        self._sessions_lock = threading.Lock()
        # The object lists of folder images (relative path -> list), alive while a session has the
        # image open; ``_unsaved_lists`` also holds those with unsaved changes, so that they outlive it.
        self._folder_lists: weakref.WeakValueDictionary[str, ObjectList] = weakref.WeakValueDictionary()
        self._unsaved_lists: dict[str, ObjectList] = {}
        self._lists_lock = threading.Lock()
        self.encoder_runs = 0

    def compute(self, function: Callable, *args):
        """Run ``function(*args)`` on the model's worker thread and return its result (or raise its error)."""
        return self._worker.submit(function, *args).result()

    # --- sessions --------------------------------------------------------------------------------
    def session(self, session_id: str | None, create: bool = True) -> BrowserSession | None:
        """The session of a cookie value; when unknown or missing, a new one (``create``) or None.
        A new session drops the least recently active ones beyond :data:`MAX_SESSIONS`, except
        those holding unsaved work."""
        with self._sessions_lock:
            session = self._sessions.get(session_id) if session_id else None
            if session is None:
                if not create:
                    return None
                session = BrowserSession(secrets.token_urlsafe(24), hq_output=self.default_hq_output)
                self._sessions[session.id] = session
                drop_oldest(self._sessions, MAX_SESSIONS, lambda kept: kept is session or kept.holds_unsaved_work,
                            "browser sessions")
            self._sessions.move_to_end(session.id)
            session.last_seen = time.monotonic()
            return session

    @property
    def session_count(self) -> int:
        with self._sessions_lock:
            return len(self._sessions)

    # --- object lists ----------------------------------------------------------------------------
    def folder_objects(self, relative_path: str, load: Callable[[], list[AnnotatedObject]]) -> ObjectList:
        """The one object list of a folder image, shared by every session: the list in memory
        (with its unsaved changes) if some session has it, else ``load()`` (resuming from disk)."""
        with self._lists_lock:
            listing = self._folder_lists.get(relative_path)
            if listing is None:
                listing = ObjectList.resumed(load())
                self._folder_lists[relative_path] = listing
            return listing

    def track_saving(self, opened: OpenImage) -> None:
        """Keep a folder image's list alive while it holds unsaved changes (after a failed save)."""
        if opened.relative_path is None:
            return
        with self._lists_lock:
            if opened.annotations.unsaved:
                self._unsaved_lists[opened.relative_path] = opened.annotations
            else:
                self._unsaved_lists.pop(opened.relative_path, None)

    # --- images ----------------------------------------------------------------------------------
    def open_image(self, browser: BrowserSession, image: np.ndarray, name: str, relative_path: str | None = None,
                   annotations: ObjectList | None = None) -> tuple[OpenImage, dict]:
        """Open an (H, W, 3) uint8 image in ``browser`` and encode it now (or take its cached
        features); ``annotations``: its object list (a folder image's shared one). Returns the open
        image and timing: ``encode_ms``, ``cached``. Beyond :data:`MAX_IMAGES_PER_SESSION` the
        least recently used images close, except those holding unsaved work."""
        predictor = OutputModePredictor(self.model, keep_early_feature=False)
        opened = OpenImage(secrets.token_urlsafe(12), name, image, image_key(image), predictor, relative_path,
                           annotations if annotations is not None else ObjectList())
        with browser.lock:
            timing = self._activate(browser, opened)
            browser.images[opened.id] = opened
            drop_oldest(browser.images, MAX_IMAGES_PER_SESSION,
                        lambda kept: kept is opened or kept.annotations.unsaved, "open images")
        return opened, timing

    def _encode(self, image: np.ndarray) -> Callable:
        def encode_now():
            encoder = SamPredictor(self.model, keep_early_feature=False)
            encoder.set_image(image)
            self.encoder_runs += 1
            return encoder.image_features
        return lambda: self.compute(encode_now)

    def _activate(self, browser: BrowserSession, opened: OpenImage) -> dict:
        """Give ``opened``'s predictor its features (from the cache, encoding if needed) and take
        them from the session's previously active image, so that only the cache holds features
        of images nobody is working on."""
        if browser.active != opened.id:
            previous = browser.images.get(browser.active) if browser.active else None
            if previous is not None and previous.predictor.is_image_set:
                previous._saved_correction = previous.predictor.correction_state
                previous.predictor.reset_image()
            browser.active = opened.id
        if opened.predictor.is_image_set:
            return {"encode_ms": 0.0, "cached": True}
        entry, cached = self.cache.get_or_encode(opened.key, self._encode(opened.image))
        opened.predictor.set_features(entry.features, opened.image.shape[:2])
        opened.predictor.correction_state = opened._saved_correction
        return {"encode_ms": 0.0 if cached else entry.encode_ms, "cached": cached}

    def _step(self, browser: BrowserSession, image_id: str, action: Callable[[OpenImage], object]) -> tuple[OpenImage, dict]:
        with browser.lock:
            opened = browser.image(image_id)
            timing = self._activate(browser, opened)
            opened.predictor.hq_output = browser.hq_output
            queued = time.perf_counter()

            def timed() -> float:
                start = time.perf_counter()
                action(opened)
                return start

            start = self.compute(timed)
            timing["latency_ms"] = (time.perf_counter() - start) * 1000  # the model's step, without the wait
            timing["queue_ms"] = (start - queued) * 1000  # waiting for other sessions' steps
            return opened, timing

    # --- prompts ---------------------------------------------------------------------------------
    def _check_inside(self, opened: OpenImage, what: str, xs: list[float], ys: list[float], closed: bool) -> None:
        """Refuse coordinates that are not finite or outside the image: [0, W) x [0, H) for clicks,
        [0, W] x [0, H] for box edges (``closed``)."""
        for x, y in zip(xs, ys):
            if not (math.isfinite(x) and math.isfinite(y)):
                raise InvalidInputError(f"{what} ({x}, {y}) is not a finite pixel position")
            inside_x = 0 <= x <= opened.width if closed else 0 <= x < opened.width
            inside_y = 0 <= y <= opened.height if closed else 0 <= y < opened.height
            if not (inside_x and inside_y):
                raise InvalidInputError(f"{what} ({x:g}, {y:g}) lies outside the {opened.width}x{opened.height} image "
                                        f"of {opened.name!r}; positions are pixels, 0 <= x < {opened.width}, 0 <= y < {opened.height}")

    def set_box(self, browser: BrowserSession, image_id: str, box: list[float]) -> tuple[OpenImage, dict]:
        def action(opened: OpenImage) -> None:
            if len(box) != 4:
                raise InvalidInputError(f"box must be 4 numbers [x0, y0, x1, y1], got {len(box)}")
            self._check_inside(opened, "box corner", box[0::2], box[1::2], closed=True)
            x0, y0, x1, y1 = box
            opened.session.set_box([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
        return self._step(browser, image_id, action)

    def add_click(self, browser: BrowserSession, image_id: str, x: float, y: float, positive: bool) -> tuple[OpenImage, dict]:
        def action(opened: OpenImage) -> None:
            self._check_inside(opened, "click", [x], [y], closed=False)
            if self.capabilities.corrects_clicks and opened.session.box is None:
                raise ConflictError("this model corrects the mask of a box (Pi-SAM): draw a box around the object first, "
                                    "then click on wrongly predicted areas")
            opened.session.add_click(x, y, positive=positive)
        return self._step(browser, image_id, action)

    def undo(self, browser: BrowserSession, image_id: str) -> tuple[OpenImage, dict]:
        def action(opened: OpenImage) -> None:
            try:
                opened.session.undo()
            except NothingToUndoError as error:
                raise ConflictError("nothing to undo for the current object") from error
        return self._step(browser, image_id, action)

    def clear(self, browser: BrowserSession, image_id: str) -> tuple[OpenImage, dict]:
        return self._step(browser, image_id, lambda opened: opened.session.reset())

    def commit(self, browser: BrowserSession, image_id: str) -> tuple[OpenImage, dict, AnnotatedObject]:
        """Keep the current object (its mask, score, prompts) and start the next one. Returns the
        open image, timing and the committed object (another session may commit right after)."""
        committed = []

        def action(opened: OpenImage) -> None:
            session = opened.session
            if session.result is None:
                raise ConflictError("nothing to commit: draw a box or click on the object first")
            listing = opened.annotations
            with listing.lock:
                if listing.next_object_id > MAX_OBJECT_ID:
                    raise ConflictError(f"image {opened.name!r} has reached the largest object id, {MAX_OBJECT_ID} "
                                        "(an instance PNG holds 16 bits)")
                annotated = AnnotatedObject(
                    listing.next_object_id, session.result.mask.copy(), session.result.score,
                    list(session.box) if session.box is not None else None,
                    [[x, y, int(positive)] for x, y, positive in session.clicks])
                listing.objects.append(annotated)
                listing.next_object_id += 1
                listing.changed()
            committed.append(annotated)
            session.reset()
        opened, timing = self._step(browser, image_id, action)
        return opened, timing, committed[0]

    def delete_object(self, browser: BrowserSession, image_id: str, object_id: int) -> OpenImage:
        with browser.lock:
            opened = browser.image(image_id)
            with opened.annotations.lock:
                opened.objects.remove(opened.find(object_id))
                opened.annotations.changed()
            return opened

    def set_hq_output(self, browser: BrowserSession, image_id: str, mode: str | None) -> OpenImage:
        """Choose the HQ output mode of the session's following steps, on every image (HQ models)."""
        self.capabilities.check_output_mode(mode)
        with browser.lock:
            opened = browser.image(image_id)
            browser.hq_output = mode
            return opened
