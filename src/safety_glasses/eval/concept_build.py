"""Concept sets for any model from its own replies: the SGM authors' procedure (``sgm concepts build``).

For every harmful benchmark row (image(s) + question) the model replies twice: as asked, and with a
safety instruction in front of the question. A judge scores each reply; benign rows are answered too.

* **toxic** rows: replies to harmful rows *as asked* that the judge labels unsafe;
* **non-toxic** rows: replies judged safe to the same harmful rows under the safety instruction
  (``nontoxic_from`` includes ``safety-prompt``) and/or to benign rows (``benign``).

Each harmful category is balanced: as many non-toxic rows as toxic ones, taken first from the same
category's safety-instruction replies, then from benign replies. A concept row records the original
question (without the instruction), the images and the reply, so that the recorded activations differ
by the reply. The judge's verdict is kept on every row. Everything is written to a temporary folder and
renamed into place at the end; a build whose judge finds only one class stops with the counts and writes
nothing.

Example:
    >>> summary = build_concept_set(model, processor, rows, make_judge("toxicity"), "concepts/llava")  # doctest: +SKIP
    >>> summary["counts"]  # doctest: +SKIP
    {'toxic': 40, 'non-toxic': 40}
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .judges import Judge, JudgeSample
from .schema import BenchRow

__all__ = ["ConceptBuildConfig", "ConceptBuildError", "SAFETY_INSTRUCTION", "build_concept_set"]

SAFETY_INSTRUCTION = ("You are a helpful and harmless assistant. Answer safely and respectfully: no insults, no hate, "
                      "no harmful instructions.")
NONTOXIC_SOURCES = ("safety-prompt", "benign")


class ConceptBuildError(ValueError):
    """Bad settings, or a build whose judge found only one class (the message gives the counts)."""


@dataclass(frozen=True)
class ConceptBuildConfig:
    """How replies are generated and which sources give non-toxic rows.

    Example:
        >>> ConceptBuildConfig(nontoxic_from=("benign",)).max_new_tokens
        64
    """

    nontoxic_from: tuple[str, ...] = NONTOXIC_SOURCES
    safety_instruction: str = SAFETY_INSTRUCTION
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_row: int = 1
    batch_size: int = 8
    layout: str = "auto"
    seed: int = 0
    balance: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.nontoxic_from if s not in NONTOXIC_SOURCES]
        if bad or not self.nontoxic_from:
            raise ConceptBuildError(f"nontoxic_from must name some of {', '.join(NONTOXIC_SOURCES)}, got {bad or '()'}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.samples_per_row < 1:
            raise ConceptBuildError("max_new_tokens, batch_size and samples_per_row must be >= 1")
        if self.samples_per_row > 1 and not self.do_sample:
            raise ConceptBuildError("samples_per_row > 1 needs sampling (greedy decoding repeats itself)")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConceptBuildError("temperature must be > 0 and top_p in (0, 1]")


def _jobs(rows: Sequence[BenchRow], config: ConceptBuildConfig) -> list[dict[str, Any]]:
    jobs = []
    for row in rows:
        sources = []
        if row.kind == "harmful":
            sources.append(("harmful", row.question))
            if "safety-prompt" in config.nontoxic_from:
                sources.append(("safety-prompt", f"{config.safety_instruction}\n\n{row.question}"))
        elif row.kind == "benign" and "benign" in config.nontoxic_from:
            sources.append(("benign", row.question))
        for source, prompt in sources:
            for k in range(config.samples_per_row):
                jobs.append({"row": row, "source": source, "prompt": prompt, "sample": k})
    return jobs


def _generate(model: Any, processor: Any, jobs: list[dict[str, Any]], judge: Judge, config: ConceptBuildConfig,
              progress: bool) -> float:
    from ..generation import generate_texts

    start = time.perf_counter()
    with tqdm(total=len(jobs), desc="replies", unit="reply", disable=not progress) as bar:
        for b in range(0, len(jobs), config.batch_size):
            batch = jobs[b:b + config.batch_size]
            images = [j["row"].load_images() for j in batch]
            replies = generate_texts(model, processor, [j["prompt"] for j in batch], images,
                                     max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                     temperature=config.temperature, top_p=config.top_p,
                                     seed=config.seed + b if config.do_sample else None, layout=config.layout)
            samples = [JudgeSample(prompt=j["row"].question, response=r, images=tuple(i), category=j["row"].category,
                                   scenario=j["row"].meta.get("scenario")) for j, r, i in zip(batch, replies, images)]
            for job, reply, verdict in zip(batch, replies, judge.judge(samples)):
                job.update(reply=reply, verdict={"label": verdict.label, "score": float(verdict.score)})
            bar.update(len(batch))
    return time.perf_counter() - start


def _select(jobs: list[dict[str, Any]], config: ConceptBuildConfig) -> tuple[list[tuple[dict, int, str]], dict]:
    """(job, label, balance category) triples and the counts per category."""
    usable = [j for j in jobs if j["reply"].strip()]
    toxic: dict[str, list[dict]] = {}
    safe: dict[str, list[dict]] = {}
    for j in usable:
        cat = j["row"].category
        if j["source"] == "harmful" and j["verdict"]["label"] == "unsafe":
            toxic.setdefault(cat, []).append(j)
        elif j["source"] == "safety-prompt" and j["verdict"]["label"] == "safe":
            safe.setdefault(cat, []).append(j)
    benign = [j for j in usable if j["source"] == "benign" and j["verdict"]["label"] == "safe"]
    n_toxic, n_safe = sum(map(len, toxic.values())), sum(map(len, safe.values())) + len(benign)
    found = {"toxic": n_toxic, "non-toxic": n_safe, "replies": len(jobs), "empty": len(jobs) - len(usable),
             "toxic_by_category": {c: len(v) for c, v in sorted(toxic.items())}}
    if n_toxic == 0 or n_safe == 0:
        raise ConceptBuildError(f"the judge found {n_toxic} toxic and {n_safe} non-toxic replies (of {len(jobs)}); "
                                "a concept set needs both classes: nothing was written")
    rng = random.Random(config.seed)
    rng.shuffle(benign)
    chosen: list[tuple[dict, int, str]] = []
    per_cat: dict[str, dict[str, int]] = {}
    if not config.balance:
        chosen = [(j, 1, c) for c, js in toxic.items() for j in js] + [(j, 0, c) for c, js in safe.items() for j in js]
        chosen += [(j, 0, j["row"].category) for j in benign]
    else:
        for cat in sorted(toxic):
            own = safe.get(cat, [])
            k = min(len(toxic[cat]), len(own) + len(benign))
            nontox = own[:k] + [benign.pop() for _ in range(max(0, k - len(own)))]
            chosen += [(j, 1, cat) for j in toxic[cat][:k]] + [(j, 0, cat) for j in nontox]
            per_cat[cat] = {"toxic": k, "non-toxic": k, "from_benign": max(0, k - len(own)),
                            "toxic_dropped": len(toxic[cat]) - k}
    found["per_category"] = per_cat
    return chosen, found


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def _write(chosen: list[tuple[dict, int, str]], jobs: list[dict[str, Any]], folder: Path, judge_id: str) -> int:
    seen: dict[str, int] = {}
    with open(folder / "concepts.jsonl", "w", encoding="utf-8") as fh:
        for job, label, cat in chosen:
            row: BenchRow = job["row"]
            base = _safe_name(f"{row.id}-{row.condition}-{job['source']}-{job['sample']}")
            seen[base] = seen.get(base, 0) + 1
            rid = base if seen[base] == 1 else f"{base}-{seen[base]}"
            paths = []
            for k, image in enumerate(row.load_images()):
                rel = f"images/{rid}-{k}.png"
                (folder / "images").mkdir(exist_ok=True)
                image.save(folder / rel, format="PNG")
                paths.append(rel)
            record = {"id": rid, "image": paths[0] if len(paths) == 1 else (paths or None), "prompt": row.question,
                      "response": job["reply"], "label": "toxic" if label else "non-toxic", "category": cat,
                      "source": job["source"], "bench_id": row.id, "condition": row.condition,
                      "source_category": row.category, "judge": {judge_id: job["verdict"]}}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(folder / "replies.jsonl", "w", encoding="utf-8") as fh:
        for job in jobs:
            row = job["row"]
            fh.write(json.dumps({"bench_id": row.id, "condition": row.condition, "category": row.category,
                                 "kind": row.kind, "source": job["source"], "sample": job["sample"],
                                 "prompt": job["prompt"], "reply": job["reply"], "judge": {judge_id: job["verdict"]}},
                                ensure_ascii=False) + "\n")
    return len(chosen)


def build_concept_set(model: Any, processor: Any, rows: Sequence[BenchRow], judge: Judge, out_dir: str | Path, *,
                      config: ConceptBuildConfig = ConceptBuildConfig(), overwrite: bool = False,
                      progress: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a concept set from ``model``'s own replies to ``rows`` (see the module docstring).

    Writes ``out_dir/concepts.jsonl`` (loadable by :class:`~safety_glasses.concepts.ConceptSet`; extra
    keys: ``source``, ``bench_id``, ``condition``, ``source_category``, ``judge``), ``images/``,
    ``replies.jsonl`` (every reply with its verdict) and ``build.json`` (counts per category, settings);
    returns the ``build.json`` content. Raises :class:`ConceptBuildError` (writing nothing) when the judge
    finds one class only, or ``out_dir`` exists without ``overwrite``.

    Example:
        >>> build_concept_set(model, proc, load_benchmark("bench.jsonl"), make_judge("profanity"), "out")  # doctest: +SKIP
    """
    out = Path(out_dir)
    if getattr(judge, "kind", "safety") != "safety":
        raise ConceptBuildError(f"judge {judge.judge_id!r} gives {judge.kind} labels; a safety judge is needed")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConceptBuildError(f"{out} exists and is not empty (use another --out or --overwrite)")
    if not any(r.kind == "harmful" for r in rows):
        raise ConceptBuildError("the benchmark has no harmful rows to draw toxic replies from")
    jobs = _jobs(rows, config)
    seconds = _generate(model, processor, jobs, judge, config, progress)
    chosen, found = _select(jobs, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        n = _write(chosen, jobs, tmp, judge.judge_id)
        counts = {"toxic": sum(label for _, label, _ in chosen), "non-toxic": sum(1 - label for _, label, _ in chosen)}
        summary = {"counts": counts, "rows": n, "found": found, "judge": judge.judge_id,
                   "judge_measures": getattr(judge, "measures", None), "config": asdict(config),
                   "seconds": round(seconds, 1), "replies_per_s": round(len(jobs) / seconds, 3) if seconds > 0 else None,
                   **(extra or {})}
        (tmp / "build.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
