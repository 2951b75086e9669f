"""The web tool's JSON API (FastAPI's test client): every endpoint, the same masks as
InteractiveSession, export, session isolation, and the safety rules (size limits, pixel limit,
folder confinement, 4xx answers with a message for bad requests)."""

from __future__ import annotations

import io
import json
import struct
import sys
import threading
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_path
from server_helpers import make_app, reference_session, runs_to_mask, shared_cache, shared_model

from fastapi.testclient import TestClient  # noqa: E402  (server_helpers skips without fastapi)

from finesam import cli  # noqa: E402
from finesam.modeling.contracts.features import ImageFeatures  # noqa: E402
from finesam.server.app import is_loopback  # noqa: E402
from finesam.server.cache import FeatureCache, features_nbytes  # noqa: E402


@pytest.fixture(scope="module")
def image_path():
    return data_path("ecssd", "im", "0001.jpg")  # 267x400


@pytest.fixture(scope="module")
def app():
    return make_app()


def upload(client, path, name="0001.jpg"):
    answer = client.post(f"/api/images?name={name}", content=path.read_bytes())
    assert answer.status_code == 200, answer.text
    return answer.json()


def mask_of(answer: dict, height=400, width=267) -> np.ndarray:
    return runs_to_mask(answer["current"]["mask"], height, width)


def test_page_and_static_files_are_served_without_external_resources(app):
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        served = client.get(f"/static/{name}")
        assert served.status_code == 200 and len(served.text) > 100
        assert "http://" not in served.text and "https://" not in served.text, f"{name} loads something remote"
    assert "http://" not in page.text and "https://" not in page.text
    info = client.get("/api/info").json()
    assert info["model"] == "mobile_sam" and info["random_weights"] and info["corrects_clicks"] is False
    assert info["max_upload_mb"] == 50 and info["output_modes"] == []


def test_prompts_give_the_masks_of_interactive_session_and_never_rerun_the_encoder(app, image_path):
    client = TestClient(app)
    opened = upload(client, image_path)
    assert (opened["width"], opened["height"]) == (267, 400) and opened["objects"] == []
    encoder_calls = shared_model().encoder_calls
    image_id = opened["id"]
    reference = reference_session(image_path)

    steps = [
        ("box", {"box": [40, 50, 230, 330]}, lambda: reference.set_box([40, 50, 230, 330])),
        ("click", {"x": 130, "y": 200, "positive": True}, lambda: reference.add_click(130, 200, True)),
        ("click", {"x": 60, "y": 80, "positive": False}, lambda: reference.add_click(60, 80, False)),
        ("undo", None, reference.undo),
    ]
    for path, body, replay in steps:
        answer = client.post(f"/api/images/{image_id}/{path}", json=body)
        assert answer.status_code == 200, answer.text
        expected = replay()
        np.testing.assert_array_equal(mask_of(answer.json()), expected)
        assert answer.json()["current"]["score"] == pytest.approx(reference.result.score)
        assert answer.json()["latency_ms"] >= 0
    current = answer.json()["current"]
    assert current["box"] == [40, 50, 230, 330] and current["clicks"] == [[130, 200, 1]] and current["can_undo"]

    committed = client.post(f"/api/images/{image_id}/commit").json()
    assert committed["object"]["id"] == 1 and committed["current"]["mask"] is None
    np.testing.assert_array_equal(runs_to_mask(committed["object"]["mask"], 400, 267), reference.mask)
    assert committed["object"]["area"] == int(reference.mask.sum())
    assert committed["saved_to"] is None  # an upload is not written anywhere

    cleared = client.post(f"/api/images/{image_id}/box", json={"box": [0, 0, 100, 100]})
    assert cleared.json()["current"]["box"] == [0, 0, 100, 100]
    after = client.post(f"/api/images/{image_id}/clear").json()["current"]
    assert after["box"] is None and after["mask"] is None and not after["can_undo"]
    assert shared_model().encoder_calls == encoder_calls, "a prompt ran the image encoder"

    state = client.get(f"/api/images/{image_id}").json()
    assert [o["id"] for o in state["objects"]] == [1]
    pixels = client.get(f"/api/images/{image_id}/pixels")
    from finesam.data.images import read_image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(pixels.content))), read_image(image_path))


def test_export_has_instance_png_object_pngs_and_coco_json(app, image_path):
    mask_api = pytest.importorskip("pycocotools.mask")
    client = TestClient(app)
    image_id = upload(client, image_path)["id"]
    masks = []
    for box in ([40, 50, 230, 330], [10, 10, 120, 150], [150, 250, 260, 390]):
        client.post(f"/api/images/{image_id}/box", json={"box": box})
        masks.append(runs_to_mask(client.post(f"/api/images/{image_id}/commit").json()["object"]["mask"], 400, 267))
    assert client.delete(f"/api/images/{image_id}/objects/3").json()["objects"] == [1, 2]
    exported = client.get(f"/api/images/{image_id}/export.zip")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(exported.content))
    assert sorted(archive.namelist()) == ["annotations.json", "instances.png", "object_001.png", "object_002.png"]
    instances = np.asarray(Image.open(archive.open("instances.png")))
    expected = np.zeros((400, 267), np.uint8)
    expected[masks[0]] = 1
    expected[masks[1]] = 2  # the later object on top
    np.testing.assert_array_equal(instances, expected)
    document = json.loads(archive.read("annotations.json"))
    assert document["images"] == [{"id": 1, "file_name": "0001.jpg", "width": 267, "height": 400}]
    for annotation, mask in zip(document["annotations"], masks[:2]):
        np.testing.assert_array_equal(np.asarray(Image.open(archive.open(annotation["mask_file"]))), mask * np.uint8(255))
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_api.decode(rle).astype(bool), mask)  # pycocotools reads it
        assert annotation["area"] == int(mask_api.area(rle)) == int(mask.sum())
        assert annotation["bbox"] == pytest.approx(mask_api.toBbox(rle).tolist())
        assert 0 <= annotation["id"] and isinstance(annotation["score"], float)


def test_browser_sessions_are_isolated(app, image_path):
    first, second = TestClient(app), TestClient(app)
    image_id = upload(first, image_path)["id"]
    first.post(f"/api/images/{image_id}/box", json={"box": [40, 50, 230, 330]})
    first.post(f"/api/images/{image_id}/commit")
    assert second.get(f"/api/images/{image_id}").status_code == 404
    assert second.post(f"/api/images/{image_id}/click", json={"x": 5, "y": 5}).status_code == 404
    assert second.delete(f"/api/images/{image_id}/objects/1").status_code == 404
    assert second.get(f"/api/images/{image_id}/export.zip").status_code == 404
    reopened = upload(second, image_path)
    assert reopened["cached"] and reopened["encode_ms"] == 0  # the same pixels: features shared, state not
    assert reopened["objects"] == [] and reopened["id"] != image_id
    assert image_id in first.get("/api/info").json()["open_images"]
    assert image_id not in second.get("/api/info").json()["open_images"]
    assert len(first.get(f"/api/images/{image_id}").json()["objects"]) == 1


def test_upload_over_the_limit_is_refused_from_content_length(image_path):
    app = make_app(max_upload_mb=0.001)  # 1000 bytes
    client = TestClient(app)
    calls = shared_model().encoder_calls
    declared = client.post("/api/images", content=b"x" * 10, headers={"Content-Length": "5000000000"})
    assert declared.status_code == 413 and "--max-upload-mb" in declared.json()["detail"]
    real = client.post("/api/images", content=image_path.read_bytes())
    assert real.status_code == 413

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(10):
            yield b"y" * 500

    streamed = client.post("/api/images", content=chunks())
    assert streamed.status_code == 413 and "--max-upload-mb" in streamed.json()["detail"]
    big_json = client.post("/api/folder/open", content=b"{" + b" " * 100_000 + b"}",
                           headers={"Content-Type": "application/json"})
    assert big_json.status_code == 413
    assert shared_model().encoder_calls == calls


def test_only_the_allowed_host_names_are_served():
    client = TestClient(make_app(allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8000")
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"Host": "attacker.example:8000"}).status_code == 400


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with (almost) no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decoded_pixel_limit_stops_bombs(image_path):
    client = TestClient(make_app())
    bomb = client.post("/api/images?name=bomb.png", content=_png_header_only(100_000, 100_000))
    assert bomb.status_code == 400
    assert "bomb.png" in bomb.json()["detail"] and "limit" in bomb.json()["detail"]
    small_limit = TestClient(make_app(max_pixels=10_000)).post("/api/images", content=image_path.read_bytes())
    assert small_limit.status_code == 400 and "10,000 pixels" in small_limit.json()["detail"]


@pytest.mark.parametrize("method, path, body, status, words", [
    ("post", "/api/images/{id}/click", b"{not json", 422, "malformed JSON"),
    ("post", "/api/images/{id}/click", b"[1, 2]", 422, "JSON object"),
    ("post", "/api/images/{id}/click", {"x": "left", "y": 3}, 422, "x"),
    ("post", "/api/images/{id}/click", {"x": 3}, 422, "y"),
    ("post", "/api/images/{id}/click", {"x": 3, "y": 4, "colour": 1}, 422, "colour"),
    ("post", "/api/images/{id}/click", b'{"x": NaN, "y": 4}', 422, "x"),
    ("post", "/api/images/{id}/click", {"x": 267, "y": 10}, 400, "outside"),
    ("post", "/api/images/{id}/click", {"x": -1, "y": 10}, 400, "outside"),
    ("post", "/api/images/{id}/click", {"x": 1e300, "y": 10}, 400, "outside"),
    ("post", "/api/images/{id}/box", {"box": [1, 2, 3]}, 422, "box"),
    ("post", "/api/images/{id}/box", {"box": [0, 0, 300, 100]}, 400, "outside"),
    ("post", "/api/images/{id}/undo", None, 409, "nothing to undo"),
    ("post", "/api/images/{id}/commit", None, 409, "nothing to commit"),
    ("post", "/api/images/{id}/hq_output", {"mode": "hq_only"}, 400, "output mode"),
    ("post", "/api/images/nope/click", {"x": 3, "y": 4}, 404, "not open"),
    ("get", "/api/images/nope/export.zip", None, 404, "not open"),
    ("delete", "/api/images/{id}/objects/7", None, 404, "object 7"),
    ("delete", "/api/images/{id}/objects/seven", None, 422, "object_id"),
    ("get", "/api/folder", None, 404, "--images"),
    ("post", "/api/folder/open", {"path": "a.jpg"}, 404, "--images"),
    ("post", "/api/images", b"", 400, "empty"),
    ("post", "/api/images?name=notes.txt", b"hello, not an image", 400, "not an image"),
])
def test_bad_requests_get_a_4xx_with_a_message(app, image_path, method, path, body, status, words):
    client = TestClient(app, raise_server_exceptions=False)
    image_id = upload(client, image_path)["id"]
    url = path.format(id=image_id)
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    answer = getattr(client, method)(url, **kwargs) if method != "get" and method != "delete" else getattr(client, method)(url)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and words.lower() in detail.lower() and "Traceback" not in detail


@pytest.fixture
def folder(tmp_path, image_path):
    """DIR with a.jpg, sub/b.jpg, an image outside DIR, and symlinks to it from inside."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    content = image_path.read_bytes()
    (root / "a.jpg").write_bytes(content)
    (root / "sub" / "b.jpg").write_bytes(content)
    (root / "notes.txt").write_text("not an image")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "private.jpg").write_bytes(content)
    (root / "link.jpg").symlink_to(outside / "private.jpg")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    return root


def test_images_folder_lists_and_opens_only_what_is_inside(folder):
    client = TestClient(make_app(images_dir=folder))
    listing = client.get("/api/folder").json()
    assert [item["path"] for item in listing["images"]] == ["a.jpg", "sub/b.jpg"]
    for path in ("../secret/private.jpg", "link.jpg", "linked_dir/private.jpg", str(folder.parent / "secret" / "private.jpg"),
                 "sub/../../secret/private.jpg", "notes.txt", "a.jpg\x00.png"):
        answer = client.post("/api/folder/open", json={"path": path})
        assert answer.status_code == 400, (path, answer.text)
    assert client.post("/api/folder/open", json={"path": "missing.jpg"}).status_code == 404
    opened = client.post("/api/folder/open", json={"path": "sub/../a.jpg"})
    assert opened.status_code == 200 and opened.json()["path"] == "a.jpg"


def test_folder_annotations_are_written_inside_it_and_resumed(folder):
    client = TestClient(make_app(images_dir=folder))
    image_id = client.post("/api/folder/open", json={"path": "sub/b.jpg"}).json()["id"]
    client.post(f"/api/images/{image_id}/box", json={"box": [40, 50, 230, 330]})
    committed = client.post(f"/api/images/{image_id}/commit").json()
    written = folder / "finesam-annotations" / "sub" / "b.jpg"
    assert committed["saved_to"] == str(written.resolve())
    assert sorted(p.name for p in written.iterdir()) == ["annotations.json", "instances.png", "object_001.png"]
    mask = runs_to_mask(committed["object"]["mask"], 400, 267)
    np.testing.assert_array_equal(np.asarray(Image.open(written / "object_001.png")), mask * np.uint8(255))
    assert [item["annotated"] for item in client.get("/api/folder").json()["images"]] == [False, True]

    later = TestClient(make_app(images_dir=folder))  # a new server on the same folder resumes
    resumed = later.post("/api/folder/open", json={"path": "sub/b.jpg"}).json()
    assert [o["id"] for o in resumed["objects"]] == [1]
    np.testing.assert_array_equal(runs_to_mask(resumed["objects"][0]["mask"], 400, 267), mask)
    assert resumed["objects"][0]["box"] == [40, 50, 230, 330]
    later.post(f"/api/images/{resumed['id']}/box", json={"box": [10, 10, 120, 150]})
    assert later.post(f"/api/images/{resumed['id']}/commit").json()["object"]["id"] == 2
    assert later.delete(f"/api/images/{resumed['id']}/objects/1").status_code == 200
    assert sorted(p.name for p in written.iterdir()) == ["annotations.json", "instances.png", "object_002.png"]


def test_folder_never_writes_outside_through_a_symlinked_output_folder(folder, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "finesam-annotations").symlink_to(elsewhere, target_is_directory=True)
    client = TestClient(make_app(images_dir=folder))
    assert [item["path"] for item in client.get("/api/folder").json()["images"]] == ["a.jpg", "sub/b.jpg"]
    refused = client.post("/api/folder/open", json={"path": "a.jpg"})  # refused before any work
    assert refused.status_code == 400 and "outside the images folder" in refused.json()["detail"]
    assert list(elsewhere.iterdir()) == []


def test_feature_cache_is_bounded_in_bytes_and_encodes_once():
    def features(value: float) -> ImageFeatures:
        return ImageFeatures(torch.full((1, 256, 64, 64), float(value)))

    one = 256 * 64 * 64 * 4
    assert features_nbytes(features(0)) == one
    cache = FeatureCache(int(1.5 * one))
    calls = []
    start = threading.Barrier(4)

    def encode():
        calls.append(1)
        return features(1.0)

    def ask():
        start.wait()
        cache.get_or_encode("a", encode)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and cache.hits == 3
    cache.get_or_encode("b", lambda: features(2.0))
    assert "a" not in cache and "b" in cache and cache.nbytes == one and cache.evictions == 1
    assert shared_cache().nbytes <= shared_cache().max_bytes


def test_serve_command_prints_the_url_and_warns_off_loopback(monkeypatch, capsys, tmp_path):
    uvicorn = pytest.importorskip("uvicorn")
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: started.append((host, port)))
    monkeypatch.setattr("finesam.cli.model_options.load", lambda name, *_, **__: shared_model())  # loading is tested elsewhere
    assert cli.main(["serve", "--model", "mobile_sam", "--random-weights", "--port", "8123"]) == 0
    assert started == [("127.0.0.1", 8123)]
    captured = capsys.readouterr()
    assert "http://127.0.0.1:8123/" in captured.out and "bound to" not in captured.err
    assert cli.main(["serve", "--model", "mobile_sam", "--random-weights", "--host", "0.0.0.0"]) == 0
    assert "WARNING: bound to 0.0.0.0" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "mobile_sam", "--random-weights", "--images", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "mobile_sam", "--random-weights", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "mobile_sam", "--random-weights", "--hq-output", "hq_only"]) == 2
    assert "not an output mode of mobile_sam" in capsys.readouterr().err
    assert len(started) == 2
    monkeypatch.setitem(sys.modules, "fastapi", None)  # a runtime-only install: the extra is named
    assert cli.main(["serve", "--model", "mobile_sam", "--random-weights"]) == 2
    assert "pip install 'finesam[serve]'" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_hq_output_mode_chosen_in_the_page_reaches_the_decoder(image_path):
    import finesam
    from finesam.data.images import read_image
    from finesam.server.app import create_app
    from finesam.server.cache import image_key

    model = finesam.load("hq_vit_tiny", random_weights=True)
    app = create_app(model, model_name="hq_vit_tiny", random_weights=True)
    client = TestClient(app)
    assert "hq_only" in client.get("/api/info").json()["output_modes"]
    image_id = upload(client, image_path)["id"]
    assert client.post(f"/api/images/{image_id}/hq_output", json={"mode": "bogus"}).status_code == 400
    assert client.post(f"/api/images/{image_id}/hq_output", json={"mode": "hq_only"}).json() == {"hq_output": "hq_only"}
    answer = client.post(f"/api/images/{image_id}/box", json={"box": [40, 50, 230, 330]}).json()

    image = read_image(image_path)
    predictor = finesam.SamPredictor(model, keep_early_feature=False)
    predictor.set_features(app.state.annotator.cache.get(image_key(image)).features, image.shape[:2])
    box = np.array([40, 50, 230, 330])
    hq_only = predictor.predict(box=box, multimask_output=False, hq_output="hq_only")[0][0]
    summed = predictor.predict(box=box, multimask_output=False, hq_output="sum")[0][0]
    assert (hq_only != summed).any()  # the modes differ on this image, so the check below can fail
    np.testing.assert_array_equal(mask_of(answer), hq_only)
