"""Concept data: loading from JSONL/CSV/memory, validation naming the row, hashing, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safety_glasses.concepts import ConceptError, ConceptRow, ConceptSet, parse_label


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), colour).save(path)
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    _image(tmp_path / "img" / "red.png", (255, 0, 0))
    _image(tmp_path / "img" / "blue.png", (0, 0, 255))
    Image.new("L", (2, 2), 7).save(tmp_path / "img" / "grey.png")
    return tmp_path


def test_jsonl_relative_paths_lists_and_text_only_rows(folder: Path) -> None:
    path = _write_jsonl(
        folder / "concepts.jsonl",
        [
            {"id": "a", "image": "img/red.png", "prompt": "What?", "response": "Hate.", "label": "TOXIC",
             "category": "hate"},
            "",
            {"id": "b", "image": ["img/blue.png", "img/grey.png"], "prompt": "P", "response": "R",
             "label": "Non-Toxic"},
            {"prompt": "text only", "response": "fine", "label": 0},
            {"id": "d", "image": None, "prompt": "p", "response": "r", "label": True},
        ],
    )
    cs = ConceptSet.load(path)
    assert [r.id for r in cs] == ["a", "b", "row-2", "d"]
    assert cs.labels.tolist() == [1, 0, 0, 1] and cs.labels.dtype == np.int8
    assert cs.class_counts() == {"toxic": 2, "non-toxic": 2}
    assert cs.rows[0].images == ((folder / "img" / "red.png"),)
    assert cs[0].category == "hate" and cs[2].category is None
    images = cs[1].load_images()
    assert [im.mode for im in images] == ["RGB", "RGB"] and images[1].size == (2, 2)
    assert cs[2].images == () and cs.has_images
    assert cs.base_dir == folder
    assert [len(b) for b in cs.batches(3)] == [3, 1]
    assert isinstance(cs[1:3], list) and len(cs[1:3]) == 2


def test_relative_concept_file_path_resolves_images_once(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_jsonl(folder / "rel.jsonl", [
        {"id": "a", "image": "img/red.png", "prompt": "p", "response": "r", "label": 1},
        {"id": "b", "prompt": "p", "response": "r", "label": 0},
    ])
    monkeypatch.chdir(folder.parent)
    cs = ConceptSet.load(Path(folder.name) / "rel.jsonl")
    assert cs[0].images == (folder / "img" / "red.png",) and cs[0].images[0].is_absolute()
    monkeypatch.chdir(folder)  # images keep working after the working directory changes
    assert cs[0].load_images()[0].size == (4, 3)


def test_csv_with_pipe_and_json_list_images(folder: Path) -> None:
    path = folder / "concepts.csv"
    path.write_text(
        "id,image,prompt,response,label,category\n"
        "x,img/red.png,\"Hi, you\",\"Go away, idiot\",1,insult\n"
        "y,img/red.png|img/blue.png,p,r,non-toxic,\n"
        "z,\"[\"\"img/grey.png\"\"]\",p,r,0,\n"
        ",,p,r,toxic,\n"
    )
    cs = ConceptSet.load(path)
    assert [r.id for r in cs] == ["x", "y", "z", "row-3"]
    assert cs[0].prompt == "Hi, you" and cs[0].category == "insult"
    assert len(cs[1].images) == 2 and len(cs[2].images) == 1 and cs[3].images == ()
    assert cs.labels.tolist() == [1, 0, 0, 1]


def test_from_rows_accepts_pil_paths_lists_and_none(folder: Path) -> None:
    pil = Image.new("RGBA", (3, 3), (1, 2, 3, 4))
    cs = ConceptSet.from_rows(
        [
            {"id": "p", "image": pil, "prompt": "a", "response": "b", "label": 1},
            {"id": "q", "image": [pil, folder / "img" / "red.png"], "prompt": "a", "response": "b",
             "label": "0"},
            {"id": "r", "image": "img/blue.png", "prompt": "a", "response": "b", "label": False},
            {"id": "s", "prompt": "a", "response": "b", "label": "nontoxic"},
        ],
        base_dir=folder,
    )
    assert cs[0].load_images()[0].mode == "RGB"
    assert cs[2].images == (folder / "img" / "blue.png",)
    assert cs[3].images == ()
    again = ConceptSet.from_rows(list(cs))  # ConceptRow objects pass through
    assert [r.id for r in again] == ["p", "q", "r", "s"] and again.content_hash() == cs.content_hash()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"id": "bad-img", "image": "img/missing.png", "prompt": "p", "response": "r", "label": 1},
         "image file not found"),
        ({"id": "bad-label", "prompt": "p", "response": "r", "label": "maybe"}, "unknown label"),
        ({"id": "bad-label2", "prompt": "p", "response": "r", "label": 2}, "unknown label"),
        ({"id": "no-label", "prompt": "p", "response": "r"}, "label is missing"),
        ({"id": "bad-prompt", "prompt": 5, "response": "r", "label": 1}, "prompt is not text"),
        ({"id": "empty-response", "prompt": "p", "response": "", "label": 1}, "response is empty"),
        ({"id": "no-response", "prompt": "p", "label": 1}, "response is missing"),
        ({"id": "bad-image-type", "image": 5, "prompt": "p", "response": "r", "label": 1}, "image"),
        ({"id": "ok-1", "prompt": "p", "response": "r", "label": 1}, "duplicate id"),
    ],
)
def test_bad_rows_name_the_row_and_line(folder: Path, row: dict, problem: str) -> None:
    good = [
        {"id": "ok-0", "prompt": "p", "response": "r", "label": 0},
        {"id": "ok-1", "prompt": "p", "response": "r", "label": 1},
    ]
    path = _write_jsonl(folder / "bad.jsonl", [*good, row])
    with pytest.raises(ConceptError) as info:
        ConceptSet.from_jsonl(path)
    message = str(info.value)
    assert problem in message and row["id"] in message and "line 3" in message
    assert "\n" not in message
    with pytest.raises(ConceptError) as info2:  # same check from memory: the row index is named
        ConceptSet.from_rows([*good, row], base_dir=folder)
    message2 = str(info2.value)
    assert problem in message2 and row["id"] in message2 and "row index 2" in message2


def test_unreadable_json_line_and_non_object(folder: Path) -> None:
    path = _write_jsonl(folder / "broken.jsonl", [{"prompt": "p", "response": "r", "label": 1}, "{oops"])
    with pytest.raises(ConceptError, match=r"broken.jsonl line 2: unreadable JSON"):
        ConceptSet.from_jsonl(path)
    path = _write_jsonl(folder / "list.jsonl", [{"prompt": "p", "response": "r", "label": 1}, "[1, 2]"])
    with pytest.raises(ConceptError, match=r"line 2.*expected an object"):
        ConceptSet.from_jsonl(path)


def test_one_class_and_empty_sets_are_errors(folder: Path) -> None:
    rows = [{"id": f"t{i}", "prompt": "p", "response": "r", "label": "toxic"} for i in range(3)]
    with pytest.raises(ConceptError, match=r"row 't0'.*only toxic rows \(3\).*non-toxic row is needed"):
        ConceptSet.from_rows(rows)
    with pytest.raises(ConceptError, match="empty"):
        ConceptSet.from_rows([])
    (folder / "c.csv").write_text("id,prompt,label\na,p,1\n")
    with pytest.raises(ConceptError, match="missing column"):
        ConceptSet.from_csv(folder / "c.csv")
    with pytest.raises(ConceptError, match="unsupported"):
        ConceptSet.load(folder / "c.txt")
    with pytest.raises(ConceptError, match="not found"):
        ConceptSet.load(folder / "nope.jsonl")


def test_csv_bad_row_names_line(folder: Path) -> None:
    path = folder / "bad.csv"
    path.write_text("id,image,prompt,response,label\na,,p,r,1\nb,img/none.png,p,r,0\n")
    with pytest.raises(ConceptError, match=r"bad.csv line 3, row 'b': image file not found"):
        ConceptSet.from_csv(path)


def test_parse_label_spellings() -> None:
    for value, expected in [("toxic", 1), ("NON-TOXIC", 0), ("nontoxic", 0), (1, 1), (0, 0), ("1", 1),
                            (" 0 ", 0), (True, 1), (False, 0), ("True", 1), (np.int64(1), 1)]:
        assert parse_label(value) == expected
    for value in ("yes", 2, -1, 0.5, None, ""):
        with pytest.raises(ValueError):
            parse_label(value)


def test_content_hash_stable_and_sensitive(folder: Path) -> None:
    rows = [
        {"id": "a", "image": "img/red.png", "prompt": "p", "response": "r", "label": 1},
        {"id": "b", "prompt": "p", "response": "r2", "label": 0},
    ]
    h = ConceptSet.from_rows(rows, base_dir=folder).content_hash()
    assert len(h) == 64 and h == ConceptSet.from_rows(rows, base_dir=folder).content_hash()
    flipped = [dict(rows[0], label=0), dict(rows[1], label=1)]
    assert ConceptSet.from_rows(flipped, base_dir=folder).content_hash() != h
    other_image = [dict(rows[0], image="img/blue.png"), rows[1]]
    assert ConceptSet.from_rows(other_image, base_dir=folder).content_hash() != h
    renamed = [dict(rows[0], category="x"), rows[1]]
    assert ConceptSet.from_rows(renamed, base_dir=folder).content_hash() == h  # category not hashed


def test_content_hash_is_stable_across_processes(folder: Path) -> None:
    import subprocess
    import sys

    code = (
        "from safety_glasses.concepts import ConceptSet;"
        "print(ConceptSet.from_rows([{'id':'a','prompt':'p','response':'r','label':1},"
        "{'id':'b','prompt':'p','response':'r','label':0}]).content_hash())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    here = ConceptSet.from_rows([{"id": "a", "prompt": "p", "response": "r", "label": 1},
                                 {"id": "b", "prompt": "p", "response": "r", "label": 0}]).content_hash()
    assert out.stdout.strip() == here


def test_text_only_drops_images_keeps_rows(folder: Path) -> None:
    cs = ConceptSet.from_rows(
        [{"id": "a", "image": "img/red.png", "prompt": "p", "response": "r", "label": 1},
         {"id": "b", "prompt": "p", "response": "r", "label": 0}],
        base_dir=folder,
    )
    text = cs.text_only()
    assert not text.has_images and cs.has_images
    assert [(r.id, r.prompt, r.response, r.label) for r in text] == [
        (r.id, r.prompt, r.response, r.label) for r in cs
    ]
    assert text.content_hash() != cs.content_hash()


def test_round_trip_through_jsonl(folder: Path, tmp_path: Path) -> None:
    pil = Image.new("RGB", (5, 4), (9, 8, 7))
    cs = ConceptSet.from_rows(
        [
            {"id": "a/1", "image": [pil, "img/red.png"], "prompt": "p", "response": "r", "label": 1,
             "category": "c"},
            {"id": "b", "prompt": "p2", "response": "r2", "label": 0},
            {"id": "c", "image": "img/blue.png", "prompt": "p3", "response": "r3", "label": 0},
        ],
        base_dir=folder,
    )
    out = cs.to_jsonl(tmp_path / "out" / "set.jsonl", image_dir=tmp_path / "out" / "pics")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["label"] == "toxic" and lines[1]["image"] is None
    assert lines[0]["image"][0] == "pics/a_1-0.png"  # relative to the file's folder
    back = ConceptSet.from_jsonl(out)
    assert [(r.id, r.prompt, r.response, r.label, r.category, len(r.images)) for r in back] == [
        (r.id, r.prompt, r.response, r.label, r.category, len(r.images)) for r in cs
    ]
    assert back.content_hash() == cs.content_hash()  # pixels, not file bytes, are hashed
    assert np.array_equal(np.asarray(back[0].load_images()[0]), np.asarray(pil))


def test_concept_row_validates_itself() -> None:
    with pytest.raises(ConceptError, match="row 'z': label 3"):
        ConceptRow("z", (), "p", "r", 3, None)
    with pytest.raises(ConceptError, match="id must be"):
        ConceptRow("", (), "p", "r", 1, None)
    row = ConceptRow("z", "some/path.png", "p", "r", 1)
    assert row.images == (Path("some/path.png"),)
    with pytest.raises(ConceptError, match=r"row index 1, row 'z': image file not found"):
        ConceptSet([ConceptRow("y", (), "p", "r", 0), row])
