"""The page in a real headless Chromium (Debian's package, driven by Playwright): open an image,
drag a box, left and right clicks, undo, commit, a second object, export; the exported masks are
those of InteractiveSession for the same prompts. Screenshots go to the test's folder (and to
$FINESAM_SCREENSHOTS if set, e.g. ``docs`` to refresh the README's picture)."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from server_helpers import make_app, reference_session, serving, shared_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server_url():
    with serving(make_app()) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (dev extra)")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed and could not be (make test installs it: apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def wait_idle(page) -> None:
    page.wait_for_function("document.body.dataset.pending === '0'", timeout=60_000)
    status = page.inner_text("#status")
    assert "error" not in page.get_attribute("#status", "class") or "", status


def test_annotate_two_objects_and_export(browser, server_url, tmp_path):
    image_path = data_path("ecssd", "im", "0001.jpg")  # 267x400
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server_url)
    wait_idle(page)
    assert "RANDOM WEIGHTS" in page.inner_text("#banner")
    encoder_calls = shared_model().encoder_calls
    page.set_input_files("#upload", str(image_path))
    wait_idle(page)
    assert page.get_attribute("#export", "href").endswith("/export.zip")
    assert "267x400" in page.inner_text("#status")
    assert shared_model().encoder_calls <= encoder_calls + 1  # once when opened (or cached by an earlier test)
    encoder_calls = shared_model().encoder_calls

    canvas = page.locator("#canvas").bounding_box()
    scale = float(page.get_attribute("#canvas", "data-scale"))
    assert scale == 1.0  # the image fits: page pixels are image pixels

    def at(x: int, y: int) -> tuple[float, float]:  # the centre of image pixel (x, y) on the page
        return canvas["x"] + (x + 0.5) * scale, canvas["y"] + (y + 0.5) * scale

    def drag(x0, y0, x1, y1):
        page.mouse.move(*at(x0, y0))
        page.mouse.down()
        page.mouse.move(*at((x0 + x1) // 2, (y0 + y1) // 2), steps=4)
        page.mouse.move(*at(x1, y1), steps=4)
        page.mouse.up()
        wait_idle(page)

    def click(x, y, button="left"):
        page.mouse.click(*at(x, y), button=button)
        wait_idle(page)

    image_id = page.get_attribute("#canvas", "data-image-id")
    current = lambda: page.request.get(f"{server_url}/api/images/{image_id}").json()["current"]  # noqa: E731

    drag(40, 50, 230, 330)
    assert current()["box"] == [40, 50, 230, 330]
    click(130, 200)
    click(60, 80, button="right")
    assert current()["clicks"] == [[130, 200, 1], [60, 80, 0]]  # left: positive, right: negative
    assert "model" in page.inner_text("#latency")  # each step shows its latency
    page.screenshot(path=str(tmp_path / "serve_clicks.png"))
    page.keyboard.press("z")
    wait_idle(page)
    assert current()["clicks"] == [[130, 200, 1]]
    page.keyboard.press("e")
    wait_idle(page)
    assert page.locator("#objects li").count() == 1

    drag(150, 250, 260, 390)  # a box, cleared with Esc
    page.keyboard.press("Escape")
    wait_idle(page)
    assert current()["box"] is None

    drag(10, 10, 120, 150)
    page.keyboard.down("Shift")  # Shift+click: negative
    page.mouse.click(*at(60, 70))
    page.keyboard.up("Shift")
    wait_idle(page)
    page.keyboard.press("Enter")
    wait_idle(page)
    assert page.locator("#objects li").count() == 2
    page.fill("#opacity", "0.6")
    page.uncheck("#outline")
    page.click("#objects li[data-id='1']")  # selecting an object highlights it in the list
    assert page.get_attribute("#objects li[data-id='1']", "class") == "selected"
    page.click("#objects li[data-id='1']")  # and a second click deselects it
    assert page.get_attribute("#objects li[data-id='1']", "class") in (None, "")
    screenshot = tmp_path / "serve.png"
    page.screenshot(path=str(screenshot))
    if os.environ.get("FINESAM_SCREENSHOTS"):
        target = Path(os.environ["FINESAM_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / "serve.png")

    with page.expect_download() as download:
        page.click("#export")
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    document = json.loads(archive.read("annotations.json"))
    assert [(a["box"], a["clicks"]) for a in document["annotations"]] == [
        ([40, 50, 230, 330], [[130, 200, 1]]), ([10, 10, 120, 150], [[60, 70, 0]])]

    reference = reference_session(image_path)
    reference.set_box([40, 50, 230, 330])
    reference.add_click(130, 200, positive=True)
    reference.add_click(60, 80, positive=False)
    first = reference.undo()
    reference.reset()
    reference.set_box([10, 10, 120, 150])
    second = reference.add_click(60, 70, positive=False)
    for name, expected in (("object_001.png", first), ("object_002.png", second)):
        np.testing.assert_array_equal(np.asarray(Image.open(archive.open(name))) > 0, expected, err_msg=name)
    instances = np.asarray(Image.open(archive.open("instances.png")))
    np.testing.assert_array_equal(instances == 2, second)
    assert shared_model().encoder_calls == encoder_calls, "a click ran the image encoder"
    assert errors == [], errors
    page.close()


def test_annotate_an_images_folder(browser, tmp_path):
    image_path = data_path("ecssd", "im", "0001.jpg")
    folder = tmp_path / "images"
    (folder / "set").mkdir(parents=True)
    shutil.copy(image_path, folder / "set" / "first.jpg")
    with serving(make_app(images_dir=folder)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(url)
        wait_idle(page)
        assert page.locator("#folder option").all_inner_texts() == ["images folder...", "set/first.jpg"]
        page.select_option("#folder", "set/first.jpg")
        wait_idle(page)
        canvas = page.locator("#canvas").bounding_box()
        page.mouse.move(canvas["x"] + 40.5, canvas["y"] + 50.5)
        page.mouse.down()
        page.mouse.move(canvas["x"] + 230.5, canvas["y"] + 330.5, steps=5)
        page.mouse.up()
        wait_idle(page)
        page.keyboard.press("e")
        wait_idle(page)
        written = folder / "finesam-annotations" / "set" / "first.jpg"
        assert sorted(p.name for p in written.iterdir()) == ["annotations.json", "instances.png", "object_001.png"]
        assert json.loads((written / "annotations.json").read_text())["annotations"][0]["box"] == [40, 50, 230, 330]
        assert page.locator("#folder option").all_inner_texts()[1] == "\u2713 set/first.jpg"
        page.click("#objects li[data-id='1'] button")  # delete: written at once
        wait_idle(page)
        assert not (written / "object_001.png").exists()
        assert json.loads((written / "annotations.json").read_text())["annotations"] == []
        page.close()


def test_a_failed_save_shows_the_object_unsaved_and_save_again_writes_it(browser, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(data_path("ecssd", "im", "0001.jpg"), folder / "first.jpg")
    blocked = folder / "finesam-annotations" / "first.jpg" / "annotations.json"
    blocked.mkdir(parents=True)  # a folder where the file goes: the save fails
    with serving(make_app(images_dir=folder)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(url)
        wait_idle(page)
        page.select_option("#folder", "first.jpg")
        wait_idle(page)
        assert page.is_hidden("#unsaved")
        canvas = page.locator("#canvas").bounding_box()
        page.mouse.move(canvas["x"] + 40.5, canvas["y"] + 50.5)
        page.mouse.down()
        page.mouse.move(canvas["x"] + 230.5, canvas["y"] + 330.5, steps=5)
        page.mouse.up()
        wait_idle(page)
        page.keyboard.press("e")
        page.wait_for_function("document.body.dataset.pending === '0'", timeout=60_000)
        assert "NOT saved" in page.inner_text("#status") and "error" in page.get_attribute("#status", "class")
        assert page.locator("#objects li").count() == 1  # kept, and marked
        assert "unsaved" in page.get_attribute("#objects li[data-id='1']", "class")
        assert page.is_visible("#unsaved") and "Export still downloads" in page.inner_text("#unsaved")
        with page.expect_download() as download:
            page.click("#export")
        assert "object_001.png" in zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())).namelist()

        blocked.rmdir()
        page.click("#save")
        wait_idle(page)
        assert page.is_hidden("#unsaved") and "unsaved" not in (page.get_attribute("#objects li[data-id='1']", "class") or "")
        assert json.loads(blocked.read_text())["annotations"][0]["box"] == [40, 50, 230, 330]
        page.close()
