"""Concept files as people bring them: CSV parsed as CSV (multi-line quoted cells), the SGM authors'
``.xlsx`` spreadsheets (name, prompt, output, label; float labels), and column maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from safety_glasses.cli import app
from safety_glasses.concepts import ConceptError, ConceptSet, parse_label


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path)
    return path


def test_csv_keeps_newlines_quotes_and_commas_inside_cells(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    # a spreadsheet export: CRLF line ends, a reply over three lines, quotes and commas inside cells
    path.write_bytes(('id,prompt,response,label\r\n'
                      'a,"Say it, now","First line\r\nsecond ""quoted"" line\r\nthird, with a comma",toxic\r\n'
                      'b,p,"one line",non-toxic\r\n').encode())
    cs = ConceptSet.load(path)
    assert [r.id for r in cs] == ["a", "b"]
    assert cs[0].response == 'First line\nsecond "quoted" line\nthird, with a comma'  # CRLF read as newlines
    assert cs[0].prompt == "Say it, now"


def test_csv_errors_name_the_first_line_of_a_multiline_record(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,prompt,response,label\n'
                    'a,p,"two\nlines",1\n'
                    'b,p,"three\nphysical\nlines",maybe\n')
    with pytest.raises(ConceptError, match=r"c.csv line 4, row 'b': unknown label 'maybe'"):
        ConceptSet.load(path)
    path.write_text('id,prompt,response,label\na,p,r,1\nb,p,"never closed,0\n')
    with pytest.raises(ConceptError, match=r"c.csv line 3"):
        ConceptSet.load(path)
    path.write_text('id,prompt,response,label\na,p,r,1,surplus\nb,p,r,0\n')
    with pytest.raises(ConceptError, match=r"c.csv line 2: 5 cells but the header has 4 columns"):
        ConceptSet.load(path)


@pytest.mark.parametrize("value,label", [(1.0, 1), (0.0, 0), ("1.0", 1), ("0.00", 0), (1, 1)])
def test_float_labels(value: object, label: int) -> None:
    assert parse_label(value) == label


@pytest.mark.parametrize("value", [0.5, "0.5", float("nan"), 2.0, "1.0.0"])
def test_bad_float_labels(value: object) -> None:
    with pytest.raises(ValueError, match="unknown label"):
        parse_label(value)


def _xlsx(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "concepts"
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def test_xlsx_in_the_sgm_authors_format(tmp_path: Path) -> None:
    _image(tmp_path / "0.jpg")
    _image(tmp_path / "images_dir" / "1.png")
    _image(tmp_path / "images" / "2.png")
    path = _xlsx(tmp_path / "concepts.xlsx", ["name", "prompt", "output", "label"], [
        ["0.jpg", "What is shown?", "Vile words\nover two lines", 1.0],
        ["images_dir/1", "Describe it.", "A calm lake.", 0.0],  # no extension: found as .png
        ["2.png", "And this?", "Fine.", 0.0],  # a bare name found in the sheet's images/ folder
        [None, "Text only?", "Yes.", 1],
        [None, None, None, None],  # an empty spreadsheet row is skipped
        [None, "Again", "No.", "0.0"],
    ])
    cs = ConceptSet.load(path)
    assert cs.labels.tolist() == [1, 0, 0, 1, 0]
    assert cs[0].images == (tmp_path / "0.jpg",) and cs[1].images == (tmp_path / "images_dir" / "1.png",)
    assert cs[2].images == (tmp_path / "images" / "2.png",)
    assert cs[3].images == () and cs[0].response == "Vile words\nover two lines"
    assert cs[0].load_images()[0].size == (4, 4)


def test_xlsx_errors_name_the_sheet_row_and_hint_at_the_name_column(tmp_path: Path) -> None:
    path = _xlsx(tmp_path / "c.xlsx", ["name", "prompt", "output", "label"],
                 [["sample-1", "p", "r", 1.0], ["sample-2", "p", "r", 0.0]])
    with pytest.raises(ConceptError, match=r"c.xlsx sheet 'concepts' row 2, row 'row-0': image file not found.*id=name"):
        ConceptSet.load(path)
    cs = ConceptSet.load(path, column_map="id=name")  # the name column holds row ids here
    assert [r.id for r in cs] == ["sample-1", "sample-2"] and not cs.has_images
    bad = _xlsx(tmp_path / "d.xlsx", ["name", "prompt", "output", "label"], [[None, "p", "r", 1.0], [None, "p", "r", 0.7]])
    with pytest.raises(ConceptError, match=r"d.xlsx sheet 'concepts' row 3, row 'row-1': unknown label 0.7"):
        ConceptSet.load(bad)
    (tmp_path / "e.xlsx").write_bytes(b"not a zip")
    with pytest.raises(ConceptError, match=r"e.xlsx: not a readable .xlsx workbook"):
        ConceptSet.load(tmp_path / "e.xlsx")


def test_column_map_for_other_spreadsheets_and_jsonl(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("Question,Answer,is_toxic,File\nq1,a1,1,a.png\nq2,a2,0,\n")
    cs = ConceptSet.load(csv_path, column_map="prompt=Question,response=Answer,label=is_toxic,image=File")
    assert [r.prompt for r in cs] == ["q1", "q2"] and cs.labels.tolist() == [1, 0] and cs[0].images
    cs = ConceptSet.load(csv_path, column_map={"prompt": "question", "response": "answer", "label": "IS_TOXIC"})
    assert cs[1].response == "a2" and not cs.has_images  # header names match case-insensitively
    with pytest.raises(ConceptError, match=r"missing column\(s\) \['response', 'label'\].*column map"):
        ConceptSet.load(csv_path)
    with pytest.raises(ConceptError, match=r"column 'nope' \(mapped to 'prompt'\) is not in the header"):
        ConceptSet.load(csv_path, column_map="prompt=nope,response=Answer,label=is_toxic")
    with pytest.raises(ConceptError, match=r"column map: unknown field 'text'"):
        ConceptSet.load(csv_path, column_map="text=Question")
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [{"q": "p", "a": "r", "y": 1}, {"q": "p", "a": "s", "y": 0}]))
    assert ConceptSet.load(jl, column_map="prompt=q,response=a,label=y").labels.tolist() == [1, 0]


def test_fit_column_map_and_xlsx_fail_before_the_model_loads(tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("Question,Answer,is_toxic\nq1,a1,1\nq2,a2,0\n")
    runner = CliRunner()
    missing = str(tmp_path / "no-such-model")  # a local path: nothing is looked up on a hub
    res = runner.invoke(app, ["fit", "--model", missing, "--concepts", str(csv_path), "--out",
                              str(tmp_path / "g"), "--column-map", "prompt=Question,response=Answer,label=nope"])
    assert res.exit_code == 2 and "column 'nope'" in res.output and "no-such-model" not in res.output
    res = runner.invoke(app, ["fit", "--model", missing, "--concepts", str(csv_path), "--out",
                              str(tmp_path / "g"), "--column-map", "prompt=Question,response=Answer,label=is_toxic"])
    assert res.exit_code == 2 and "no-such-model" in res.output  # the concepts were fine: the model is next


def test_unreadable_concept_image_is_named_before_any_model_work(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "image": "broken.png", "prompt": "p", "response": "r", "label": 1}) + "\n"
                    + json.dumps({"id": "b", "prompt": "p", "response": "r", "label": 0}) + "\n")
    with pytest.raises(ConceptError, match=r"c.jsonl line 1, row 'a': unreadable image .*broken.png"):
        ConceptSet.load(path)
