"""Generated requests against the web tool's app (``finesam serve``, MobileSAM with random weights):
odd bodies, ids, paths, headers and resume files, and programs of several browser sessions
working on one folder image at the same time. Every answer is a 2xx or a 4xx with a message
(never a 5xx or a traceback), a state-changing request from another origin is refused, and no
committed object is lost: the shared object list, each session's view of it and the annotation
file (once saved) hold exactly the objects committed and not deleted."""

from __future__ import annotations

import io
import json
import shutil
import threading
import zipfile
from urllib.parse import quote

import numpy as np
import pytest
import torch
from fuzz_checks import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi", reason="the web tool needs the serve extra: pip install 'finesam[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

import finesam  # noqa: E402
from finesam.server.app import create_app  # noqa: E402
from finesam.server.cache import FeatureCache  # noqa: E402

HEIGHT, WIDTH = 48, 64
PIXELS = np.random.default_rng(11).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
ORIGIN = "http://testserver"  # the TestClient's own origin
EXPECTED_STATUSES = {200, 400, 403, 404, 409, 413, 422}


def fuzz_settings(default: int):
    return settings(max_examples=examples(default), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes(PIXELS)


@pytest.fixture(scope="module")
def model_and_cache():
    """One model and one feature cache for every app of this file: the test image is encoded once.
    The model runs on one CPU thread here: its steps are not what is tested, and on a busy machine
    one thread is several times faster than two competing for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield finesam.load("mobile_sam", random_weights=True), FeatureCache(64 * 10**6)
    torch.set_num_threads(threads)


def make_app(model_and_cache, folder):
    model, cache = model_and_cache
    return create_app(model, model_name="mobile_sam", images_dir=folder, random_weights=True, cache=cache,
                      max_upload_mb=0.05)


def make_folder(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "photo.png").write_bytes(PNG)
    (root / "notes.txt").write_text("not an image")
    return root


def check_answer(response, context) -> dict | None:
    """A 2xx or an expected 4xx; a JSON answer with a one-line message for a refusal; never a traceback."""
    assert response.status_code in EXPECTED_STATUSES, (context, response.status_code, response.text[:300])
    assert "Traceback" not in response.text[:20000], context
    if response.headers.get("content-type", "").startswith("application/json"):
        answer = response.json()
        if response.status_code >= 400:
            assert isinstance(answer.get("detail"), str) and answer["detail"].strip(), (context, answer)
        return answer
    assert response.status_code == 200, (context, response.status_code)
    return None


def annotation_file_ids(folder) -> list[int] | None:
    path = folder / "finesam-annotations" / "photo.png" / "annotations.json"
    if not path.is_file():
        return None
    return sorted(entry["id"] for entry in json.loads(path.read_text())["annotations"])


# --- values ---------------------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(-3, WIDTH + 3),
    st.floats(-100, 200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -0.0, 10**20, 2**63, -(2**63) - 1]),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=8,
)
GOOD_BOX = st.tuples(st.integers(0, 20), st.integers(0, 15), st.integers(30, WIDTH), st.integers(25, HEIGHT)).map(list)
BOX_BODIES = st.one_of(GOOD_BOX.map(lambda box: {"box": box}), st.fixed_dictionaries({"box": st.lists(NUMBERS, max_size=6)}),
                       JSON_VALUES)
CLICK_BODIES = st.one_of(
    st.fixed_dictionaries({"x": st.integers(0, WIDTH - 1), "y": st.integers(0, HEIGHT - 1), "positive": st.booleans()}),
    st.fixed_dictionaries({"x": NUMBERS, "y": NUMBERS}, optional={"positive": JSON_VALUES, "z": JSON_VALUES}),
    JSON_VALUES,
)
RAW_BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b"{}", b"[]", b"null", b'{"x": NaN, "y": 1}', b'{"x": 1e999, "y": 1}',
                     b'{"x": ' + b"9" * 5000 + b', "y": 1}', b"[" * 5000 + b"]" * 5000, b'{"box": [1, 2, 3, 4]}' + b" " * 70000,
                     "{\"x\": 1, \"y\": 2, \"\u00e9\": 3}".encode("utf-16")]),
)
PATHS = st.one_of(st.sampled_from(["photo.png", "./photo.png", "sub/../photo.png", "../photo.png", "/etc/passwd",
                                   "notes.txt", "missing.png", "finesam-annotations/photo.png/instances.png",
                                   "photo.png\x00.png", "", "." * 300]),
                  st.text(max_size=12))
IMAGE_IDS = st.one_of(st.just("{id}"), st.just("{other}"), st.text(min_size=1, max_size=10).map(lambda t: quote(t, safe="")))
HEADERS = st.one_of(
    st.just({}), st.just({}),
    st.fixed_dictionaries({}, optional={"Origin": st.sampled_from([ORIGIN, "http://attacker.example", "null", "http://testserver:81", "%%"]),
                                        "Sec-Fetch-Site": st.sampled_from(["same-origin", "none", "cross-site", "same-site", "bogus"]),
                                        "Content-Type": st.sampled_from(["application/json", "text/plain", "multipart/form-data"])}),
)


def as_json(value, headers: dict) -> dict:
    """TestClient arguments sending ``value`` as JSON (NaN and infinities included, as a browser may not)."""
    return {"content": json.dumps(value, allow_nan=True).encode(), "headers": {"Content-Type": "application/json", **headers}}


def is_cross_origin(headers: dict) -> bool:
    site = headers.get("Sec-Fetch-Site")
    origin = headers.get("Origin")
    return (site is not None and site not in ("same-origin", "none")) or (origin is not None and origin != ORIGIN)


@st.composite
def requests(draw):
    """(method, path template, keyword arguments of the TestClient call, headers)."""
    kind = draw(st.sampled_from(["box", "box", "click", "click", "step", "commit", "delete", "get", "hq", "open", "upload", "raw"]))
    image = draw(IMAGE_IDS)
    headers = draw(HEADERS)
    if kind == "box":
        return "post", f"/api/images/{image}/box", {"json": draw(BOX_BODIES)}, headers
    if kind == "click":
        return "post", f"/api/images/{image}/click", {"json": draw(CLICK_BODIES)}, headers
    if kind == "step":
        return "post", f"/api/images/{image}/{draw(st.sampled_from(['undo', 'clear', 'save']))}", {}, headers
    if kind == "commit":
        return "post", f"/api/images/{image}/commit", {}, headers
    if kind == "delete":
        object_id = draw(st.one_of(st.integers(-2, 6).map(str), st.sampled_from(["x", "1.5", "99999999999999999999", "%20"])))
        return "delete", f"/api/images/{image}/objects/{object_id}", {}, headers
    if kind == "get":
        path = draw(st.sampled_from([f"/api/images/{image}", f"/api/images/{image}/pixels", f"/api/images/{image}/export.zip",
                                     "/api/info", "/api/folder", "/", "/static/app.js", "/static/../README.md"]))
        return "get", path, {}, headers
    if kind == "hq":
        return "post", f"/api/images/{image}/hq_output", {"json": draw(st.one_of(st.fixed_dictionaries({"mode": JSON_VALUES}), JSON_VALUES))}, headers
    if kind == "open":
        body = draw(st.one_of(PATHS.map(lambda path: {"path": path}), JSON_VALUES))
        return "post", "/api/folder/open", {"json": body}, headers
    if kind == "upload":
        content = draw(st.sampled_from([PNG, PNG[:60], PNG[:-20], b"", b"GIF89a" + b"\x00" * 20, b"x" * 60_000]))
        name = draw(st.sampled_from(["a.png", "../../x.png", "\u00e9\u00e8.png", "", "a" * 300]))
        return "post", f"/api/images?name={quote(name)}", {"content": content}, headers
    target = draw(st.sampled_from([f"/api/images/{image}/click", f"/api/images/{image}/box", "/api/folder/open", f"/api/images/{image}/commit"]))
    body = draw(RAW_BODIES)
    if draw(st.booleans()):  # sent chunked, without Content-Length
        return "post", target, {"content": iter([body[: len(body) // 2], body[len(body) // 2:]])}, headers
    return "post", target, {"content": body}, headers


class Ledger:
    """The objects committed and not deleted, from the answers (a 409 with ``saved`` false still
    committed or deleted: the change is kept in memory)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.lock = threading.Lock()

    def record(self, method: str, path: str, status: int, answer: dict | None) -> None:
        kept = status == 200 or (status == 409 and isinstance(answer, dict) and answer.get("saved") is False)
        if not kept or not isinstance(answer, dict):
            return
        with self.lock:
            if path.endswith("/commit"):
                self.ids.add(answer["object"]["id"])
            elif method == "delete":
                self.ids.discard(answer["deleted"])


@pytest.fixture(scope="module")
def one_folder(model_and_cache, tmp_path_factory):
    folder = make_folder(tmp_path_factory.mktemp("serve_fuzz") / "images")
    app = make_app(model_and_cache, folder)
    client, other = TestClient(app, raise_server_exceptions=False), TestClient(app, raise_server_exceptions=False)
    return {"folder": folder, "client": client, "other": other, "ledger": Ledger(), "ids": {}}


def open_state(state, name: str) -> dict:
    """The session's view of the folder image (opened again if uploads closed it)."""
    client = state[name]
    image_id = state["ids"].get(name)
    answer = client.get(f"/api/images/{image_id}") if image_id else None
    if answer is None or answer.status_code != 200:
        answer = client.post("/api/folder/open", json={"path": "photo.png"})
        assert answer.status_code == 200, answer.text
        state["ids"][name] = answer.json()["id"]
    return answer.json()


@fuzz_settings(360)
@given(request=requests(), from_other=st.booleans())
def test_generated_requests(one_folder, count_case, request, from_other):
    count_case("serve requests")
    method, path, kwargs, headers = request
    if not one_folder["ids"]:
        open_state(one_folder, "client"), open_state(one_folder, "other")
    path = path.replace("{id}", one_folder["ids"]["client"]).replace("{other}", one_folder["ids"]["other"])
    client = one_folder["other" if from_other else "client"]  # {id} is then another session's image
    if "json" in kwargs:
        kwargs = as_json(kwargs["json"], headers)
    else:
        kwargs = {**kwargs, "headers": headers}
    response = getattr(client, method)(path, **kwargs)
    answer = check_answer(response, (method, path, headers))
    if is_cross_origin(headers) and method != "get":
        assert response.status_code == 403, (method, path, headers, response.text)
    if response.status_code == 200 and path.endswith("export.zip"):
        names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
        assert "instances.png" in names and "annotations.json" in names
    ledger = one_folder["ledger"]
    ledger.record(method, path, response.status_code, answer)
    # no lost committed object: both sessions see the ledger's objects, and so does the file
    for name in ("client", "other"):
        state = open_state(one_folder, name)
        assert sorted(o["id"] for o in state["objects"]) == sorted(ledger.ids), (method, path)
        assert state["unsaved"] is False
    if ledger.ids:
        assert annotation_file_ids(one_folder["folder"]) == sorted(ledger.ids)


# --- several sessions on one image at the same time --------------------------------------------------
# One model step per object (a box, then commit); the other actions do not run the model.
ACTIONS = st.one_of(
    GOOD_BOX.map(lambda box: ("box and commit", box)),
    st.integers(1, 4).map(lambda k: ("delete", f"objects/{k}")),
    st.sampled_from([("post", "commit"), ("post", "undo"), ("post", "clear"), ("post", "save"), ("get", "export.zip"),
                     ("get", ""), ("reopen", "")]),
)


@fuzz_settings(30)
@given(programs=st.lists(st.lists(ACTIONS, min_size=1, max_size=3), min_size=2, max_size=3),
       blocked=st.sampled_from(["none", "none", "annotations.json", "output folder"]))
def test_concurrent_sessions_on_one_image(model_and_cache, tmp_path_factory, count_case, programs, blocked):
    count_case("serve sessions")
    folder = make_folder(tmp_path_factory.mktemp("serve_sessions") / "images")
    obstacle = {"annotations.json": folder / "finesam-annotations" / "photo.png" / "annotations.json",
                "output folder": folder / "finesam-annotations"}.get(blocked)
    if blocked == "annotations.json":
        obstacle.mkdir(parents=True)
    elif blocked == "output folder":
        obstacle.write_text("a file in the way")
    app = make_app(model_and_cache, folder)
    clients = [TestClient(app, raise_server_exceptions=False) for _ in programs]
    image_ids = [client.post("/api/folder/open", json={"path": "photo.png"}).json()["id"] for client in clients]
    ledger, failures = Ledger(), []
    start = threading.Barrier(len(programs))

    def run(which: int) -> None:
        client = clients[which]
        start.wait()
        try:
            for method, action in programs[which]:
                if method == "reopen":
                    response = client.post("/api/folder/open", json={"path": "photo.png"})
                    image_ids[which] = response.json()["id"]
                    continue
                if method == "box and commit":
                    check_answer(client.post(f"/api/images/{image_ids[which]}/box", json={"box": action}), action)
                    method, action = "post", "commit"
                path = f"/api/images/{image_ids[which]}" + (f"/{action}" if action else "")
                response = getattr(client, method)(path)
                answer = check_answer(response, (method, path))
                if action == "save" and response.status_code != 200:
                    assert response.status_code == 409 and answer["saved"] is False, answer
                ledger.record(method, path, response.status_code, answer)
        except AssertionError as error:  # reported from the main thread
            failures.append(error)

    threads = [threading.Thread(target=run, args=(which,)) for which in range(len(programs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    expected = sorted(ledger.ids)
    for client, image_id in zip(clients, image_ids):
        state = client.get(f"/api/images/{image_id}").json()
        assert sorted(o["id"] for o in state["objects"]) == expected
        zipped = zipfile.ZipFile(io.BytesIO(client.get(f"/api/images/{image_id}/export.zip").content))
        assert sorted(name for name in zipped.namelist() if name.startswith("object_")) == [f"object_{k:03d}.png" for k in expected]
    state = clients[0].get(f"/api/images/{image_ids[0]}").json()
    if blocked == "none":
        assert not state["unsaved"] and (annotation_file_ids(folder) or []) == expected
    else:
        assert not state["unsaved"] or state["save_error"]  # unsaved work always says why
        if obstacle.is_dir():
            shutil.rmtree(obstacle)
        else:
            obstacle.unlink()
        saved = clients[-1].post(f"/api/images/{image_ids[-1]}/save")
        assert saved.status_code == 200, saved.text
        assert annotation_file_ids(folder) == expected and not saved.json()["unsaved"]


# --- resume files ---------------------------------------------------------------------------------------
def valid_document(ids: list[int]) -> dict:
    from finesam.formats.rle import encode_rle

    annotations = []
    for k, object_id in enumerate(ids):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        mask[k: k + 10, k: k + 12] = True
        annotations.append({"id": object_id, "image_id": 1, "category_id": 1, "segmentation": encode_rle(mask),
                            "score": 0.5, "box": [0, 0, 10, 10], "clicks": [[3, 4, 1]]})
    return {"images": [{"id": 1, "file_name": "photo.png", "width": WIDTH, "height": HEIGHT}], "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}]}


FIELDS = ["id", "score", "box", "clicks", "segmentation", "image_id"]


@st.composite
def resume_files(draw):
    """A resume file: a valid document with one field of one annotation replaced, or any JSON, or bytes."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "any json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "any json":
        return json.dumps(draw(JSON_VALUES), allow_nan=True).encode()
    document = valid_document(draw(st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True)))
    entry = draw(st.sampled_from(document["annotations"]))
    field = draw(st.sampled_from(FIELDS))
    if draw(st.integers(0, 4)) == 0:
        entry.pop(field)
    else:
        entry[field] = draw(st.one_of(JSON_VALUES, st.integers(-(2**70), 2**70),
                                      st.fixed_dictionaries({"size": st.lists(st.integers(-2, 100), max_size=3),
                                                             "counts": st.one_of(st.text(max_size=8), st.lists(st.integers(-5, 4000), max_size=4))})))
    return json.dumps(document, allow_nan=True).encode()


@pytest.fixture(scope="module")
def resume_folder(model_and_cache, tmp_path_factory):
    folder = make_folder(tmp_path_factory.mktemp("serve_resume") / "images")
    return {"folder": folder, "client": TestClient(make_app(model_and_cache, folder), raise_server_exceptions=False),
            "examples": 0}


@fuzz_settings(260)
@given(content=resume_files())
def test_generated_resume_files(resume_folder, model_and_cache, count_case, content):
    count_case("serve resume files")
    folder, client = resume_folder["folder"], resume_folder["client"]
    resume_folder["examples"] += 1
    name = f"photo_{resume_folder['examples']}.png"  # the same pixels (encoded once), a path no session has open
    (folder / name).write_bytes(PNG)
    annotations = folder / "finesam-annotations" / name
    annotations.mkdir(parents=True)
    (annotations / "annotations.json").write_bytes(content)
    response = client.post("/api/folder/open", json={"path": name})
    answer = check_answer(response, content[:200])
    if response.status_code != 200:
        assert response.status_code == 400 and "cannot resume from" in answer["detail"], answer
        assert "move the file away" in answer["detail"]
        return
    count_case("serve resume files, accepted")
    ids = [o["id"] for o in answer["objects"]]
    assert all(1 <= k <= 65535 for k in ids) and len(set(ids)) == len(ids)
    assert all(np.isfinite(o["score"]) for o in answer["objects"])
    exported = client.get(f"/api/images/{answer['id']}/export.zip")  # a resumed list exports and saves
    assert exported.status_code == 200, exported.text
    instances = np.asarray(Image.open(zipfile.ZipFile(io.BytesIO(exported.content)).open("instances.png")))
    assert set(np.unique(instances).tolist()) <= {0, *ids}
    assert check_answer(client.post(f"/api/images/{answer['id']}/save"), content[:200])["unsaved"] is False
