"""Loaders from local copies of public benchmarks into :class:`~safety_glasses.eval.schema.BenchRow`.

- MM-SafetyBench folder layout: ``<root>/processed_questions/<NN-Scenario>.json`` (a JSON object
  mapping item index -> fields "Question", "Key Phrase", "Rephrased Question", "Rephrased Question(SD)",
  ...) and images ``<root>/imgs/<NN-Scenario>/{SD,TYPO,SD_TYPO}/<index>.jpg``. ``root`` may also be
  the folder that contains ``data/``.
- FigStep SafeBench: ``safebench.csv`` and its typographic images (:mod:`.figstep`).
- MM-Vet: ``mm-vet.json`` and ``images/`` (``<OR>``/``<AND>`` references split for scoring).
- BeaverTails-V-style export: JSONL or Parquet (Parquet needs ``pyarrow``), one record per item
  with ``question`` (or ``prompt``), ``image`` (a path relative to the file, or ``{"bytes": ...,
  "path": ...}`` as Hugging Face datasets export images, bytes raw or base64), ``category`` and an
  optional ``id``.

Nothing is downloaded: every loader reads a local path.

Example:
    >>> load_benchmark("does/not/exist.jsonl")
    Traceback (most recent call last):
    ...
    safety_glasses.eval.schema.BenchError: benchmark path not found: does/not/exist.jsonl
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .schema import BenchError, BenchRow, check_image, check_unique, load_bench

MMSB_CONDITIONS: dict[str, str] = {"standard": "SD", "typographic": "TYPO", "sd_typo": "SD_TYPO"}
"""MM-SafetyBench image folder per condition (``text_only`` uses the original question, no image)."""

_MMSB_QUESTION_FIELD: dict[str, tuple[str, ...]] = {
    "standard": ("Rephrased Question(SD)", "Rephrased Question", "Changed Question", "Question"),
    "typographic": ("Rephrased Question", "Changed Question", "Question"),
    "sd_typo": ("Rephrased Question", "Changed Question", "Question"),
    "text_only": ("Question",),
}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def _mmsb_root(root: Path) -> Path:
    for candidate in (root, root / "data"):
        if (candidate / "processed_questions").is_dir():
            return candidate
    raise BenchError(f"not an MM-SafetyBench folder (no processed_questions/ in {root} or {root / 'data'})")


def _scenario_category(scenario: str) -> str:
    return re.sub(r"^\d+[-_]", "", scenario)


def _find_image(folder: Path, index: str) -> Path | None:
    for ext in _IMAGE_EXTS:
        path = folder / f"{index}{ext}"
        if path.is_file():
            return path
    return None


def load_mm_safetybench(
    root: str | Path,
    *,
    conditions: Sequence[str] = ("standard", "typographic", "sd_typo"),
    scenarios: Sequence[str] | None = None,
    missing: str = "error",
) -> list[BenchRow]:
    """Load MM-SafetyBench from its folder layout; one row per (item, condition).

    Row ids are ``<scenario>/<index>``; the category is the scenario without its number
    (``01-Illegal_Activitiy`` -> ``Illegal_Activitiy``); the full scenario name goes to
    ``meta["scenario"]`` (the llm-judge picks scenario-specific templates with it). All rows are
    ``harmful``. ``missing="skip"`` drops items whose image is absent instead of raising.

    Example:
        >>> rows = load_mm_safetybench("tests/sgm/fixtures/mmsb", conditions=["text_only"])  # doctest: +SKIP
    """
    if missing not in ("error", "skip"):
        raise BenchError(f"missing must be 'error' or 'skip', got {missing!r}")
    bad = [c for c in conditions if c not in (*MMSB_CONDITIONS, "text_only")]
    if bad:
        raise BenchError(f"MM-SafetyBench has no condition {bad[0]!r} (use standard, typographic, sd_typo, text_only)")
    base = _mmsb_root(Path(root))
    files = sorted((base / "processed_questions").glob("*.json"))
    if scenarios is not None:
        wanted = set(scenarios)
        files = [f for f in files if f.stem in wanted or _scenario_category(f.stem) in wanted]
        found = {f.stem for f in files} | {_scenario_category(f.stem) for f in files}
        unknown = sorted(wanted - found)
        if unknown:
            raise BenchError(f"MM-SafetyBench scenario not found: {unknown[0]}")
    if not files:
        raise BenchError(f"no question files in {base / 'processed_questions'}")
    rows: list[BenchRow] = []
    for qfile in files:
        scenario = qfile.stem
        try:
            items = json.loads(qfile.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BenchError(f"{qfile.name}: invalid JSON ({err.msg})") from None
        if not isinstance(items, dict):
            raise BenchError(f"{qfile.name}: expected an object mapping item index to fields")
        for index in sorted(items, key=lambda k: (len(k), k)):
            fields = items[index]
            rid = f"{scenario}/{index}"
            if not isinstance(fields, dict):
                raise BenchError(f"row {rid!r}: expected an object of fields")
            key_phrase = fields.get("Key Phrase")
            for cond in conditions:
                question = next((fields[k] for k in _MMSB_QUESTION_FIELD[cond] if fields.get(k)), None)
                if question is None:
                    raise BenchError(f"row {rid!r}: no question field among {_MMSB_QUESTION_FIELD[cond]}")
                images: tuple[str, ...] = ()
                if cond != "text_only":
                    folder = base / "imgs" / scenario / MMSB_CONDITIONS[cond]
                    path = _find_image(folder, index)
                    if path is None:
                        if missing == "skip":
                            continue
                        raise BenchError(f"row {rid!r} ({cond}): image {index}.jpg not found in {folder}")
                    check_image(path, f"row {rid!r} ({cond})")
                    images = (str(path.resolve()),)
                rows.append(
                    BenchRow(
                        id=rid,
                        question=question,
                        kind="harmful",
                        category=_scenario_category(scenario),
                        condition=cond,
                        images=images,
                        key_phrase=key_phrase or None,
                        meta={"scenario": scenario, "source": "mm-safetybench",
                              "original_question": fields.get("Question")},
                    )
                )
    return rows


def _decode_image(value: Any, base_dir: Path, label: str) -> str | Image.Image | None:
    if value is None:
        return None
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        if not path.is_file():
            raise BenchError(f"{label}: image file not found: {path}")
        check_image(path, label)
        return str(path.resolve())
    if isinstance(value, dict):
        raw = value.get("bytes")
        if raw is not None:
            if isinstance(raw, str):
                try:
                    raw = base64.b64decode(raw, validate=True)
                except (binascii.Error, ValueError):
                    raise BenchError(f"{label}: image bytes are neither raw nor valid base64") from None
            try:
                with Image.open(io.BytesIO(raw)) as img:
                    return img.convert("RGB")
            except Exception as err:  # PIL raises several types on undecodable data
                raise BenchError(f"{label}: cannot decode image bytes ({type(err).__name__})") from None
        if value.get("path"):
            return _decode_image(value["path"], base_dir, label)
        return None
    raise BenchError(f"{label}: unsupported image value of type {type(value).__name__}")


def _read_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BenchError(f"reading {path.name} needs pyarrow (pip install pyarrow) or a JSONL export") from None
        return pq.read_table(path).to_pylist()
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BenchError(f"{path.name} line {lineno}: invalid JSON ({err.msg})") from None
    return records


def load_beavertails_v(
    path: str | Path, *, kind: str = "harmful", condition: str = "standard"
) -> list[BenchRow]:
    """Load a BeaverTails-V-style export (JSONL or Parquet) as benchmark rows.

    Records without ``id`` get ``<file stem>-<index>``; the category comes from ``category``
    (or ``harm_category``, default ``none``); other fields go to ``meta``.

    Example:
        >>> rows = load_beavertails_v("tests/sgm/fixtures/beavertails_v.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"benchmark file not found: {path}")
    rows: list[BenchRow] = []
    for i, rec in enumerate(_read_records(path)):
        rid = str(rec.get("id", f"{path.stem}-{i}"))
        label = f"row {rid!r} ({path.name} record {i})"
        if not isinstance(rec, dict):
            raise BenchError(f"{label}: expected an object")
        question = rec.get("question") or rec.get("prompt")
        if not isinstance(question, str) or not question.strip():
            raise BenchError(f"{label}: missing 'question'")
        image = _decode_image(rec.get("image"), path.parent, label)
        meta = {k: v for k, v in rec.items() if k not in {"id", "question", "prompt", "image", "category",
                                                           "harm_category"} and _jsonable(v)}
        meta["source"] = "beavertails-v"
        try:
            rows.append(
                BenchRow(
                    id=rid,
                    question=question,
                    kind=kind,
                    category=str(rec.get("category") or rec.get("harm_category") or "none"),
                    condition=condition if image is not None or condition == "text_only" else "text_only",
                    images=() if image is None else (image,),
                    meta=meta,
                )
            )
        except BenchError as err:
            raise BenchError(f"{err} ({path.name} record {i})") from None
    if not rows:
        raise BenchError(f"benchmark file {path} has no rows")
    check_unique(rows)
    return rows


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None))) or (
        isinstance(value, (list, dict)) and len(json.dumps(value, default=str)) < 10_000
    )


def split_mm_vet_answer(answer: str) -> tuple[str, ...]:
    """MM-Vet's reference syntax as accepted answers: ``a<OR>b`` gives ``("a", "b")``; an answer
    with ``<AND>`` stays one alternative whose parts must all appear (see
    :func:`safety_glasses.eval.metrics.vqa_match`).

    Example:
        >>> split_mm_vet_answer("14<OR>14.0"), split_mm_vet_answer("red<AND>blue")
        (('14', '14.0'), ('red<AND>blue',))
    """
    parts = tuple(p.strip() for p in str(answer).split("<OR>") if p.strip())
    return parts


def load_mm_vet(root: str | Path) -> list[BenchRow]:
    """Load MM-Vet from its folder layout (``mm-vet.json`` mapping ids to ``imagename``, ``question``,
    ``answer``, ``capability``; images in ``images/``) as ``vqa`` rows graded by the llm-judge
    (``meta["grader"] == "llm"``; normalised exact match where no llm-judge is configured). An
    answer ``a<OR>b`` gives the accepted answers ``a`` and ``b``; ``a<AND>b`` needs both parts
    (``meta["answer"]`` keeps the raw string for the llm grader).

    Example:
        >>> rows = load_mm_vet("tests/sgm/fixtures/eval/mmvet")  # doctest: +SKIP
    """
    base = Path(root)
    qfile = base / "mm-vet.json"
    if not qfile.is_file():
        raise BenchError(f"not an MM-Vet folder (no mm-vet.json in {base})")
    try:
        items = json.loads(qfile.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchError(f"{qfile.name}: invalid JSON ({err.msg})") from None
    if not isinstance(items, dict):
        raise BenchError(f"{qfile.name}: expected an object mapping ids to fields")
    rows = []
    for rid, fields in items.items():
        if not isinstance(fields, dict):
            raise BenchError(f"row {rid!r}: expected an object of fields")
        image = base / "images" / str(fields.get("imagename", ""))
        if not fields.get("imagename") or not image.is_file():
            raise BenchError(f"row {rid!r}: image not found: {image}")
        check_image(image, f"row {rid!r}")
        caps = fields.get("capability") or []
        answer = str(fields.get("answer", "") or "")
        references = split_mm_vet_answer(answer)
        rows.append(BenchRow(id=str(rid), question=str(fields.get("question", "")), kind="vqa",
                             category="+".join(caps) if caps else "mm-vet", images=(str(image.resolve()),),
                             reference=references or None,
                             meta={"grader": "llm", "source": "mm-vet", "capability": caps, "answer": answer}))
    if not rows:
        raise BenchError(f"{qfile} has no rows")
    return rows


BENCH_FORMATS: tuple[str, ...] = ("auto", "bench", "mmsb", "mmvet", "figstep", "beavertails-v")
"""Accepted values of ``fmt`` / ``--bench-format``."""

_NATIVE_CONDITIONS: dict[str, tuple[str, ...]] = {
    "mmsb": (*MMSB_CONDITIONS, "text_only"),
    "figstep": ("typographic", "text_only"),
}


def loader_conditions(fmt: str, conditions: Sequence[str] | None) -> list[str] | None:
    """The conditions a folder benchmark should load itself for the requested ``conditions``: the
    requested ones it has (MM-SafetyBench's own text-only question, FigStep's own prompt), plus
    ``standard`` when another requested condition must be derived from it. None: the loader's
    default.

    Example:
        >>> loader_conditions("mmsb", ["text_only"]), loader_conditions("mmsb", ["adversarial_image"])
        (['text_only'], ['standard'])
    """
    native = _NATIVE_CONDITIONS.get(fmt)
    if native is None or not conditions:
        return None
    own = [c for c in dict.fromkeys(conditions) if c in native]
    derived = [c for c in conditions if c not in native]
    if derived and fmt == "figstep":
        raise BenchError(f"FigStep SafeBench has the conditions {', '.join(native)}; it cannot derive "
                         f"{', '.join(derived)} (no scene image)")
    if derived and "standard" not in own:
        own.append("standard")
    return own


def detect_format(path: str | Path) -> str:
    """The benchmark format of a local path (see :func:`load_benchmark`).

    Example:
        >>> detect_format("tests/sgm/fixtures/eval/mmvet")  # doctest: +SKIP
        'mmvet'
    """
    from .figstep import find_figstep_csv

    p = Path(path)
    if p.is_dir():
        if (p / "mm-vet.json").is_file():
            return "mmvet"
        if find_figstep_csv(p) is not None and not any((c / "processed_questions").is_dir() for c in (p, p / "data")):
            return "figstep"
        return "mmsb"
    if p.suffix == ".parquet":
        return "beavertails-v"
    if p.suffix.lower() == ".csv":
        if find_figstep_csv(p) is not None:
            return "figstep"
        raise BenchError(f"{p.name}: a CSV benchmark must be FigStep's SafeBench (columns dataset, category_id, "
                         "task_id, category_name, question, instruction); use JSONL for other benchmarks")
    try:
        first = next((ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()
                      and not ln.lstrip().startswith("#")), "")
    except UnicodeDecodeError:
        raise BenchError(f"{p.name}: not a text benchmark file (JSONL expected)") from None
    try:
        return "bench" if "kind" in json.loads(first) else "beavertails-v"
    except (json.JSONDecodeError, TypeError):
        return "bench"  # let the strict loader report the line


def load_benchmark(path: str | Path, *, fmt: str = "auto", conditions: Sequence[str] | None = None,
                   **kwargs: Any) -> list[BenchRow]:
    """Load a benchmark from a local path in any supported format.

    ``fmt``: ``auto`` (a folder -> MM-Vet when it has ``mm-vet.json``, FigStep when it has
    ``safebench.csv`` (or ``question/``, ``data/question/``), else MM-SafetyBench; a ``.csv`` with
    FigStep's columns -> FigStep; ``.parquet`` -> BeaverTails-V; ``.jsonl`` whose first record has
    ``kind`` -> the native schema, otherwise BeaverTails-V), ``bench``, ``mmsb``, ``mmvet``,
    ``figstep``, ``beavertails-v``. ``conditions`` (the run's ``--conditions``) tells the
    MM-SafetyBench and FigStep loaders which of their own conditions to load (see
    :func:`loader_conditions`). Extra keyword arguments go to the chosen loader.

    Example:
        >>> load_benchmark("x.csv", fmt="nope")
        Traceback (most recent call last):
        ...
        safety_glasses.eval.schema.BenchError: unknown benchmark format 'nope' (auto, bench, mmsb, mmvet, figstep, beavertails-v)
    """
    if fmt not in BENCH_FORMATS:
        raise BenchError(f"unknown benchmark format {fmt!r} ({', '.join(BENCH_FORMATS)})")
    p = Path(path)
    if not p.exists():
        raise BenchError(f"benchmark path not found: {path}")
    if fmt == "auto":
        fmt = detect_format(p)
    own = loader_conditions(fmt, conditions)
    if own is not None:
        kwargs.setdefault("conditions", own)
    if fmt == "mmsb":
        return load_mm_safetybench(p, **kwargs)
    if fmt == "figstep":
        from .figstep import load_figstep

        return load_figstep(p, **kwargs)
    if fmt == "mmvet":
        return load_mm_vet(p)
    if fmt == "beavertails-v":
        return load_beavertails_v(p, **kwargs)
    return load_bench(p)
