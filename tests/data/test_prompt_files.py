"""Prompt files: COCO JSON, detector results, CSV and JSON lines to one list of boxes; every
malformed file refused with its name and line (or entry)."""

from __future__ import annotations

import json

import pytest

from finesam.data.prompt_files import DEFAULT_CATEGORY, PromptFileError, group_by_image, read_prompt_file


def write(path, text):
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def test_coco_json_boxes_are_xywh_to_corners(tmp_path):
    path = write(tmp_path / "gt.json", {
        "images": [{"id": 11, "file_name": "val/0001.jpg"}, {"id": 12, "file_name": "0002.jpg"}],
        "annotations": [{"id": 7, "image_id": 11, "bbox": [10, 20, 30, 40], "category_id": 3},
                        {"id": 8, "image_id": 12, "bbox": [0, 0, 5, 5], "category_id": 1, "score": 0.25}],
    })
    first, second = read_prompt_file(path)
    assert (first.image, first.image_id, first.box, first.prompt_id, first.category_id, first.detector_score) == \
        ("0001", 11, (10, 20, 40, 60), 7, 3, None)
    assert second.detector_score == 0.25 and second.image == "0002"


def test_detector_results_match_zero_padded_stems(tmp_path):
    path = write(tmp_path / "det.json", [{"image_id": 397133, "bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 18},
                                        {"image_id": 5, "bbox": [0, 0, 1, 1], "score": 0.1, "category_id": 1}])
    prompts = read_prompt_file(path)
    assert [p.prompt_id for p in prompts] == [0, 1] and prompts[0].box == (1, 2, 4, 6)
    grouped, unmatched = group_by_image(prompts, ["000000397133", "cat"])
    assert [p.image_id for p in grouped["000000397133"]] == [397133] and grouped["cat"] == []
    assert unmatched == ["5"]


def test_csv_with_and_without_header(tmp_path):
    plain = read_prompt_file(write(tmp_path / "a.csv", "cat.jpg,10,20,110,120,cat\n\n# a comment\ndog.png,1,2,3,4\n"))
    assert [(p.image, p.image_id, p.box, p.category_id, p.prompt_id) for p in plain] == [
        ("cat", "cat.jpg", (10, 20, 110, 120), "cat", 0), ("dog", "dog.png", (1, 2, 3, 4), DEFAULT_CATEGORY, 1)]
    named = read_prompt_file(write(tmp_path / "b.csv", "id,image,x0,y0,x1,y1,label,score\n42,x/cat.jpg,1,2,3,4,5,0.5\n"))
    assert (named[0].prompt_id, named[0].image, named[0].category_id, named[0].detector_score) == (42, "cat", 5, 0.5)


def test_json_lines(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"image": "cat.jpg", "x0": 1, "y0": 2, "x1": 3, "y1": 4, "label": 2}\n\n'
                                       '{"image": "dog.jpg", "box": [5, 6, 7, 8], "id": "d1"}\n')
    first, second = read_prompt_file(path)
    assert first.box == (1, 2, 3, 4) and first.category_id == 2
    assert second.box == (5, 6, 7, 8) and second.prompt_id == "d1"


@pytest.mark.parametrize("name, content, fragment", [
    ("a.csv", "cat.jpg,10,20,5,120\n", "a.csv: line 1: box (10, 20, 5, 120) has x1 < x0"),
    ("a.csv", "cat.jpg,1,2,3,4\ncat.jpg,1,2,3\n", "a.csv: line 2: 4 columns"),
    ("a.csv", "cat.jpg,1,2,x,4\n", "a.csv: line 1: x1 must be a number, got 'x'"),
    ("a.csv", "cat.jpg,1,2,nan,4\n", "line 1: x1 is 'nan'"),
    ("a.jsonl", '{"image": "a.jpg", "x0": 1, "y0": 2, "x1": 3, "y1": 4}\n{"image": "a.jpg", "x0": 1}\n',
     "a.jsonl: line 2: missing y0, x1, y1"),
    ("a.jsonl", "{oops\n", "a.jsonl: line 1: not valid JSON"),
    ("a.json", '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}]}',
     "annotations[0]: image_id 2 is not in the file's 'images' list"),
    ("a.json", '{"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, -1, 1]}]}', "image_id 1 is not"),
    ("a.json", '[{"image_id": 1, "bbox": [0, 0, -1, 1]}]', "entry 0: bbox [0, 0, -1, 1] has a negative width"),
    ("a.json", '[{"image_id": 1, "bbox": [0, 0, 1]}]', "entry 0: bbox must be [x, y, width, height]"),
    ("a.json", '[{"bbox": [0, 0, 1, 1]}]', "entry 0: a detector results list holds objects with 'image_id'"),
    ("a.json", '{"annotations": []}', "needs an 'images' list"),
    ("a.json", "[1,\n2,", "a.json: line 2: not valid JSON"),
    ("a.json", "[]", "holds no prompts"),
    ("a.txt", "cat.jpg,1,2,3,4", "unknown format '.txt'"),
])
def test_bad_files_name_file_and_line(tmp_path, name, content, fragment):
    with pytest.raises(PromptFileError) as info:
        read_prompt_file(write(tmp_path / name, content))
    assert fragment in str(info.value), str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="no such file"):
        read_prompt_file(tmp_path / "none.json")


@pytest.mark.parametrize("name, content, fragment", [
    ("a.json", '{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []}', "images[0]: id must be an integer or a name"),
    ("a.json", '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": {"a": 1}, "bbox": [0, 0, 1, 1]}]}',
     "annotations[0]: image_id must be an integer or a name"),
    ("a.json", '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": [7], "image_id": 1, "bbox": [0, 0, 1, 1]}]}',
     "annotations[0]: id must be an integer or a name"),
    ("a.json", '[{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": {"x": 1}}]', "entry 0: the label / category_id must be"),
    ("a.json", '[{"image_id": 1, "bbox": [0, 0, 1, ' + "9" * 400 + ']}]', "entry 0: bbox height must be a number"),
    ("a.json", '[{"image_id": 1, "bbox": [0, 0, 1, ' + "9" * 5000 + ']}]', "a.json: not readable JSON"),
    ("a.json", "[" * 100000 + "]" * 100000, "a.json: JSON nested too deeply"),
    ("a.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, 4], "id": [1]}\n', "a.jsonl: line 1: id must be an integer or a name"),
])
def test_odd_values_are_clear_errors(tmp_path, name, content, fragment):
    with pytest.raises(PromptFileError) as info:
        read_prompt_file(write(tmp_path / name, content))
    assert fragment in str(info.value), str(info.value)


def test_odd_names_and_labels_are_kept_as_names(tmp_path):
    """"--5" and "²" pass str.isdigit / lstrip("-") tests that int() then refuses: they are names."""
    rows = read_prompt_file(write(tmp_path / "a.csv", "id,image,x0,y0,x1,y1,label\n--5,².png,1,2,3,4,--5\n²,b.png,1,2,3,4,²\n"
                                                       "-7,c.png,1,2,3,4,-3\n"))
    assert [(p.prompt_id, p.category_id, p.image) for p in rows] == [("--5", "--5", "²"), ("²", "²", "b"), (-7, -3, "c")]
    detections = read_prompt_file(write(tmp_path / "d.json", [{"image_id": "²", "bbox": [1, 2, 3, 4], "category_id": "--5"}]))
    assert (detections[0].image, detections[0].category_id) == ("²", "--5")
    grouped, unmatched = group_by_image(rows + detections, ["²", "b", "0002"])
    assert [p.prompt_id for p in grouped["²"]] == ["--5", 0] and unmatched == ["c"]
    grouped, unmatched = group_by_image(read_prompt_file(write(tmp_path / "n.json", [{"image_id": 2, "bbox": [0, 0, 1, 1]}])),
                                        ["²", "0002"])
    assert len(grouped["0002"]) == 1 and grouped["²"] == [] and unmatched == []


def test_valid_unicode_files_are_read(tmp_path):
    """A JSON lines string may hold U+2028 (a line separator to str.splitlines, not to JSON lines);
    editors may start a UTF-8 file with a byte order mark."""
    line = json.dumps({"image": "a.jpg", "box": [1, 2, 3, 4], "label": "cat\u2028dog"}, ensure_ascii=False)
    (prompt,) = read_prompt_file(write(tmp_path / "a.jsonl", line + "\r\n"))
    assert prompt.category_id == "cat\u2028dog" and prompt.box == (1, 2, 3, 4)
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode())
    assert read_prompt_file(tmp_path / "b.jsonl")[0].image == "a"
    (tmp_path / "c.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"image_id": 3, "bbox": [0, 0, 1, 1]}]).encode())
    assert read_prompt_file(tmp_path / "c.json")[0].image == "3"
