"""The evaluation runner: batched generation under each defence configuration, judged, one JSONL line
per generation appended to ``samples.jsonl`` and flushed; a killed run resumes with no lost and no
duplicated samples.

Each line: ``key`` (``defense|condition|id|sample``), ``id``, ``category``, ``condition``, ``kind``,
``defense``, ``question`` (the benchmark's), ``prompt`` (the text sent, defences applied),
``response``, ``reference``, ``sampling``, ``seed``, ``verdicts`` ({judge_id: {label, score}}),
``nll``/``n_tokens`` (reply log-likelihood under the reference model), ``trace`` (what post-hoc
defences did) and, where an llm-judge grades them, ``vqa_score`` and ``fluency``.

Example:
    >>> SamplingConfig(max_new_tokens=8).do_sample
    False
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from .defenses import DefenseStack
from .judges import Judge, JudgeSample
from .schema import BenchRow

SAMPLES_NAME = "samples.jsonl"
RUN_NAME = "run.json"


class RunError(ValueError):
    """The output folder holds a different run, or the run's inputs are inconsistent."""


@dataclass(frozen=True)
class SamplingConfig:
    """Generation settings, recorded with every sample.

    ``num_samples`` generations per (row, defence); with ``do_sample`` each batch is seeded from
    ``seed`` and the batch's sample keys, so a batch is reproducible.

    Example:
        >>> SamplingConfig(do_sample=True, temperature=0.7, num_samples=3).num_samples
        3
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.num_samples > 1 and not self.do_sample:
            raise ValueError("num_samples > 1 needs do_sample=True (greedy decoding repeats itself)")


@dataclass(frozen=True)
class RunConfig:
    """Runner settings: batch size, sampling, and whether to score replies' perplexity.

    Example:
        >>> RunConfig(batch_size=4).sampling.max_new_tokens
        64
    """

    batch_size: int = 8
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    perplexity: bool = True
    greedy_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        bad = [k for k in self.greedy_kinds if k not in ("harmful", "benign", "vqa")]
        if bad:
            raise ValueError(f"greedy_kinds must name row kinds (harmful, benign, vqa), got {bad}")

    def sampling_for(self, kind: str) -> SamplingConfig:
        """The sampling settings of rows of ``kind``: greedy, one sample, for ``greedy_kinds``.

        Example:
            >>> cfg = RunConfig(sampling=SamplingConfig(do_sample=True, num_samples=2), greedy_kinds=("vqa",))
            >>> cfg.sampling_for("vqa").num_samples, cfg.sampling_for("harmful").num_samples
            (1, 2)
        """
        return self.greedy_sampling if kind in self.greedy_kinds else self.sampling

    @property
    def greedy_sampling(self) -> SamplingConfig:
        """``sampling`` made greedy (one sample); the settings of ``greedy_kinds`` rows."""
        return replace(self.sampling, do_sample=False, num_samples=1)


@dataclass
class RunStats:
    """What one call of :func:`run_generations` did."""

    new: int
    total: int
    seconds: float

    @property
    def samples_per_s(self) -> float | None:
        return self.new / self.seconds if self.new and self.seconds > 0 else None


def sample_key(defense: str, row: BenchRow, index: int) -> str:
    """The unique key of one generation.

    Example:
        >>> sample_key("none", BenchRow(id="a", question="q", kind="benign"), 0)
        'none|standard|a|0'
    """
    return f"{defense}|{row.condition}|{row.id}|{index}"


def read_samples(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Complete lines of a ``samples.jsonl`` (first occurrence of each key). A last line cut by a
    kill is ignored, and with ``repair=True`` cut off the file so appending continues cleanly; a
    corrupt line before the last one raises :class:`RunError`.

    Example:
        >>> read_samples("/nonexistent/samples.jsonl")
        []
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    samples: list[dict[str, Any]] = []
    seen: set[str] = set()
    good_end = 0
    pos = 0
    for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
        pos += len(raw)
        try:
            obj = json.loads(raw) if raw.endswith(b"\n") else None
        except json.JSONDecodeError:
            obj = None
        if obj is None:
            if pos < len(data):
                raise RunError(f"{path} line {lineno} is corrupt (not the last line, so not a cut write)")
            break  # the last line, cut by a kill
        good_end = pos
        key = obj.get("key")
        if key in seen:
            continue
        seen.add(key)
        samples.append(obj)
    if repair and good_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return samples


def _bench_hash(rows: Sequence[BenchRow]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.id, row.condition, row.kind, row.question], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _check_run(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    path = out_dir / RUN_NAME
    if path.is_file():
        old = json.loads(path.read_text())
        diffs = [k for k in fingerprint if old.get(k) != fingerprint[k]]
        if diffs:
            raise RunError(f"{out_dir} holds a different run ({diffs[0]} differs); use another --out")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2))
    tmp.replace(path)


def _batch_seed(base: int, keys: Sequence[str]) -> int:
    digest = hashlib.sha256(("|".join(keys) + f"#{base}").encode()).hexdigest()
    return int(digest[:8], 16)


@torch.no_grad()
def response_nll(model: Any, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
                 responses: Sequence[str]) -> list[tuple[float | None, int]]:
    """Summed negative log-likelihood and token count of each response given its prompt and images
    (``(None, 0)`` for an empty response).

    Example:
        >>> response_nll(model, processor, ["Hi"], [[]], ["Hello there"])  # doctest: +SKIP
        [(7.31, 2)]
    """
    from ..generation import to_model_inputs
    from ..inputs import encode_rows

    out: list[tuple[float | None, int]] = [(None, 0)] * len(responses)
    idx = [i for i, r in enumerate(responses) if r.strip()]
    if not idx:
        return out
    batch = encode_rows(processor, [prompts[i] for i in idx], [list(images[i]) for i in idx],
                        [responses[i] for i in idx], model_config=model.config)
    inputs = to_model_inputs(batch.inputs, model)
    logits = model(**inputs).logits.float()
    ids = inputs["input_ids"]
    mask = batch.masks["response"][:, 1:].to(logits.device)
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    nll = -(logp * mask).sum(dim=1)
    counts = mask.sum(dim=1)
    for j, i in enumerate(idx):
        out[i] = (float(nll[j]), int(counts[j])) if int(counts[j]) else (None, 0)
    return out


def set_torch_threads(threads: int | None) -> None:
    """Set torch's CPU threads (``None``: leave torch's default); ``threads`` must be >= 1.

    One thread suits small models on a busy machine: a second thread on a core that another job uses
    mostly spins (10x slower measured on 2 cores).

    Example:
        >>> set_torch_threads(None)  # no change
    """
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


class Generator:
    """Batched generation with recorded sampling settings (left padding via ``encode_rows``).

    Example:
        >>> gen = Generator(model, processor, SamplingConfig(max_new_tokens=8))  # doctest: +SKIP
        >>> gen(["What colour is the circle?"], [[img]])  # doctest: +SKIP
        ['red']
    """

    def __init__(self, model: Any, processor: Any, sampling: SamplingConfig, batch_size: int = 8) -> None:
        self.model, self.processor, self.sampling, self.batch_size = model, processor, sampling, batch_size
        self.seed: int | None = None

    def __call__(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]) -> list[str]:
        from ..generation import generate_texts

        s = self.sampling
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(generate_texts(
                self.model, self.processor, list(prompts[start:start + self.batch_size]),
                [list(i) for i in images[start:start + self.batch_size]], max_new_tokens=s.max_new_tokens,
                do_sample=s.do_sample, temperature=s.temperature, top_p=s.top_p,
                seed=self.seed if s.do_sample else None))
        return out


def run_generations(
    model: Any,
    processor: Any,
    rows: Sequence[BenchRow],
    stacks: Sequence[DefenseStack],
    judges: Sequence[Judge],
    out_dir: str | Path,
    *,
    config: RunConfig = RunConfig(),
    ppl_model: Any = None,
    ppl_processor: Any = None,
    llm_judge: Any = None,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
) -> RunStats:
    """Generate, judge and append one line per (defence, row, sample) to ``out_dir/samples.jsonl``.

    Lines already in the file are skipped (resume); a line cut by a kill is dropped and redone. A folder
    made with other settings, other weights (``weights_digest``) or other defences (what they do, glasses
    alphas included, not where they came from) is refused, so that no old sample is reused. Every
    defence is checked against the model (glasses' sites) before anything is written. ``ppl_model``/``ppl_processor`` score the replies' perplexity (default: ``model`` without
    defences). ``llm_judge`` (an :class:`~safety_glasses.eval.llm_judges.LLMJudge`) adds a fluency
    rating to each sample and grades vqa rows whose ``meta["grader"] == "llm"``.

    Example:
        >>> stats = run_generations(model, proc, rows, [DefenseStack([])], [make_judge("profanity")], "runs/x")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in stacks]
    if len(set(names)) != len(names):
        raise RunError(f"defence configuration listed twice: {names}")
    judge_ids = [j.judge_id for j in judges]
    if len(set(judge_ids)) != len(judge_ids):
        raise RunError(f"judge listed twice: {judge_ids}")
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        raise RunError("benchmark rows repeat an (id, condition) pair")
    sampling = config.sampling
    extra = {"greedy_kinds": list(config.greedy_kinds)} if config.greedy_kinds else {}
    from ..models import weights_digest

    for stack in stacks:  # glasses that do not fit fail now, before run.json or any sample is written
        stack.check_fits(model)
    _check_run(out, {"sampling": asdict(sampling), "judges": judge_ids, "perplexity": config.perplexity, **extra,
                     "weights_digest": weights_digest(model), "defenses": {s.name: s.fingerprint() for s in stacks},
                     **(fingerprint or {})})
    path = out / SAMPLES_NAME
    done = {s["key"] for s in read_samples(path, repair=True)}
    todo = [(stack, row, k) for stack in stacks for row in rows
            for k in range(config.sampling_for(row.kind).num_samples)
            if sample_key(stack.name, row, k) not in done]
    ref_model, ref_proc = (ppl_model, ppl_processor) if ppl_model is not None else (model, processor)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="sample", desc="eval", disable=not progress, dynamic_ncols=True)
    new = 0
    with path.open("a", encoding="utf-8") as fh:
        for stack in stacks:
            for greedy in (False, True):  # a batch shares one decoding mode
                items = [(row, k) for s, row, k in todo
                         if s is stack and (row.kind in config.greedy_kinds) == greedy]
                mode = config.greedy_sampling if greedy else sampling
                gen = Generator(model, processor, mode, config.batch_size)
                for b in range(0, len(items), config.batch_size):
                    batch = items[b:b + config.batch_size]
                    lines = _run_batch(gen, stack, batch, judges, mode, ref_model, ref_proc,
                                       config.perplexity, llm_judge)
                    fh.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                    new += len(lines)
                    bar.update(len(lines))
                    bar.set_postfix_str(stack.name)
    bar.close()
    return RunStats(new=new, total=len(done) + new, seconds=time.perf_counter() - start)


def _reference_text(row: BenchRow) -> str:
    """The reference answer as the llm grader reads it (MM-Vet's raw <AND>/<OR> string where kept)."""
    raw = row.meta.get("answer")
    return raw if isinstance(raw, str) and raw.strip() else " <OR> ".join(row.references)


def _run_batch(gen: Generator, stack: DefenseStack, batch: Sequence[tuple[BenchRow, int]],
               judges: Sequence[Judge], sampling: SamplingConfig, ref_model: Any, ref_proc: Any,
               perplexity: bool, llm_judge: Any) -> list[dict[str, Any]]:
    rows = [row for row, _ in batch]
    keys = [sample_key(stack.name, row, k) for row, k in batch]
    seed = _batch_seed(sampling.seed, keys)
    gen.seed = seed
    questions = [r.question for r in rows]
    prompts = [stack.prompt(q) for q in questions]
    images = [r.load_images() for r in rows]
    with stack.wear(gen.model):
        responses = gen(prompts, images)
        responses, traces = stack.after(gen, questions, images, responses)
    nll = (response_nll(ref_model, ref_proc, questions, images, responses) if perplexity
           else [(None, 0)] * len(rows))
    judge_samples = [JudgeSample(prompt=q, response=r, images=tuple(i), category=row.category,
                                 scenario=row.meta.get("scenario"))
                     for q, r, i, row in zip(questions, responses, images, rows)]
    verdicts: list[dict[str, Any]] = [{} for _ in rows]
    for judge in judges:
        for slot, v in zip(verdicts, judge.judge(judge_samples)):
            slot[v.judge_id] = {k: val for k, val in v.to_json().items() if k != "judge_id"}
    fluency: list[float | None] = [None] * len(rows)
    vqa_scores: list[float | None] = [None] * len(rows)
    if llm_judge is not None:
        fluency = llm_judge.fluency(responses)
        graded = [i for i, r in enumerate(rows) if r.kind == "vqa" and r.meta.get("grader") == "llm"]
        if graded:
            scores = llm_judge.grade_vqa([(rows[i].question, _reference_text(rows[i]), responses[i])
                                          for i in graded])
            for i, s in zip(graded, scores):
                vqa_scores[i] = s
    lines = []
    for i, (row, k) in enumerate(batch):
        line: dict[str, Any] = {
            "key": keys[i], "id": row.id, "category": row.category, "condition": row.condition,
            "kind": row.kind, "defense": stack.name, "sample": k, "question": row.question,
            "prompt": prompts[i], "response": responses[i],
            "reference": (list(row.references) if row.references else None),
            "sampling": asdict(sampling), "seed": seed if sampling.do_sample else None,
            "verdicts": verdicts[i], "nll": nll[i][0], "n_tokens": nll[i][1],
        }
        if row.meta.get("scenario"):
            line["scenario"] = row.meta["scenario"]
        if traces[i]:
            line["trace"] = traces[i]
        if fluency[i] is not None:
            line["fluency"] = fluency[i]
        if vqa_scores[i] is not None:
            line["vqa_score"] = vqa_scores[i]
        lines.append(line)
    return lines
