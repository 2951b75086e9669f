"""The web tool loses no work (issue 20): a failed folder save keeps the object marked unsaved and
answers 409 saying why; two sessions on one folder image share one object list; requests from other
origins are refused, requests that change nothing create no session, and no session holding
unsaved work is evicted; corrupted resume files and pathological JSON bodies get a 4xx that says so."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import threading
import zipfile
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from server_helpers import make_app, runs_to_mask, serving, shared_model

from fastapi.testclient import TestClient  # noqa: E402  (server_helpers skips without fastapi)

from finesam.server import sessions  # noqa: E402

BOX = {"box": [40, 50, 230, 330]}
SECOND_BOX = {"box": [10, 10, 120, 150]}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    shutil.copy(data_path("ecssd", "im", "0001.jpg"), root / "a.jpg")  # 267x400, the pixels the other tests cache
    return root


def annotations_dir(folder):
    return folder / "finesam-annotations" / "a.jpg"


def open_a(client) -> str:
    answer = client.post("/api/folder/open", json={"path": "a.jpg"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def commit_box(client, image_id, box=BOX):
    assert client.post(f"/api/images/{image_id}/box", json=box).status_code == 200
    return client.post(f"/api/images/{image_id}/commit")


# --- 1. a failed save -------------------------------------------------------------------------------
def _block_annotations_json(folder, monkeypatch):
    (annotations_dir(folder) / "annotations.json").mkdir(parents=True)
    return "annotations.json", lambda: shutil.rmtree(annotations_dir(folder) / "annotations.json")


def _block_output_folder(folder, monkeypatch):
    (folder / "finesam-annotations").write_text("a file where the annotation folder goes")
    return "finesam-annotations", lambda: (folder / "finesam-annotations").unlink()


def _read_only_folder(folder, monkeypatch):
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "Permission denied", lambda: folder.chmod(0o755)
    # root writes through a read-only mode: the write fails as it would for a user
    import finesam.outputs as outputs

    def refuse(path, content):
        raise PermissionError(13, "Permission denied", str(path.parent))

    monkeypatch.setattr("finesam.server.annotations.write_bytes_atomically", refuse)
    return "Permission denied", lambda: monkeypatch.setattr("finesam.server.annotations.write_bytes_atomically", outputs.write_bytes_atomically)


@pytest.mark.parametrize("obstacle", [_block_annotations_json, _block_output_folder, _read_only_folder],
                         ids=["annotations.json is a folder", "a file where the folder goes", "read-only folder"])
def test_a_failed_save_keeps_the_object_marked_unsaved_and_says_why(folder, monkeypatch, obstacle):
    reason, remove = obstacle(folder, monkeypatch)
    client = TestClient(make_app(images_dir=folder), raise_server_exceptions=False)
    image_id = open_a(client)
    refused = commit_box(client, image_id)
    assert refused.status_code == 409, refused.text
    answer = refused.json()
    assert "object 1 is kept" in answer["detail"] and "NOT saved" in answer["detail"] and reason in answer["detail"]
    assert answer["saved"] is False and answer["unsaved"] is True and answer["saved_to"] is None
    assert answer["object"]["id"] == 1 and answer["object"]["saved"] is False  # the page shows it, marked

    state = client.get(f"/api/images/{image_id}").json()
    assert [(o["id"], o["saved"]) for o in state["objects"]] == [(1, False)]
    assert state["unsaved"] is True and reason in state["save_error"]
    exported = client.get(f"/api/images/{image_id}/export.zip")  # from memory, whatever the folder
    assert exported.status_code == 200
    assert "object_001.png" in zipfile.ZipFile(io.BytesIO(exported.content)).namelist()
    deleted = client.delete(f"/api/images/{image_id}/objects/1")
    assert deleted.status_code == 409 and "deletion of object 1" in deleted.json()["detail"]

    assert commit_box(client, image_id, SECOND_BOX).status_code == 409  # still failing: still kept
    remove()
    saved = client.post(f"/api/images/{image_id}/save")
    assert saved.status_code == 200, saved.text
    assert saved.json()["unsaved"] is False and [o["saved"] for o in saved.json()["objects"]] == [True]
    written = json.loads((annotations_dir(folder) / "annotations.json").read_text())
    assert [a["id"] for a in written["annotations"]] == [2]
    assert client.get(f"/api/images/{image_id}").json()["save_error"] is None


def test_after_a_failed_save_the_same_connection_serves_the_next_request(folder):
    (annotations_dir(folder) / "annotations.json").mkdir(parents=True)
    with serving(make_app(images_dir=folder)) as url:
        connection = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=120)

        def ask(method, path, body=None, cookie=None):
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if cookie:
                headers["Cookie"] = cookie
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            return response, response.read()

        response, content = ask("POST", "/api/folder/open", {"path": "a.jpg"})
        cookie = response.getheader("set-cookie").split(";")[0]
        image_id = json.loads(content)["id"]
        ask("POST", f"/api/images/{image_id}/box", BOX, cookie)
        response, content = ask("POST", f"/api/images/{image_id}/commit", None, cookie)
        assert response.status == 409 and json.loads(content)["saved"] is False
        socket_before = connection.sock
        response, content = ask("GET", f"/api/images/{image_id}/export.zip", None, cookie)
        assert response.status == 200 and connection.sock is socket_before  # kept alive, not reconnected
        assert "object_001.png" in zipfile.ZipFile(io.BytesIO(content)).namelist()
        connection.close()


# --- 2. two views of one image -------------------------------------------------------------------
def test_two_sessions_on_one_folder_image_share_its_objects(folder):
    app = make_app(images_dir=folder)
    first, second = TestClient(app), TestClient(app)  # two cookies: two browsers
    first_id, second_id = open_a(first), open_a(second)
    assert commit_box(first, first_id).json()["object"]["id"] == 1
    committed = commit_box(second, second_id, SECOND_BOX).json()
    assert committed["object"]["id"] == 2 and committed["object_ids"] == [1, 2]
    written = json.loads((annotations_dir(folder) / "annotations.json").read_text())
    assert [a["id"] for a in written["annotations"]] == [1, 2]  # neither write dropped the other's object
    assert [o["id"] for o in first.get(f"/api/images/{first_id}").json()["objects"]] == [1, 2]

    assert second.delete(f"/api/images/{second_id}/objects/1").status_code == 200
    assert [o["id"] for o in first.get(f"/api/images/{first_id}").json()["objects"]] == [2]
    assert first.delete(f"/api/images/{first_id}/objects/1").status_code == 404  # already deleted: said so
    third = TestClient(app)
    assert [o["id"] for o in third.get(f"/api/images/{open_a(third)}").json()["objects"]] == [2]


def test_concurrent_commits_from_two_sessions_all_reach_the_file(folder):
    app = make_app(images_dir=folder)
    clients = [TestClient(app), TestClient(app)]
    image_ids = [open_a(client) for client in clients]
    boxes = [[10 + 20 * k, 10 + 20 * k, 150 + 10 * k, 200 + 20 * k] for k in range(4)]
    start = threading.Barrier(2)
    committed, failures = [[], []], []

    def annotate(which):
        start.wait()
        for box in boxes:
            answer = commit_box(clients[which], image_ids[which], {"box": box})
            if answer.status_code != 200:
                failures.append(answer.text)
            else:
                committed[which].append(answer.json()["object"]["id"])

    threads = [threading.Thread(target=annotate, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(committed[0] + committed[1]) == list(range(1, 9))
    written = json.loads((annotations_dir(folder) / "annotations.json").read_text())
    assert sorted(a["id"] for a in written["annotations"]) == list(range(1, 9))
    for client, image_id in zip(clients, image_ids):
        assert sorted(o["id"] for o in client.get(f"/api/images/{image_id}").json()["objects"]) == list(range(1, 9))


# --- 3. origins and session eviction --------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"Origin": "http://attacker.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:9999"},  # another local server: another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
])
def test_state_changing_requests_from_other_origins_are_refused(headers):
    app = make_app()
    client = TestClient(app)
    encoder_calls = shared_model().encoder_calls
    upload = data_path("ecssd", "im", "0001.jpg").read_bytes()
    refused = client.post("/api/images?name=x.jpg", content=upload, headers={**headers, "Content-Type": "text/plain"})
    assert refused.status_code == 403 and "another" in refused.json()["detail"]
    assert client.post("/api/images/x/clear", headers=headers).status_code == 403
    assert "set-cookie" not in refused.headers
    assert app.state.annotator.session_count == 0 and shared_model().encoder_calls == encoder_calls


def test_same_origin_and_non_browser_requests_still_work():
    client = TestClient(make_app())
    upload = data_path("ecssd", "im", "0001.jpg").read_bytes()
    same = client.post("/api/images?name=a.jpg", content=upload,
                       headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200
    image_id = same.json()["id"]
    assert client.post(f"/api/images/{image_id}/box", json=BOX).status_code == 200  # no Origin: a script
    cross_read = client.get(f"/api/images/{image_id}", headers={"Origin": "http://attacker.example"})
    assert cross_read.status_code == 200  # reads change nothing (and the cookie is SameSite=Strict)


def test_requests_that_change_nothing_create_no_session(tmp_path):
    app = make_app(images_dir=tmp_path)
    for _ in range(3):
        client = TestClient(app)
        info = client.get("/api/info")
        assert info.status_code == 200 and "set-cookie" not in info.headers and info.json()["open_images"] == []
        for answer in (client.get("/api/images/nope"), client.get("/"), client.get("/api/folder"),
                       client.post("/api/images/nope/clear"), client.delete("/api/images/nope/objects/1"),
                       client.post("/api/images?name=x.png", content=b"not an image"),
                       client.post("/api/folder/open", json={"path": "missing.jpg"})):
            assert answer.status_code in (200, 400, 404) and "set-cookie" not in answer.headers, answer.text
    assert app.state.annotator.session_count == 0


def test_sessions_with_unsaved_work_are_never_evicted(monkeypatch):
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 4)
    app = make_app()
    content = data_path("ecssd", "im", "0001.jpg").read_bytes()  # cached features: opening it is cheap

    def new_session() -> tuple[TestClient, str]:  # e.g. a script without cookies opening an image
        client = TestClient(app)
        return client, client.post("/api/images?name=a.jpg", content=content).json()["id"]

    worker, image_id = new_session()
    assert commit_box(worker, image_id).status_code == 200  # an upload's object, not downloaded yet
    idle, idle_image = new_session()  # nothing committed
    for _ in range(8):
        new_session()
    assert app.state.annotator.session_count == 4  # the bound holds: idle sessions made room
    state = worker.get(f"/api/images/{image_id}")
    assert state.status_code == 200 and [o["id"] for o in state.json()["objects"]] == [1]
    assert idle.get(f"/api/images/{idle_image}").status_code == 404  # evicted: it held no work

    assert worker.get(f"/api/images/{image_id}/export.zip").status_code == 200  # downloaded: saved
    for _ in range(5):
        new_session()
    assert worker.get(f"/api/images/{image_id}").status_code == 404  # now an ordinary idle session


# --- 7 and 11. resume files -------------------------------------------------------------------------
def _resume_file(document) -> str:
    return json.dumps(document, allow_nan=True)


def _annotation(**fields) -> dict:
    from finesam.formats.rle import encode_rle

    mask = np.zeros((400, 267), bool)
    mask[50:100, 60:120] = True
    entry = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_rle(mask), "score": 0.9,
             "box": [60, 50, 120, 100], "clicks": [[80, 70, 1]]}
    entry.update(fields)
    return entry


@pytest.mark.parametrize("content, words", [
    ("[]", "JSON list"),
    ("null", "JSON NoneType"),
    ("3", "JSON int"),
    ('"text"', "JSON str"),
    ("{not json", "Expecting"),
    ('{"annotations": {"id": 1}}', "not a list"),
    ('{"annotations": [' + "1" * 5000 + "]}", "digits"),
    ('{"annotations": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
    (_resume_file({"annotations": [_annotation(id=0)]}), "id 0"),
    (_resume_file({"annotations": [_annotation(id=-1)]}), "id -1"),
    (_resume_file({"annotations": [_annotation(id=65536)]}), "id 65536"),
    (_resume_file({"annotations": [_annotation(id="3")]}), "id '3'"),
    (_resume_file({"annotations": [_annotation(id=1.5)]}), "id 1.5"),
    (_resume_file({"annotations": [_annotation(id=True)]}), "id True"),
    (_resume_file({"annotations": [_annotation(), _annotation()]}), "appears twice"),
    (_resume_file({"annotations": [_annotation(score=float("nan"))]}), "score nan"),
    (_resume_file({"annotations": [_annotation(score=float("inf"))]}), "score inf"),
    (_resume_file({"annotations": [_annotation(score="high")]}), "score"),
    (_resume_file({"annotations": [_annotation(clicks=[[float("nan"), 3, 1]])]}), "clicks"),
    (_resume_file({"annotations": [_annotation(clicks=[[3, 3, 7]])]}), "clicks"),
    (_resume_file({"annotations": [_annotation(box=[0, 0, float("inf"), 5])]}), "box"),
    (_resume_file({"annotations": [_annotation(segmentation={"size": [10, 10], "counts": [100]})]}), "another image"),
    (_resume_file({"annotations": [_annotation(segmentation={"size": [400, 267], "counts": [5]})]}), "RLE counts"),
    (_resume_file({"annotations": ["id"]}), "JSON str"),
])
def test_corrupted_resume_files_are_refused_with_the_documented_400(folder, content, words):
    annotations_dir(folder).mkdir(parents=True)
    path = annotations_dir(folder) / "annotations.json"
    path.write_text(content)
    client = TestClient(make_app(images_dir=folder), raise_server_exceptions=False)
    refused = client.post("/api/folder/open", json={"path": "a.jpg"})
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert f"cannot resume from {str(path.resolve())!r}" in detail and "move the file away" in detail
    assert words in detail, detail


def test_a_valid_resume_file_still_resumes_and_later_commits_save(folder):
    annotations_dir(folder).mkdir(parents=True)
    (annotations_dir(folder) / "annotations.json").write_text(_resume_file({"annotations": [_annotation(id=7)]}))
    client = TestClient(make_app(images_dir=folder))
    opened = client.post("/api/folder/open", json={"path": "a.jpg"}).json()
    assert [(o["id"], o["saved"], o["area"]) for o in opened["objects"]] == [(7, True, 50 * 60)]
    assert opened["unsaved"] is False
    assert commit_box(client, opened["id"]).json()["object"]["id"] == 8
    instances = np.asarray(Image.open(annotations_dir(folder) / "instances.png"))
    assert set(np.unique(instances)) <= {0, 7, 8} and (instances == 7).any()


# --- 11. request bodies -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def opened_upload():
    client = TestClient(make_app(), raise_server_exceptions=False)
    image_id = client.post("/api/images?name=a.jpg", content=data_path("ecssd", "im", "0001.jpg").read_bytes()).json()["id"]
    return client, image_id


def test_a_chunked_json_body_over_the_limit_gets_413(opened_upload):
    client, image_id = opened_upload

    def chunks():  # no Content-Length
        for _ in range(100):
            yield b" " * 1000

    answer = client.post(f"/api/images/{image_id}/click", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "larger than 65536 bytes" in answer.json()["detail"]
    small = client.post(f"/api/images/{image_id}/click", content=iter([b'{"x": 5,', b' "y": 6}']),
                        headers={"Content-Type": "application/json"})
    assert small.status_code == 200, small.text  # a small chunked body still works


@pytest.mark.parametrize("body, words", [
    (b'{"x": ' + b"1" * 5000 + b', "y": 3}', "thousands of digits"),
    (b'{"x": ' + b"[" * 30000 + b"]" * 30000 + b', "y": 3}', "nests too deeply"),
])
def test_pathological_json_bodies_get_a_400_that_says_so(opened_upload, body, words):
    client, image_id = opened_upload
    answer = client.post(f"/api/images/{image_id}/click", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and words in answer.json()["detail"], answer.text


def test_committed_masks_survive_a_resume_through_the_shared_list(folder):
    """The shared list and the file agree: a new server resumes exactly what the sessions committed."""
    app = make_app(images_dir=folder)
    first, second = TestClient(app), TestClient(app)
    masks = {}
    for client, box in ((first, BOX), (second, SECOND_BOX)):
        answer = commit_box(client, open_a(client), box).json()["object"]
        masks[answer["id"]] = runs_to_mask(answer["mask"], 400, 267)
    assert sorted(masks) == [1, 2]
    later = TestClient(make_app(images_dir=folder))
    resumed = later.post("/api/folder/open", json={"path": "a.jpg"}).json()["objects"]
    assert [o["id"] for o in resumed] == [1, 2]
    for item in resumed:
        np.testing.assert_array_equal(runs_to_mask(item["mask"], 400, 267), masks[item["id"]])
