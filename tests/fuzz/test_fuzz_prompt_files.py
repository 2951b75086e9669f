"""Generated prompt files (COCO JSON, detector results, CSV, JSON lines) and folder-run state files
(``run.json``, ``records/<stem>.json``): a clear error naming the file, or a correct result;
never a traceback. Folder runs use a stand-in segmenter (the state is under test, not the model)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzz_checks import clear_error_or_result, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finesam import cli
from finesam.cli import model_options
from finesam.data.prompt_files import PromptFileError, group_by_image, read_prompt_file
from finesam.errors import FinesamError
from finesam.formats import read_coco_results
from finesam.pipeline import folder
from finesam.pipeline.folder import BatchSettings, ImageJob, ObjectPrompt, Segmented


def fuzz_settings(default: int):
    return settings(max_examples=examples(default), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- values a hand-made or machine-made file may hold --------------------------------------------
ODD_NAMES = ["²", "--5", "-5", "5", "007", "000000397133", "397133", ".", "..", "a b", "cat\u2028dog", "\u00e9t\u00e9",
             "x" * 300, "9" * 5000, "", " ", "cat.jpg", "dir/cat.png", "C:\\photos\\cat.jpg", "🐱"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.sampled_from([10**400, -(10**30)]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_NAMES), st.text(max_size=4))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                        max_leaves=6)
ODD_IDS = st.one_of(SCALARS, st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def mostly(common, odd, one_in: int = 12):
    """``common``, and once in ``one_in`` draws ``odd``."""
    return st.integers(0, one_in - 1).flatmap(lambda pick: odd if pick == 0 else common)


IDS = mostly(st.integers(-5, 10**6) | st.sampled_from(ODD_NAMES), ODD_IDS)
COORDINATE = mostly(st.integers(0, 500) | st.floats(0, 500), SCALARS | st.sampled_from(["12", "1e3", "nan", "-inf"]))
GOOD_XYWH = st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 200), st.integers(0, 200)).map(list)
BBOX = mostly(GOOD_XYWH, st.lists(COORDINATE, min_size=3, max_size=5) | ANY_JSON)


def maybe(draw, value_strategy, fallback=ANY_JSON, odd_one_in: int = 24):
    """Mostly a value of ``value_strategy``, sometimes any JSON value, sometimes the key left out."""
    pick = draw(st.integers(0, odd_one_in))
    if pick == 0:
        return _DROP
    return draw(fallback) if pick == 1 else draw(value_strategy)


_DROP = object()


def entry(draw, fields: dict) -> dict:
    return {key: value for key, value in ((k, maybe(draw, v)) for k, v in fields.items()) if value is not _DROP}


@st.composite
def coco_files(draw):
    images = [entry(draw, {"id": IDS, "file_name": st.sampled_from(ODD_NAMES) | st.just("0001.jpg")})
              for _ in range(draw(st.integers(0, 3)))]
    known = [image["id"] for image in images if "id" in image] or [1]
    annotations = [entry(draw, {"image_id": st.sampled_from(known) | IDS, "bbox": BBOX, "id": IDS, "category_id": IDS,
                                "score": COORDINATE}) for _ in range(draw(st.integers(0, 4)))]
    data = {"images": images, "annotations": annotations}
    if draw(st.integers(0, 8)) == 0:
        data[draw(st.sampled_from(["images", "annotations"]))] = draw(ANY_JSON)
    return data


@st.composite
def detector_files(draw):
    return [entry(draw, {"image_id": IDS, "bbox": BBOX, "score": COORDINATE, "category_id": IDS, "id": IDS})
            if draw(st.integers(0, 10)) else draw(ANY_JSON) for _ in range(draw(st.integers(0, 4)))]


CELL = st.one_of(st.sampled_from(ODD_NAMES), st.integers(-10, 600).map(str), st.floats(allow_nan=True).map(str),
                 st.text(max_size=5), st.sampled_from(["", "#", '"', "a,b", "\x00"]))


@st.composite
def csv_texts(draw):
    rows = []
    header = draw(st.booleans())
    if header:
        extra = draw(st.lists(st.sampled_from(["label", "score", "id", "other"]), unique=True, max_size=3))
        columns = draw(st.permutations(["image", "x0", "y0", "x1", "y1", *extra]))
        if draw(st.integers(0, 10)) == 0:
            columns = columns[1:]  # a column missing
        rows.append(columns)
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 3)):
            x0, y0 = draw(st.integers(0, 200)), draw(st.integers(0, 200))
            row = [draw(st.sampled_from(ODD_NAMES)), x0, y0, x0 + draw(st.integers(0, 200)), y0 + draw(st.integers(0, 200))]
            row = [str(v) for v in row] + [draw(CELL) for _ in range(draw(mostly(st.integers(0, 1), st.integers(2, 3), 6)))]
            if header:  # the columns in the header's order
                row = row + [draw(CELL) for _ in range(len(columns) - len(row))] if len(row) < len(columns) else row[:len(columns)]
            if draw(st.integers(0, 4)) == 0:
                row[draw(st.integers(0, len(row) - 1))] = draw(CELL)
        else:
            row = draw(st.lists(CELL, max_size=7))
        rows.append(row)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


@st.composite
def json_lines_texts(draw):
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            lines.append(draw(st.sampled_from(["", "{", "[1]", "null", "{\"image\": \"a.jpg\"", "\u2028"])))
            continue
        corners = {"x0": COORDINATE, "y0": COORDINATE, "x1": COORDINATE, "y1": COORDINATE}
        fields = {"image": st.sampled_from(ODD_NAMES) | IDS, **({"box": BBOX} if kind == 1 else corners),
                  "label": IDS, "score": COORDINATE, "id": IDS}
        lines.append(json.dumps(entry(draw, fields), ensure_ascii=draw(st.booleans())))
    return "\n".join(lines)


def assert_prompts_correct(prompts) -> None:
    """What every accepted prompt must be: a finite ordered box, names and ids of JSON types."""
    assert prompts
    for prompt in prompts:
        assert isinstance(prompt.image, str)
        assert all(math.isfinite(v) for v in prompt.box) and prompt.box[0] <= prompt.box[2] and prompt.box[1] <= prompt.box[3]
        for value in (prompt.prompt_id, prompt.category_id, prompt.image_id):
            assert isinstance(value, (int, str)) and not isinstance(value, bool)
        assert prompt.detector_score is None or math.isfinite(prompt.detector_score)
        json.dumps([prompt.prompt_id, prompt.category_id, prompt.image_id])  # what results files hold
    grouped, unmatched = group_by_image(prompts, ["²", "0001", "397133", ".", "cat", "000000000005"])
    assert sum(map(len, grouped.values())) + sum(p.image in unmatched for p in prompts) == len(prompts)


def read_or_refuse(path: Path, count_case, category: str):
    count_case(category)
    prompts, error = clear_error_or_result(lambda: read_prompt_file(path))
    if error is None:
        count_case(f"{category}, accepted")
        assert_prompts_correct(prompts)
    else:
        assert isinstance(error, PromptFileError) and str(path) in str(error) and "\n" not in str(error)


def encoded(text: str, draw) -> bytes:
    data = text.encode("utf-8")
    pick = draw(st.integers(0, 15))
    if pick == 0:
        return b"\xef\xbb\xbf" + data  # a byte order mark
    if pick == 1:
        return data[: draw(st.integers(0, len(data)))]  # truncated
    if pick == 2:
        return data + b"\xff\xfe"  # not UTF-8
    return data


@fuzz_settings(160)
@given(data=st.data())
def test_coco_and_detector_files(tmp_path, count_case, data):
    value = data.draw(st.one_of(coco_files(), detector_files(), ANY_JSON), "content")
    path = tmp_path / "prompts.json"
    path.write_bytes(encoded(json.dumps(value, ensure_ascii=data.draw(st.booleans())), data.draw))
    read_or_refuse(path, count_case, "prompt files")


@fuzz_settings(130)
@given(data=st.data())
def test_csv_files(tmp_path, count_case, data):
    path = tmp_path / "prompts.csv"
    path.write_bytes(encoded(data.draw(csv_texts(), "content"), data.draw))
    read_or_refuse(path, count_case, "prompt files")


@fuzz_settings(130)
@given(data=st.data(), suffix=st.sampled_from([".jsonl", ".ndjson"]))
def test_json_lines_files(tmp_path, count_case, data, suffix):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(encoded(data.draw(json_lines_texts(), "content"), data.draw))
    read_or_refuse(path, count_case, "prompt files")


@fuzz_settings(80)
@given(names=st.lists(st.sampled_from(ODD_NAMES[:-3]).filter(str.strip), min_size=1, max_size=4),
       labels=st.lists(st.sampled_from(ODD_NAMES[:4] + ["cat", "12"]), min_size=4, max_size=4),
       bom=st.booleans(), fmt=st.sampled_from(["csv", "jsonl", "detector"]))
def test_well_formed_files_read_back_exactly(tmp_path, count_case, names, labels, bom, fmt):
    """Correct files with odd but valid names and labels: every prompt comes back as written."""
    count_case("prompt files")
    boxes = [(k, 2 * k, 10 + k, 20 + 2 * k) for k in range(len(names))]
    if fmt == "csv":
        text = "".join(f'"{n}",{x0},{y0},{x1},{y1},"{labels[k]}"\n' for k, (n, (x0, y0, x1, y1)) in enumerate(zip(names, boxes)))
    elif fmt == "jsonl":
        text = "\n".join(json.dumps({"image": n, "box": list(b), "label": labels[k]}, ensure_ascii=False)
                         for k, (n, b) in enumerate(zip(names, boxes)))
    else:
        text = json.dumps([{"image_id": n, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "category_id": labels[k]}
                           for k, (n, b) in enumerate(zip(names, boxes))], ensure_ascii=False)
    path = tmp_path / f"p.{'json' if fmt == 'detector' else fmt}"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    prompts = read_prompt_file(path)
    expected_labels = [int(v) if v.lstrip("-").isascii() and v.lstrip("-").isdigit() and not v.startswith("--") else v
                       for v in labels]
    assert [p.box for p in prompts] == [tuple(map(float, b)) for b in boxes]
    assert [p.category_id for p in prompts] == expected_labels[:len(names)]
    assert [p.image for p in prompts] == [Path(n.replace("\\", "/")).stem if fmt != "detector" else n for n in names]


# --- folder-run state ----------------------------------------------------------------------------
STEMS = ("0001", "0002")
SIZE = (24, 32)  # height, width


def fake_segment(image: np.ndarray, job: ImageJob):
    """Stand-in for the model: one rectangle per prompt."""
    objects = []
    for prompt in job.prompts:
        mask = np.zeros(image.shape[:2], bool)
        mask[2:10, 3:12 + len(objects)] = True
        objects.append(Segmented(mask, 0.5, prompt))
    return objects, []


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished folder run: (its folder, jobs, settings)."""
    root = tmp_path_factory.mktemp("state")
    rng = np.random.default_rng(0)
    jobs = []
    for stem in STEMS:
        Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(root / f"{stem}.png")
        prompts = (ObjectPrompt(box=(1, 1, 20, 20), prompt_id=0), ObjectPrompt(box=(2, 2, 9, 9), prompt_id=1))
        jobs.append(ImageJob(stem, root / f"{stem}.png", f"{stem}.png", prompts))
    run_settings = BatchSettings(formats=("png", "coco", "instances"), run_info={"model": "stand-in"})
    report = folder.run_batch(jobs, root / "out", run_settings, fake_segment, progress=False)
    assert report.exit_code == 0 and report.objects == 4
    return root / "out", jobs, run_settings


def valid_record(done: Path) -> dict:
    return json.loads((done / "records" / "0001.json").read_text())


@st.composite
def damaged_records(draw, record: dict):
    """A record with one field (or one object's field) replaced, dropped, or the whole thing replaced."""
    record = json.loads(json.dumps(record))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(ANY_JSON)
    if kind == 1:
        key = draw(st.sampled_from(sorted(record)))
        if draw(st.booleans()):
            del record[key]
        else:
            record[key] = draw(ANY_JSON)
        return record
    target = record["objects"][draw(st.integers(0, len(record["objects"]) - 1))]
    key = draw(st.sampled_from(sorted(target)))
    if kind == 2:
        target[key] = draw(ANY_JSON)
    elif key == "segmentation":
        target[key][draw(st.sampled_from(["size", "counts"]))] = draw(ANY_JSON)
    else:
        del target[key]
    return record


@st.composite
def damaged_state(draw, done: Path):
    """(relative path, bytes) of one damaged state file."""
    name = draw(st.sampled_from(["run.json", "records/0001.json", "records/0002.json"]))
    if name == "run.json":
        describe = json.loads((done / "run.json").read_text())
        value = draw(st.one_of(ANY_JSON, st.fixed_dictionaries({k: st.just(v) for k, v in describe.items()})))
    else:
        value = draw(damaged_records(valid_record(done)))
    text = json.dumps(value, allow_nan=True)
    return name, encoded(text, draw)


def check_resume(out: Path, jobs, run_settings, count_case, category: str) -> None:
    """Resume a run from ``out``: refused clearly (naming a state file), or completed correctly."""
    count_case(category)

    def resume():
        folder.check_resumable(out, run_settings, False, jobs)
        return folder.run_batch(jobs, out, run_settings, fake_segment, progress=False)

    report, error = clear_error_or_result(resume)
    if error is not None:
        message = str(error)
        assert "\n" not in message, message
        assert "other settings" in message or ("move it away" in message and ("run.json" in message or "records" in message)), message
        return
    count_case(f"{category}, resumed")
    assert report.exit_code == 0 and report.done + report.skipped == len(jobs)
    results = read_coco_results(out / "coco_results.json")  # its form was checked: hand edits of values stay
    assert [r["image_id"] for r in results] == [f"{s}.png" for s in STEMS for _ in (0, 1)]
    for stem in STEMS:
        assert sorted(p.name for p in (out / "masks" / stem).iterdir()) == ["0.png", "1.png"]


@fuzz_settings(200)
@given(data=st.data())
def test_damaged_run_state(tmp_path, count_case, done_run, data):
    done, jobs, run_settings = done_run
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(done, out)
    for _ in range(data.draw(st.integers(1, 2))):
        name, content = data.draw(damaged_state(done), "state file")
        (out / name).write_bytes(content)
    if data.draw(st.integers(0, 5)) == 0:  # stale files of an earlier run with more objects
        (out / "masks" / "0002" / "7.png").write_bytes((out / "masks" / "0002" / "0.png").read_bytes())
    check_resume(out, jobs, run_settings, count_case, "run state")


@pytest.fixture(scope="module")
def done_command_run(tmp_path_factory):
    """A finished ``finesam segment`` folder run: (its command line, its folder)."""
    from fuzz_checks import cached_models

    root = tmp_path_factory.mktemp("state_cli")
    image = np.random.default_rng(1).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
    for stem in STEMS:
        Image.fromarray(image).save(root / f"{stem}.png")
    args = ["segment", str(root / "0001.png"), str(root / "0002.png"), "--model", "mobile_sam", "--random-weights",
            "--box", "1", "1", "20", "20", "--format", "png,coco"]
    with cached_models(model_options):
        assert cli.main([*args, "--out", str(root / "done")]) == 0
        yield args, root / "done"


@fuzz_settings(40)
@given(data=st.data())
def test_damaged_run_state_through_the_command(tmp_path, done_command_run, capsys, count_case, data):
    """The command line: exit 2 and one line naming the file, or a resumed run (exit 0)."""
    count_case("run state")
    args, done = done_command_run
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(done, out)
    name, content = data.draw(damaged_state(out), "state file")
    (out / name).write_bytes(content)
    capsys.readouterr()
    code = cli.main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING: RANDOM WEIGHTS")]
    assert "Traceback" not in err
    if code == 2:
        assert len(lines) == 1 and ("other settings" in lines[0] or str(out / name) in lines[0]), err
        assert "--overwrite" in lines[0], err
    else:
        assert code == 0, err
        count_case("run state, resumed")
        assert len(read_coco_results(out / "coco_results.json")) == len(STEMS)
