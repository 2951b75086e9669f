"""End to end against a real Label Studio 1.23.2 (from `.venv-ls`, see ls_server.py): a project with
Image + BrushLabels + smart KeyPointLabels / RectangleLabels, a real photo imported, `finesam
label-studio` connected as an interactive ML backend; Label Studio's own interactive-annotating
call (what its page sends on every click) returns the brush mask that SamPredictor gives for the
same prompts; a Pi-SAM backend (with basic auth) corrects its box mask; Retrieve Predictions stores
a prediction. Label Studio downloads nothing here: the backend fetches the image from Label Studio
with the token it sent to /setup."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the backend needs the serve extra: pip install 'finesam[serve]'")
httpx = pytest.importorskip("httpx")

import finesam  # noqa: E402
from conftest import data_path  # noqa: E402
from finesam.data.images import read_image  # noqa: E402
from finesam.formats.brush import brush_rle_to_mask  # noqa: E402
from finesam.label_studio.app import create_app  # noqa: E402
from finesam.label_studio.backend import Backend  # noqa: E402
from finesam.label_studio.images import ImageReader, LabelStudioHost  # noqa: E402
from finesam.registry import REGISTRY  # noqa: E402
from finesam.server.cache import FeatureCache  # noqa: E402
from finesam.server.cache import image_key  # noqa: E402
from ls_helpers import REPO, require_ls_venv  # noqa: E402
from ls_server import TOKEN, copy_of_template, free_port, running, stop  # noqa: E402

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""
PHOTO = ("ecssd", "im", "0001.jpg")
BASIC_AUTH = ("label-studio", "finesam-e2e")


@pytest.fixture(scope="module")
def photo():
    path = data_path(*PHOTO)
    return path, read_image(path)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    require_ls_venv()
    data_dir = copy_of_template(tmp_path_factory.mktemp("label-studio") / "data")
    with running(data_dir) as url, httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120) as client:
        yield client


def _wait_health(url: str, process: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"finesam label-studio exited with code {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2, auth=BASIC_AUTH).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the backend at {url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def mobile_backend():
    """`finesam label-studio --random-weights --model mobile_sam` on a free loopback port."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-m", "finesam.cli", "label-studio", "--random-weights", "--model", "mobile_sam",
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _wait_health(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def pi_backend(label_studio):
    """A Pi-SAM backend (depth-reduced ViT-B, random weights; the replay does not depend on depth)
    served in this process with basic auth, reading images with a personal access token (as
    LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY give it: Label Studio 1.23 disables legacy tokens by default)."""
    uvicorn = pytest.importorskip("uvicorn")
    created = label_studio.post("/api/token/")
    assert created.status_code == 201, created.text
    host = LabelStudioHost.parse(str(label_studio.base_url).rstrip("/"), created.json()["token"])
    spec = REGISTRY["pi_vit_b"].with_encoder(depth=2, global_attn_indexes=(1,))
    model = finesam.load(spec, random_weights=True)
    backend = Backend(model, "pi_vit_b", ImageReader(), FeatureCache(10**9), host=host)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend, basic_auth=BASIC_AUTH), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_health(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}", backend
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def new_project(client, photo_path, title: str) -> tuple[int, int]:
    """A project with CONFIG and the photo uploaded as its one task: (project id, task id)."""
    project = client.post("/api/projects", json={"title": title, "label_config": CONFIG})
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    with open(photo_path, "rb") as file:
        imported = client.post(f"/api/projects/{project_id}/import", files={"file": (photo_path.name, file, "image/jpeg")})
    assert imported.status_code == 201, imported.text
    (task,) = client.get("/api/tasks", params={"project": project_id}).json()["tasks"]
    assert task["data"]["image"].startswith(f"/data/upload/{project_id}/")
    return project_id, task["id"]


def connect(client, project_id: int, url: str, **auth) -> int:
    answer = client.post("/api/ml", json={"url": url, "project": project_id, "title": "finesam", "is_interactive": True, **auth})
    assert answer.status_code == 201, answer.text
    assert answer.json()["readable_state"] == "Connected" and answer.json()["model_version"].startswith("finesam-")
    return answer.json()["id"]


def click(x, y, positive=True):
    return {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": positive, "origin": "manual",
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["Object"]}}


def box(x, y, w, h):
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "origin": "manual",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]}}


def with_size(regions, image):
    height, width = image.shape[:2]
    return [{**region, "original_width": width, "original_height": height, "image_rotation": 0} for region in regions]


def interactive(client, ml_id: int, task_id: int, regions, image) -> np.ndarray:
    """Label Studio's interactive-annotating call; returns the decoded brush mask it answers."""
    answer = client.post(f"/api/ml/{ml_id}/interactive-annotating",
                         json={"task": task_id, "context": {"result": with_size(regions, image)}})
    assert answer.status_code == 200, answer.text
    assert "errors" not in answer.json(), answer.json()
    (region,) = answer.json()["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
    assert (region["from_name"], region["to_name"], region["value"]["format"]) == ("mask", "image", "rle")
    return brush_rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])


def px(percent, size):
    return percent * (size / 100.0)  # the backend's conversion of Label Studio's percentages


def test_clicks_and_box_through_label_studio(label_studio, mobile_backend, photo):
    photo_path, image = photo
    height, width = image.shape[:2]
    project_id, task_id = new_project(label_studio, photo_path, "finesam mobile_sam")
    ml_id = connect(label_studio, project_id, mobile_backend)
    predictor = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))  # the seed of --random-weights
    predictor.set_image(image)

    first = np.array([[px(45, width), px(55, height)]])
    masks, scores, low_res = predictor.predict(first, np.array([1]), multimask_output=True)  # one click: best of three
    best = int(np.argmax(scores))
    assert (interactive(label_studio, ml_id, task_id, [click(45, 55)], image) == masks[best]).all()

    both = np.concatenate([first, [[px(80, width), px(20, height)]]])
    refined, _, _ = predictor.predict(both, np.array([1, 0]), mask_input=low_res[best:best + 1], multimask_output=False)
    got = interactive(label_studio, ml_id, task_id, [click(45, 55), click(80, 20, positive=False)], image)
    assert (got == refined[0]).all()

    boxed, _, _ = predictor.predict(box=np.array([px(10, width), px(15, height), px(85, width), px(90, height)]),
                                    multimask_output=False)
    got = interactive(label_studio, ml_id, task_id, [box(10, 15, 75, 75)], image)
    assert got.any() and (got == boxed[0]).all()

    # A refused context comes back from Label Studio as an error entry, not as a mask.
    refused = label_studio.post(f"/api/ml/{ml_id}/interactive-annotating",
                                json={"task": task_id, "context": {"result": with_size([click(150, 50)], image)}})
    assert refused.status_code == 200 and refused.json()["errors"] and "data" not in refused.json()

    # Retrieve Predictions: a /predict without context; Label Studio stores what the backend answers.
    action = label_studio.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project_id},
                               json={"selectedItems": {"all": False, "included": [task_id]}})
    assert action.status_code == 200, action.text
    (prediction,) = label_studio.get("/api/predictions", params={"task": task_id}).json()
    assert prediction["model_version"] == "finesam-mobile_sam-random-weights" and prediction["result"] == []

    # Saving an annotation fires the backend's webhook; Label Studio accepts the annotation either way.
    annotation = label_studio.post(f"/api/tasks/{task_id}/annotations", json={"result": [], "task": task_id})
    assert annotation.status_code == 201, annotation.text


def test_pi_box_then_correction_through_label_studio(label_studio, pi_backend, photo):
    photo_path, image = photo
    height, width = image.shape[:2]
    url, backend = pi_backend
    project_id, task_id = new_project(label_studio, photo_path, "finesam pi")
    ml_id = connect(label_studio, project_id, url, auth_method="BASIC_AUTH", basic_auth_user=BASIC_AUTH[0],
                    basic_auth_pass=BASIC_AUTH[1])
    first = interactive(label_studio, ml_id, task_id, [box(10, 15, 75, 75)], image)
    # The features the backend computed (SamPredictor.set_image on the downloaded photo), not a second encoding.
    entry = backend.cache.get(image_key(image))
    assert entry is not None, "the backend should hold the features of the photo's pixels, downloaded from Label Studio"
    predictor = finesam.SamPredictor(backend.model)
    predictor.set_features(entry.features, image.shape[:2])
    boxed, _, _ = predictor.predict(box=np.array([px(10, width), px(15, height), px(85, width), px(90, height)]))
    assert (first == boxed[0]).all()
    corrected, _, _ = predictor.correct(np.array([[px(50, width), px(50, height)]]), np.array([[px(15, width), px(85, height)]]))
    got = interactive(label_studio, ml_id, task_id, [box(10, 15, 75, 75), click(50, 50), click(15, 85, positive=False)], image)
    assert (got == corrected[0]).all()
