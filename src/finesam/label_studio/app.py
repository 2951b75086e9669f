"""The FastAPI app of ``finesam label-studio``: the HTTP contract Label Studio's ML backends keep.

- ``GET /health`` (and ``GET /``): ``{"status": "UP", "model_class", "model_version"}``;
- ``POST /setup`` (``project``, ``schema`` = the labeling config, ``hostname``, ``access_token``):
  ``{"model_version"}``; the config is checked here (a BrushLabels tag on an Image);
- ``POST /predict`` (``tasks``, ``project``, ``label_config``, ``params.context.result``):
  ``{"results": [{"result": [brush regions], "score", "model_version"}, ...]}``, one per task;
- ``POST /webhook``: 201 ``{"status": "ok"}`` for ANNOTATION_CREATED / UPDATED / DELETED (nothing
  is trained), 200 ``{"status": "Unknown event"}`` for other events;
- ``GET /metrics``: ``{}``.

Refusals are JSON ``{"detail": message, "errors": [message]}`` with a 4xx status (Label Studio shows
``errors``): 400 bad input, 401 missing basic-auth credentials, 413 too large, 422 not JSON;
never a traceback (an unexpected error is logged and answered 500 with its type).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import base64
import binascii
import hmac
import json
import logging

from ..errors import FinesamError
from ..optional import require
from ..server.app import is_loopback
from .backend import Backend, RequestError

#: Largest request body: a task can carry earlier annotations with brush masks.
MAX_BODY_BYTES = 64 * 1024 * 1024
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED")
logger = logging.getLogger("finesam.label_studio")


def _refusal(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    message = " ".join(message.split())
    return JSONResponse({"detail": message, "errors": [message]}, status_code=status, headers=headers)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows; coordinates must be finite")


def create_app(backend: Backend, *, basic_auth: tuple[str, str] | None = None, bind_host: str = "127.0.0.1"):
    """The app around ``backend``. ``basic_auth``: (user, password) every request must carry (the
    ML backend's authentication setting in Label Studio); ``bind_host``: on a loopback address only
    loopback Host headers are accepted (a web page rebinding its name to 127.0.0.1 is refused)."""
    fastapi = require("fastapi", "finesam label-studio", "serve")
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    app = fastapi.FastAPI(title="finesam label-studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    if is_loopback(bind_host) and ":" not in bind_host:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", bind_host])

    if basic_auth is not None:
        expected_user, expected_password = (part.encode() for part in basic_auth)

        @app.middleware("http")
        async def check_basic_auth(request: Request, call_next):
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            try:
                user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user = password = b""
            if not (scheme.lower() == "basic" and hmac.compare_digest(user, expected_user)
                    & hmac.compare_digest(password, expected_password)):
                return _refusal(401, "this backend needs basic authentication: set the user and password in Label Studio's "
                                "model settings (Authentication method: Basic Auth)", {"WWW-Authenticate": 'Basic realm="finesam"'})
            return await call_next(request)

    @app.exception_handler(FinesamError)
    async def refused(request: Request, error: FinesamError):
        # Label Studio shows only "400 Client Error" to its user: the reason is printed here.
        logger.warning("finesam label-studio: refused %s: %s", request.url.path, " ".join(str(error).split()))
        return _refusal(400, str(error))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a bug: logged here, no traceback in the answer
        logger.exception("finesam label-studio: unexpected error on %s %s", request.method, request.url.path)
        return _refusal(500, f"internal error ({type(error).__name__}); see the backend's log")

    async def json_body(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            raise _TooLarge()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge()
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as error:
            raise _Malformed(str(error)) from error

    class _TooLarge(Exception):
        pass

    class _Malformed(Exception):
        pass

    @app.exception_handler(_TooLarge)
    async def too_large(request: Request, error: _TooLarge):
        return _refusal(413, f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB (or its Content-Length is invalid)")

    @app.exception_handler(_Malformed)
    async def malformed(request: Request, error: _Malformed):
        return _refusal(422, f"the request body is not valid JSON ({error}); send a JSON object")

    def require_object(body, endpoint: str) -> dict:
        if not isinstance(body, dict):
            raise RequestError(f"the {endpoint} body must be a JSON object, got {type(body).__name__}")
        return body

    @app.get("/health")
    @app.get("/")
    def health():
        return {"status": "UP", "model_class": f"finesam:{backend.model_name}", "model_version": backend.model_version}

    @app.post("/setup")
    async def setup(request: Request):
        body = require_object(await json_body(request), "/setup")
        return await run_in_threadpool(backend.setup, body.get("project"), body.get("schema"),
                                       body.get("hostname"), body.get("access_token"))

    @app.post("/predict")
    async def predict(request: Request):
        body = await json_body(request)
        return await run_in_threadpool(backend.predict, body)

    @app.post("/webhook")
    async def webhook(request: Request):
        from fastapi.responses import JSONResponse

        body = require_object(await json_body(request), "/webhook")
        action = body.get("action")
        if action in TRAIN_EVENTS:  # nothing to train: the model stays as loaded
            return JSONResponse({"status": "ok", "result": None}, status_code=201)
        return JSONResponse({"status": "Unknown event"}, status_code=200)

    @app.get("/metrics")
    def metrics():
        return {}

    return app
