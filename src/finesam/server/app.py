"""The FastAPI app of ``finesam serve``: one static page and a JSON API.

Endpoints (``{id}``: an image id of the caller's browser session, from its cookie):

- ``GET /``: the page (``static/index.html``, plain JavaScript and a canvas, no build step, no CDN);
- ``GET /api/info``: model, capabilities, limits;
- ``POST /api/images``: upload an image (the raw file as the body, ``?name=``); refused with 413 from
  its Content-Length, before anything is read, when over ``max_upload_mb``; encodes it;
- ``GET /api/folder`` / ``POST /api/folder/open`` (``{"path": ...}``): with ``--images DIR``;
- ``GET /api/images/{id}``: the open image's objects and current object;
  ``GET /api/images/{id}/pixels``: the image as decoded (EXIF orientation applied);
- ``POST /api/images/{id}/box`` (``{"box": [x0, y0, x1, y1]}``), ``/click``
  (``{"x", "y", "positive"}``), ``/undo``, ``/clear``, ``/commit``, ``/hq_output`` (``{"mode"}``),
  ``/save`` (write a folder image's objects again after a failed save);
  ``DELETE /api/images/{id}/objects/{object_id}``;
- ``GET /api/images/{id}/export.zip``: instance PNG, one PNG per object, COCO JSON (from memory:
  it never depends on the folder being writable).

Refusals are 4xx JSON answers ``{"detail": message}``: 400 bad input, 403 a state-changing request
from another origin, 404 unknown id, 409 a step the state does not allow (and ``"saved": false``
with the step's answer when a change is kept but could not be written), 413 too large, 422
malformed JSON or fields; never a traceback. Only opening an image creates a browser session
(and its cookie): a request that changes nothing, or is refused, creates none.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name types
# imported inside create_app (fastapi is an optional extra).

import ipaddress
import json
import logging
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from ..data.images import ImageReadError, pixel_limit, read_image
from ..errors import FinesamError, InvalidInputError
from ..optional import require
from .cache import FeatureCache
from .annotations import ImageFolder, export_zip
from .sessions import Annotator, BrowserSession, ConflictError, NotFoundError, NotSavedError, OpenImage

STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "finesam_session"
#: Largest body of a JSON request (prompts are a few numbers).
MAX_JSON_BYTES = 64 * 1024
#: Methods that change nothing: the only ones accepted from another origin, and they create no session.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
logger = logging.getLogger("finesam.server")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BodyTooLarge(Exception):
    """A request body over its limit (raised while streaming a body without Content-Length)."""

    def __init__(self, limit: int, upload: bool) -> None:
        super().__init__(limit)
        self.limit, self.upload = limit, upload


def _too_large_message(limit: int, upload: bool) -> str:
    if upload:
        return (f"the upload is larger than the limit of {limit / 1e6:g} MB; "
                "downscale or recompress the image, or start the server with a larger --max-upload-mb")
    return f"the request body is larger than {limit} bytes; JSON requests of this API are small"


def json_refusal(body: bytes) -> str | None:
    """Why a JSON request body is refused before FastAPI parses it (400), or None: a number
    longer than Python converts, or nesting deeper than its parser recurses. Other JSON errors are
    left to FastAPI (422, "malformed JSON")."""
    if not body.strip():
        return None
    try:
        json.loads(body)
    except RecursionError:
        return "the JSON of the request body nests too deeply; requests of this API are flat objects of a few numbers"
    except ValueError as error:
        if "digits" in str(error):
            return "a number in the request body has thousands of digits; send pixel positions as plain numbers"
    return None


class BodyLimit:
    """ASGI middleware: refuse a body over its limit with 413, from its Content-Length before any
    byte is read. A JSON request's body (at most :data:`MAX_JSON_BYTES`) is read here whole, also
    when sent chunked without Content-Length, and checked by :func:`json_refusal`; an upload
    without Content-Length is counted as it streams."""

    def __init__(self, app, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/api/images"
        limit = self.upload_limit if upload else MAX_JSON_BYTES
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await _send_json(send, 400, "the Content-Length header is not a number")
            if length > limit:
                return await _send_json(send, 413, _too_large_message(limit, upload))
        if not upload:
            return await self._buffered(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, upload)
            return message

        return await self.app(scope, counted_receive, send)

    async def _buffered(self, scope, receive, send):
        """Read the whole (small) body, refuse it here if too large or pathological, then replay it."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_JSON_BYTES:
                return await _send_json(send, 413, _too_large_message(MAX_JSON_BYTES, False))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        refusal = json_refusal(body)
        if refusal is not None:
            return await _send_json(send, 400, refusal)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        return await self.app(scope, replay, send)


class SameOrigin:
    """ASGI middleware against cross-site requests: a state-changing request (not GET / HEAD /
    OPTIONS) is refused with 403 when a browser marks it as sent by another site
    (``Sec-Fetch-Site`` other than ``same-origin`` / ``none``) or its ``Origin`` is not the
    server's own (scheme-less ``host:port`` against the ``Host`` header). Clients that send
    neither header (curl, scripts, the test client) are not browsers acting for a web page, and pass."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope.get("headers") or [])
            refusal = cross_origin_refusal(headers.get(b"origin"), headers.get(b"sec-fetch-site"), headers.get(b"host"))
            if refusal is not None:
                return await _send_json(send, 403, refusal)
        return await self.app(scope, receive, send)


def cross_origin_refusal(origin: bytes | None, fetch_site: bytes | None, host: bytes | None) -> str | None:
    """Why a state-changing request with these headers is refused, or None."""
    advice = "finesam serve only takes changes from its own page; open it at the server's address"
    if fetch_site is not None and fetch_site.strip().lower() not in (b"same-origin", b"none"):
        return f"refused: a request sent by another web site (Sec-Fetch-Site: {fetch_site.decode('latin-1')}); {advice}"
    if origin is not None:
        text = origin.decode("latin-1").strip()
        try:
            netloc = urlsplit(text).netloc.lower() if text.lower() != "null" else ""
        except ValueError:
            netloc = ""
        if not netloc or host is None or netloc != host.decode("latin-1").strip().lower():
            return f"refused: a request from another origin ({text[:100]!r}); {advice}"
    return None


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _status_of(error: FinesamError) -> int:
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ConflictError):
        return 409
    if isinstance(error, InvalidInputError):
        return 400
    return 409  # e.g. a call-order error: the state does not allow the step


def _validation_message(errors) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        if error.get("type") == "json_invalid":
            return f"malformed JSON in the request body: {error.get('ctx', {}).get('error', error.get('msg'))}"
        if not where and error.get("type") in ("model_attributes_type", "dict_type"):
            return "the request body must be a JSON object (Content-Type: application/json), e.g. {\"x\": 10, \"y\": 20}"
        parts.append(f"{where or 'body'}: {error.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def create_app(
    model,
    *,
    model_name: str = "",
    images_dir: str | Path | None = None,
    cache_mb: float = 1024,
    max_upload_mb: float = 50,
    max_pixels: int | None = None,
    hq_output: str | None = None,
    random_weights: bool = False,
    cache: FeatureCache | None = None,
    allowed_hosts: list[str] | None = None,
):
    """The app for ``model`` (a loaded :class:`finesam.Sam`). ``cache_mb`` bounds the image
    features kept (LRU); ``cache`` instead shares a :class:`FeatureCache` between apps of the
    same model. ``max_pixels`` defaults to :func:`finesam.data.images.pixel_limit`.
    ``allowed_hosts``: the Host header values accepted (others get 400), against DNS rebinding:
    ``finesam serve`` on a loopback address accepts only loopback names."""
    fastapi = require("fastapi", "finesam serve", "serve")
    from fastapi import Body, Depends, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool

    if cache_mb < 0 or max_upload_mb <= 0:
        raise InvalidInputError(f"`cache_mb` must be >= 0 and `max_upload_mb` > 0, got {cache_mb} and {max_upload_mb}",
                                parameters=("cache_mb", "max_upload_mb"))
    caps = model.capabilities
    caps.check_output_mode(hq_output, "hq_output", model_name or "this model")
    max_pixels = pixel_limit(max_pixels)
    folder = ImageFolder(images_dir) if images_dir is not None else None
    annotator = Annotator(model, cache if cache is not None else FeatureCache(int(cache_mb * 1e6)), hq_output)
    upload_limit = int(max_upload_mb * 1e6)

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    class BoxBody(Strict):
        box: list[float] = Field(min_length=4, max_length=4)

    class ClickBody(Strict):
        x: float
        y: float
        positive: bool = True

    class OpenBody(Strict):
        path: str = Field(min_length=1, max_length=4096)

    class ModeBody(Strict):
        mode: str | None = None

    app = fastapi.FastAPI(title="finesam serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.annotator = annotator
    app.state.folder = folder
    app.add_middleware(BodyLimit, upload_limit=upload_limit)
    app.add_middleware(SameOrigin)  # added last: runs first, before any body is read
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(FinesamError)
    async def refused(request: Request, error: FinesamError):
        extra = {**error.answer, "saved": False} if isinstance(error, NotSavedError) else {}
        return JSONResponse({**extra, "detail": " ".join(str(error).split())}, status_code=_status_of(error))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": _validation_message(error.errors())}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, error: BodyTooLarge):
        return JSONResponse({"detail": _too_large_message(error.limit, error.upload)}, status_code=413)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a bug: logged here, no traceback to the page
        logger.exception("finesam serve: unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); see the server's log"}, status_code=500)

    def browser(request: Request, response: Response) -> BrowserSession:
        """The caller's session, created (with its cookie) when it has none: called only once an
        image is about to open, so that a refused request creates no session."""
        session = annotator.session(request.cookies.get(SESSION_COOKIE))
        if request.cookies.get(SESSION_COOKIE) != session.id:
            response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="strict", path="/")
        return session

    def viewer(request: Request) -> BrowserSession:
        """The caller's session for every request but opening an image: an empty, unregistered one
        when the cookie is missing or unknown (no session is created, none evicted; its image ids
        are unknown: 404)."""
        session = annotator.session(request.cookies.get(SESSION_COOKIE), create=False)
        return session if session is not None else BrowserSession("")

    def step_answer(opened: OpenImage, timing: dict) -> dict:
        return {"current": opened.current(), **opened.saving_state(),
                **{k: round(v, 1) if isinstance(v, float) else v for k, v in timing.items()}}

    def opened_answer(opened: OpenImage, timing: dict) -> dict:
        return {**opened.describe(), "encode_ms": round(timing["encode_ms"], 1), "cached": timing["cached"]}

    def saved(opened: OpenImage, answer: dict, change: str) -> dict:
        """``answer`` with ``saved_to``: for a folder image, its objects written to the folder
        first. A failed write keeps the change in memory, marked unsaved (the list outlives the
        session until a save succeeds), and answers 409 saying so, with ``answer`` and ``saved``
        false. ``change``: what was not saved, for the message."""
        if folder is None or opened.relative_path is None:
            return {**answer, "saved_to": None}
        listing = opened.annotations
        with listing.lock:  # one writer per image: the last file written holds the latest list
            version = listing.version
            try:
                written = folder.save(opened)
            except NotSavedError as error:
                listing.save_error = str(error)
                annotator.track_saving(opened)
                raise NotSavedError(
                    f"{change} is kept in this page but NOT saved: {error}. Make the folder writable (or move "
                    "the file in the way), then press Save again; Export still downloads every object",
                    {**answer, **opened.saving_state(), "saved_to": None}) from error
            listing.mark_saved(version)
            annotator.track_saving(opened)
            return {**answer, **opened.saving_state(), "saved_to": str(written)}

    # --- page ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info(session: BrowserSession = Depends(viewer)):
        return {
            "model": model_name, "random_weights": random_weights, "corrects_clicks": caps.corrects_clicks,
            "prompts": sorted(caps.prompts), "output_modes": list(caps.output_modes), "hq_output": hq_output,
            "folder": str(folder.root) if folder else None, "max_upload_mb": max_upload_mb, "max_pixels": max_pixels,
            "cache_mb": cache_mb, "open_images": list(session.images),
        }

    # --- images ----------------------------------------------------------------------------------
    @app.post("/api/images")
    async def upload(request: Request, response: Response, name: str = "upload"):
        body = await request.body()
        if not body:
            raise InvalidInputError("the upload is empty: send the image file as the request body")

        def open_upload():
            with tempfile.TemporaryDirectory(prefix="finesam-upload-") as temporary:
                path = Path(temporary) / "upload"
                path.write_bytes(body)
                try:
                    image = read_image(path, max_pixels=max_pixels)
                except ImageReadError as error:  # name the upload, not the temporary file
                    raise ImageReadError(str(error).replace(repr(str(path)), repr(name))) from error
            return annotator.open_image(browser(request, response), image, Path(name).name or "upload")

        opened, timing = await run_in_threadpool(open_upload)
        return opened_answer(opened, timing)

    def require_folder() -> ImageFolder:
        if folder is None:
            raise NotFoundError("no images folder: start the server with --images DIR to annotate a folder")
        return folder

    @app.get("/api/folder")
    def list_folder():
        images_folder = require_folder()
        return {"root": str(images_folder.root), "images": images_folder.list_images()}

    @app.post("/api/folder/open")
    def open_from_folder(body: OpenBody, request: Request, response: Response):
        images_folder = require_folder()
        path = images_folder.resolve(body.path)
        relative = path.relative_to(images_folder.root).as_posix()
        image = read_image(path, max_pixels=max_pixels)
        annotations = annotator.folder_objects(relative, lambda: images_folder.load_objects(relative, *image.shape[:2]))
        opened, timing = annotator.open_image(browser(request, response), image, path.name, relative, annotations)
        return opened_answer(opened, timing)

    @app.get("/api/images/{image_id}")
    def describe(image_id: str, session: BrowserSession = Depends(viewer)):
        with session.lock:
            return session.image(image_id).describe()

    @app.get("/api/images/{image_id}/pixels")
    def pixels(image_id: str, session: BrowserSession = Depends(viewer)):
        import io

        from PIL import Image

        with session.lock:
            image = session.image(image_id).image
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    # --- prompts ---------------------------------------------------------------------------------
    @app.post("/api/images/{image_id}/box")
    def box(image_id: str, body: BoxBody, session: BrowserSession = Depends(viewer)):
        return step_answer(*annotator.set_box(session, image_id, body.box))

    @app.post("/api/images/{image_id}/click")
    def click(image_id: str, body: ClickBody, session: BrowserSession = Depends(viewer)):
        return step_answer(*annotator.add_click(session, image_id, body.x, body.y, body.positive))

    @app.post("/api/images/{image_id}/undo")
    def undo(image_id: str, session: BrowserSession = Depends(viewer)):
        return step_answer(*annotator.undo(session, image_id))

    @app.post("/api/images/{image_id}/clear")
    def clear(image_id: str, session: BrowserSession = Depends(viewer)):
        return step_answer(*annotator.clear(session, image_id))

    @app.post("/api/images/{image_id}/commit")
    def commit(image_id: str, session: BrowserSession = Depends(viewer)):
        opened, timing, committed = annotator.commit(session, image_id)
        answer = saved(opened, {**step_answer(opened, timing), "object": committed.describe()}, f"object {committed.id}")
        answer["object"]["saved"] = committed.saved
        return answer

    @app.delete("/api/images/{image_id}/objects/{object_id}")
    def delete_object(image_id: str, object_id: int, session: BrowserSession = Depends(viewer)):
        opened = annotator.delete_object(session, image_id, object_id)
        answer = {"deleted": object_id, "objects": [o.id for o in opened.objects], **opened.saving_state()}
        return saved(opened, answer, f"the deletion of object {object_id}")

    @app.post("/api/images/{image_id}/save")
    def save(image_id: str, session: BrowserSession = Depends(viewer)):
        with session.lock:
            opened = session.image(image_id)
        if opened.relative_path is None or folder is None:
            raise ConflictError(f"{opened.name!r} was uploaded, not opened from the images folder: "
                                "nothing is saved on the server; use Export to download its objects")
        described = lambda: [o.describe() for o in opened.objects]  # noqa: E731
        answer = saved(opened, {"objects": described()}, "the objects")
        return {**answer, "objects": described()}  # now marked saved

    @app.post("/api/images/{image_id}/hq_output")
    def set_hq_output(image_id: str, body: ModeBody = Body(...), session: BrowserSession = Depends(viewer)):
        annotator.set_hq_output(session, image_id, body.mode)
        return {"hq_output": body.mode}

    @app.get("/api/images/{image_id}/export.zip")
    def export(image_id: str, session: BrowserSession = Depends(viewer)):
        with session.lock:
            opened = session.image(image_id)
        listing = opened.annotations
        with listing.lock:  # from memory, never through the folder: a read-only folder still exports
            content = export_zip(opened)
            if opened.relative_path is None:  # an upload's objects are saved by downloading them
                listing.mark_saved(listing.version)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(opened.name).stem) or "image"  # a header is latin-1, unquoted
        headers = {"Content-Disposition": f'attachment; filename="{stem}-finesam.zip"'}
        return Response(content, media_type="application/zip", headers=headers)

    return app
