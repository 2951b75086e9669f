"""The Label Studio ML backend's HTTP contract, with FastAPI's test client: health / setup / webhook,
masks that are InteractiveSession's replay of the context (SAM and Pi-SAM), the feature cache, image
sources (Label Studio with its token, --allow-host, --root; no other host, no redirect), basic auth,
--auto, and a 4xx with a message for every bad request."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the backend needs the serve extra: pip install 'finesam[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

import finesam  # noqa: E402
from conftest import data_path  # noqa: E402
from finesam import cli  # noqa: E402
from finesam.data.images import read_image  # noqa: E402
from finesam.formats.brush import brush_rle_to_mask  # noqa: E402
from finesam.label_studio.app import create_app  # noqa: E402
from finesam.label_studio.backend import Backend  # noqa: E402
from finesam.label_studio.images import ImageReader  # noqa: E402
from finesam.predict.automatic_mask_generator import AutomaticMaskGenerator  # noqa: E402
from finesam.predict.interactive import InteractiveSession  # noqa: E402
from finesam.registry import REGISTRY  # noqa: E402
from finesam.server.cache import FeatureCache, image_key  # noqa: E402

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Cat"/><Label value="Dog"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Cat"/><Label value="Dog"/></RectangleLabels>
  <Choices name="quality" toName="image"><Choice value="good"/></Choices>
</View>"""
TOKEN = "secret-token-1"


def click(x, y, positive=True, label="Cat", **extra):
    region = {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": positive,
              "original_width": 267, "original_height": 400, "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}
    region.update(extra)
    return region


def box(x, y, w, h, label="Cat", **value):
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": 267, "original_height": 400,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label], **value}}


def request(regions, image="0001.jpg", tasks=None, config=CONFIG):
    return {"tasks": tasks or [{"id": 7, "data": {"image": image}}], "project": "3.1700000000", "label_config": config,
            "params": {"login": None, "password": None, "context": {"result": regions} if regions is not None else None}}


@pytest.fixture(scope="module")
def image_root() -> Path:
    return data_path("ecssd", "im")


@pytest.fixture(scope="module")
def image(image_root):
    return read_image(image_root / "0001.jpg")


@pytest.fixture(scope="module")
def model():
    return finesam.load("mobile_sam", random_weights=True)


SHARED_CACHE = FeatureCache(10**9)  # the photo is encoded once for the tests of one model


def make_backend(model, root=None, allow=(), cache=SHARED_CACHE, **options) -> Backend:
    return Backend(model, options.pop("name", "mobile_sam"), ImageReader(root, allow), cache, **options)


@pytest.fixture(scope="module")
def backend(model, image_root):
    return make_backend(model, image_root)


@pytest.fixture(scope="module")
def client(backend):
    return local_client(create_app(backend))


def local_client(app) -> TestClient:
    """A test client that calls as Label Studio on this machine does (Host: 127.0.0.1)."""
    return TestClient(app, base_url="http://127.0.0.1")


def replay(model, image, steps) -> InteractiveSession:
    """The reference: InteractiveSession on the same image, ``steps`` of ("box", xyxy) / ("click", x, y, positive)
    in pixels; with the features of SamPredictor.set_image that the backend cached (as tests/server does)."""
    predictor = finesam.SamPredictor(model)
    entry = SHARED_CACHE.get(image_key(image))
    if entry is not None:
        predictor.set_features(entry.features, image.shape[:2])
    else:
        predictor.set_image(image)
    session = InteractiveSession(predictor)
    for step in steps:
        if step[0] == "box":
            session.set_box(step[1])
        else:
            session.add_click(step[1], step[2], positive=step[3])
    return session


def px(percent, size):
    return percent * (size / 100.0)


def the_mask(answer) -> np.ndarray:
    (entry,) = answer["results"]
    (region,) = entry["result"]
    return brush_rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])


# --- the contract ------------------------------------------------------------------------------------
def test_health_setup_webhook(client):
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["model_class"] == "finesam:mobile_sam"
    assert client.get("/").json() == health and client.get("/metrics").json() == {}
    setup = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": "http://localhost:8080",
                                        "access_token": TOKEN, "extra_params": None})
    assert setup.status_code == 200 and setup.json() == {"model_version": "finesam-mobile_sam"}
    for event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        answer = client.post("/webhook", json={"action": event, "project": {"id": 3}, "annotation": {"id": 1}})
        assert answer.status_code == 201 and answer.json()["status"] == "ok"
    other = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 3}})
    assert other.status_code == 200 and other.json() == {"status": "Unknown event"}


def test_clicks_and_box_are_the_sessions_replay(client, backend, model, image):
    height, width = image.shape[:2]
    regions = [box(10, 12.5, 70, 80), click(40, 50), click(62.5, 30, positive=False)]
    answer = client.post("/predict", json=request(regions))
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["results"]
    (region,) = entry["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Cat"]
    assert (region["original_width"], region["original_height"]) == (width, height)
    assert entry["model_version"] == "finesam-mobile_sam"
    expected = replay(model, image, [("box", [px(10, width), px(12.5, height), px(80, width), px(92.5, height)]),
                                     ("click", px(40, width), px(50, height), True),
                                     ("click", px(62.5, width), px(30, height), False)])
    mask = the_mask(answer.json())
    assert mask.any() and (mask == expected.mask).all()
    assert entry["score"] == pytest.approx(expected.result.score, abs=1e-6)


def test_a_click_costs_one_decoder_run_after_the_first(model, image_root, image):
    backend = make_backend(model, image_root, cache=FeatureCache(10**9))
    client = local_client(create_app(backend))
    first = client.post("/predict", json=request([click(30, 40, label="Dog")])).json()
    second = client.post("/predict", json=request([click(30, 40, label="Dog"), click(60, 70)])).json()
    assert backend.encoder_runs == 1  # the image is encoded once (cached by its pixels)
    assert first["results"][0]["result"][0]["value"]["brushlabels"] == ["Dog"]  # the first labelled region's label
    height, width = image.shape[:2]
    expected = replay(model, image, [("click", px(30, width), px(40, height), True), ("click", px(60, width), px(70, height), True)])
    assert (the_mask(second) == expected.mask).all()


def test_without_context_every_task_gets_an_empty_result(client):
    tasks = [{"id": 1, "data": {"image": "0001.jpg"}}, {"id": 2, "data": {"image": "0002.jpg"}}]
    for context in (None, {"result": []}):
        body = request(None, tasks=tasks)
        body["params"]["context"] = context
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200
        assert [entry["result"] for entry in answer.json()["results"]] == [[], []]


def test_auto_gives_every_object_as_brush_regions(model, image_root, image):
    generator = AutomaticMaskGenerator(model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    client = local_client(create_app(make_backend(model, image_root, auto_generator=generator)))
    answer = client.post("/predict", json=request(None))
    assert answer.status_code == 200, answer.text
    regions = answer.json()["results"][0]["result"]
    expected = generator.generate(image)
    assert len(regions) == len(expected) > 0
    for region, record in zip(regions, expected):
        assert region["value"]["brushlabels"] == ["Cat"]  # the BrushLabels tag's first label
        assert (brush_rle_to_mask(region["value"]["rle"], *image.shape[:2]) == record["segmentation"]).all()


# --- Pi-SAM: the box, then its correction ---------------------------------------------------------
def test_pi_model_corrects_the_box_mask(image_root, image):
    spec = REGISTRY["pi_vit_b"].with_encoder(depth=2, global_attn_indexes=(1,))  # the replay does not depend on depth
    pi = finesam.load(spec, random_weights=True)
    backend = make_backend(pi, image_root, name="pi_vit_b", cache=FeatureCache(10**9))  # a cache belongs to one model
    client = local_client(create_app(backend))
    height, width = image.shape[:2]
    answer = client.post("/predict", json=request([box(10, 10, 80, 80), click(50, 50), click(20, 85, positive=False)]))
    assert answer.status_code == 200, answer.text
    predictor = finesam.SamPredictor(pi)
    predictor.set_features(backend.cache.get(image_key(image)).features, image.shape[:2])  # set_image's, once
    predictor.predict(box=np.array([px(10, width), px(10, height), px(90, width), px(90, height)]))
    corrected, _, _ = predictor.correct(np.array([[px(50, width), px(50, height)]]), np.array([[px(20, width), px(85, height)]]))
    assert (the_mask(answer.json()) == corrected[0]).all()
    refused = client.post("/predict", json=request([click(50, 50)]))
    assert refused.status_code == 400 and "draw a rectangle" in refused.json()["detail"]


# --- bad requests: a 4xx with a message ---------------------------------------------------------------
@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 422, "not valid JSON"),
    (b'{"tasks": [{"data": {"image": "0001.jpg"}}], "label_config": "x", "params": {"context": {"result": [{"value": {"x": NaN}}]}}}',
     422, "NaN is not a number JSON allows"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"tasks": []}', 400, "non-empty list of Label Studio tasks"),
])
def test_malformed_bodies(client, body, status, message):
    answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status and message in answer.json()["detail"]
    assert answer.json()["errors"] == [answer.json()["detail"]] and "Traceback" not in answer.text


@pytest.mark.parametrize("change, message", [
    (lambda b: b["tasks"].__setitem__(0, {"id": 7}), "task 0 is not a Label Studio task"),
    (lambda b: b["tasks"][0]["data"].pop("image"), "has no data field 'image'"),
    (lambda b: b["tasks"].append({"id": 8, "data": {"image": "0002.jpg"}}), "belongs to one task"),
    (lambda b: b["params"]["context"]["result"][0].update(from_name="quality"), "not a KeyPointLabels or RectangleLabels tag"),
    (lambda b: b["params"]["context"]["result"][0].update(to_name="other"), "not an Image tag"),
    (lambda b: b["params"]["context"]["result"][0].update(type="rectanglelabels"), "has type 'rectanglelabels'"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(x=100.5), "value.x is 100.5, outside 0..100"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(y=-3), "value.y is -3, outside 0..100"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(x="NaN"), "value.x must be a number"),
    (lambda b: b["params"]["context"]["result"][0].update(is_positive="yes"), "is_positive must be true or false"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(keypointlabels=["Bird"]), "not a label of the BrushLabels"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(keypointlabels=[]), "no region of the context has a label"),
    (lambda b: b["params"]["context"]["result"].append(box(50, 50, 60, 10)), "x + width = 110"),
    (lambda b: b["params"]["context"]["result"].append(box(5, 5, 10, 10, rotation=30)), "rotated rectangle"),
    (lambda b: b["params"].update(context=[1]), "params.context must be an object"),
    (lambda b: b.update(label_config=CONFIG.replace("BrushLabels", "PolygonLabels")), "no BrushLabels tag for the Image 'image'"),
    (lambda b: b.update(label_config="<View><Image"), "not valid XML"),
    (lambda b: b["tasks"][0]["data"].update(image="../gt/0001.png"), "outside --root"),
    (lambda b: b["tasks"][0]["data"].update(image="/etc/hostname"), "outside --root"),
    (lambda b: b["tasks"][0]["data"].update(image="missing.jpg"), "does not exist under --root"),
    (lambda b: b["tasks"][0]["data"].update(image="http://169.254.169.254/latest/meta-data"), "--allow-host 169.254.169.254"),
    (lambda b: b["tasks"][0]["data"].update(image="s3://bucket/a.jpg"), "has the scheme 's3'"),
])
def test_bad_requests_get_400_with_a_message(client, change, message):
    body = request([click(40, 50)])
    change(body)
    answer = client.post("/predict", json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["detail"] and "Traceback" not in answer.text


def test_config_without_brush_is_refused_at_setup(client):
    answer = client.post("/setup", json={"project": "1.2", "schema": "<View><Image name='img' value='$image'/></View>"})
    assert answer.status_code == 400 and "no BrushLabels tag whose toName is an Image" in answer.json()["detail"]
    answer = client.post("/predict", json=request(None, config="<View><Image name='img' value='$image'/></View>"))
    assert answer.status_code == 400 and "BrushLabels" in answer.json()["detail"]


def test_webhook_without_object_and_host_header(client):
    assert client.post("/webhook", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/webhook", json=[1]).status_code == 400
    assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_basic_auth(model):
    client = local_client(create_app(make_backend(model), basic_auth=("ls", "pass word")))
    assert client.get("/health").status_code == 401
    assert client.get("/health", auth=("ls", "wrong")).status_code == 401
    answer = client.post("/setup", auth=("ls", "wrong"), json={})
    assert answer.status_code == 401 and "basic authentication" in answer.json()["detail"]
    assert client.get("/health", auth=("ls", "pass word")).json()["status"] == "UP"


# --- images from Label Studio, with its token; only there and from --allow-host ----------------------
class _FileServer:
    """A stand-in for Label Studio's file serving (stdlib): /data/upload/photo.jpg needs the token,
    /moved redirects; every request's Authorization header is recorded."""

    def __init__(self, photo: bytes, token: str | None) -> None:
        self.seen: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.seen.append(self.headers.get("Authorization"))
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/")
                    self.end_headers()
                elif token is not None and self.headers.get("Authorization") != f"Token {token}":
                    self.send_error(401)
                elif self.path == "/data/upload/photo.jpg":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(photo)))
                    self.end_headers()
                    self.wfile.write(photo)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_images_from_label_studio_and_allowed_hosts(model, image_root, image):
    photo = (image_root / "0001.jpg").read_bytes()
    label_studio, other = _FileServer(photo, TOKEN), _FileServer(photo, None)
    try:
        other_port = other.url.rsplit(":", 1)[1]
        client = local_client(create_app(make_backend(model, allow=(f"localhost:{other_port}",))))
        body = request([click(40, 50)], image="/data/upload/photo.jpg")
        unknown = client.post("/predict", json=body)
        assert unknown.status_code == 400 and "LABEL_STUDIO_URL" in unknown.json()["detail"]
        assert client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": label_studio.url,
                                           "access_token": "wrong"}).status_code == 200
        refused = client.post("/predict", json=body)
        assert refused.status_code == 400 and "HTTP 401" in refused.json()["detail"] and "LABEL_STUDIO_API_KEY" in refused.json()["detail"]
        client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": label_studio.url, "access_token": TOKEN})
        mask = the_mask(client.post("/predict", json=body).json())
        height, width = image.shape[:2]
        assert (mask == replay(model, image, [("click", px(40, width), px(50, height), True)]).mask).all()
        assert client.post("/predict", json=request([click(40, 50)], image=label_studio.url + "/data/upload/photo.jpg")).status_code == 200
        assert label_studio.seen[-1] == f"Token {TOKEN}"
        moved = client.post("/predict", json=request([click(40, 50)], image=label_studio.url + "/moved"))
        assert moved.status_code == 400 and "redirects are not followed" in moved.json()["detail"]
        # --allow-host names localhost:<port>: downloads from it, without Label Studio's token
        allowed = client.post("/predict", json=request([click(40, 50)], image=f"http://localhost:{other_port}/data/upload/photo.jpg"))
        assert allowed.status_code == 200, allowed.text
        assert other.seen == [None]
        for path in ("0001.jpg", "/etc/hostname", "file:///etc/hostname"):
            local = client.post("/predict", json=request([click(40, 50)], image=path))
            assert local.status_code == 400 and "start the backend with --root DIR" in local.json()["detail"]
    finally:
        label_studio.close()
        other.close()


# --- the command line refuses bad options in one line, before loading a model -------------------------
@pytest.mark.parametrize("argv, env, message", [
    (["--port", "0"], {}, "--port must be 1..65535"),
    (["--basic-auth-user", "ls"], {}, "give both --basic-auth-user and --basic-auth-pass"),
    (["--model", "pi_vit_b", "--auto"], {}, "prompts a grid of points"),
    (["--root", "/nonexistent-folder"], {}, "is not a folder"),
    (["--allow-host", "http://x/y"], {}, "--allow-host takes a host name"),
    ([], {"LABEL_STUDIO_API_KEY": "k"}, "without LABEL_STUDIO_URL"),
    ([], {"LABEL_STUDIO_URL": "localhost:8080"}, "is not an http(s) URL"),
])
def test_cli_refusals(argv, env, message, monkeypatch, capsys):
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["label-studio", "--random-weights", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("finesam label-studio: ") and message in err and len(err.splitlines()) == 1


def test_json_answers_are_json(client):
    answer = client.post("/predict", json=request([click(40, 50)]))
    json.loads(answer.text)  # the brush RLE is plain ints
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in answer.json()["results"][0]["result"][0]["value"]["rle"])


def test_label_studio_host_keeps_a_path_prefix_and_drops_credentials():
    from finesam.label_studio.images import LabelStudioHost

    assert LabelStudioHost.parse("http://LocalHost:8080/").url == "http://localhost:8080"
    assert LabelStudioHost.parse("https://u:p@ls.example.com/label-studio/", "t").url == "https://ls.example.com/label-studio"
    with pytest.raises(ValueError, match="not an http"):
        LabelStudioHost.parse("ftp://ls.example.com")
