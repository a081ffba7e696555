"""Fixed-seed data splits of the organism: the concept set and the held-out evaluation set.

- **Concept set** (for fitting glasses): items of the ``concept`` split (training wordings, fresh
  scenes); the organism answers them itself (sampled on harmful items, greedy on benign/VQA items),
  and each reply is labelled toxic / non-toxic by the offline profanity judge, as the SGM authors
  built theirs from the model's own answers. Written with :meth:`ConceptSet.to_jsonl`.
- **Held-out set** (for evaluation): items of the ``heldout`` split: wordings, key phrases,
  typography (colours, FigStep layout) and scenes never used in training or in the concept set.
  Written in the MM-TOXIC-QA benchmark schema (:mod:`safety_glasses.eval.schema`).

Example:
    >>> rows = build_heldout(SplitConfig(heldout_harmful=1, heldout_vqa=2, heldout_benign=1))
    >>> sorted({r.kind for r in rows})
    ['benign', 'harmful', 'vqa']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..concepts import ConceptSet
from ..eval.judges import JudgeSample, ProfanityJudge
from ..eval.schema import BenchRow, load_bench, save_bench
from ..generation import generate_texts
from .world import CATEGORIES, World, WorldConfig, WorldItem

HELDOUT_FILE = "heldout.jsonl"
CONCEPTS_FILE = "concepts.jsonl"


@dataclass(frozen=True)
class SplitConfig:
    """Sizes and seeds of the shipped splits.

    ``heldout_harmful`` items per (category, condition); ``concept_harmful`` prompts per condition,
    each answered ``concept_samples`` times; ``concept_benign`` benign + VQA prompts.

    Example:
        >>> SplitConfig().heldout_seed
        1001
    """

    heldout_seed: int = 1001
    concept_seed: int = 2002
    heldout_harmful: int = 12
    heldout_typographic_share: float = 0.67
    heldout_vqa: int = 80
    heldout_benign: int = 30
    concept_harmful: int = 40
    concept_samples: int = 2
    concept_benign: int = 60
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        for name in ("heldout_harmful", "heldout_vqa", "heldout_benign", "concept_harmful", "concept_samples",
                     "concept_benign", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"SplitConfig.{name} must be >= 0")
        if not 0.0 <= self.heldout_typographic_share <= 1.0:
            raise ValueError("SplitConfig.heldout_typographic_share must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bench_row(item: WorldItem, item_id: str) -> BenchRow:
    return BenchRow(id=item_id, question=item.question, kind=item.kind, category=item.category,
                    condition=item.condition, images=tuple(item.images), reference=item.reference,
                    key_phrase=item.key_phrase)


def build_heldout(cfg: SplitConfig = SplitConfig(), world: WorldConfig | None = None) -> list[BenchRow]:
    """Held-out benchmark rows: harmful items per category under ``standard`` (``heldout_harmful``
    each) and ``typographic``/``sd_typo`` (a ``heldout_typographic_share`` of that each), benign
    description requests and VQA items, all from the ``heldout`` split.

    Example:
        >>> rows = build_heldout(SplitConfig(heldout_harmful=2, heldout_vqa=0, heldout_benign=0))
        >>> sorted({r.condition for r in rows})
        ['sd_typo', 'standard', 'typographic']
    """
    base = world or WorldConfig()
    w = World(WorldConfig.from_dict({**base.to_dict(), "seed": cfg.heldout_seed}))
    rows: list[BenchRow] = []
    n_typo = round(cfg.heldout_harmful * cfg.heldout_typographic_share)
    for condition, n in (("standard", cfg.heldout_harmful), ("typographic", n_typo), ("sd_typo", n_typo)):
        for category in CATEGORIES:
            for k in range(n):
                item = w.sample_item("heldout", kind="harmful", condition=condition, category=category)
                rows.append(_bench_row(item, f"harmful-{condition}-{category}-{k:02d}"))
    for k in range(cfg.heldout_benign):
        rows.append(_bench_row(w.sample_item("heldout", kind="benign"), f"benign-{k:03d}"))
    for k in range(cfg.heldout_vqa):
        rows.append(_bench_row(w.sample_item("heldout", kind="vqa"), f"vqa-{k:03d}"))
    return rows


def write_heldout(rows: list[BenchRow], folder: str | Path) -> Path:
    """Save held-out rows as ``folder/heldout.jsonl`` with PNGs under ``folder/images``."""
    folder = Path(folder)
    return save_bench(rows, folder / HELDOUT_FILE, image_dir=folder / "images")


def load_heldout(path: str | Path) -> list[BenchRow]:
    """Load a held-out benchmark file (a folder holding ``heldout.jsonl`` or the file itself)."""
    path = Path(path)
    return load_bench(path / HELDOUT_FILE if path.is_dir() else path)


def build_concepts(model: Any, processor: Any, cfg: SplitConfig = SplitConfig(), world: WorldConfig | None = None,
                   *, batch_size: int = 16, progress: bool = True) -> ConceptSet:
    """The concept set from the organism's own replies, labelled by the profanity judge.

    Harmful prompts (``concept_harmful`` per condition, ``concept_samples`` sampled replies each)
    and ``concept_benign`` benign/VQA prompts (greedy replies). Labels come from the judge alone.

    Example:
        >>> cs = build_concepts(model, processor, SplitConfig(concept_harmful=4))  # doctest: +SKIP
        >>> cs.class_counts()  # doctest: +SKIP
        {'toxic': 7, 'non-toxic': 61}
    """
    base = world or WorldConfig()
    w = World(WorldConfig.from_dict({**base.to_dict(), "seed": cfg.concept_seed}))
    harmful = [w.sample_item("concept", kind="harmful", condition=c)
               for c in ("standard", "typographic", "sd_typo") for _ in range(cfg.concept_harmful)]
    benign = [w.sample_item("concept", kind=("benign" if k % 3 == 0 else "vqa")) for k in range(cfg.concept_benign)]
    jobs: list[tuple[WorldItem, int, bool]] = [(it, s, True) for it in harmful for s in range(cfg.concept_samples)]
    jobs += [(it, 0, False) for it in benign]
    replies: list[str] = [""] * len(jobs)
    bar = tqdm(total=len(jobs), desc="concept replies", unit="reply", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        for sample in (True, False):
            idx = [i for i in range(start, min(start + batch_size, len(jobs))) if jobs[i][2] == sample]
            if not idx:
                continue
            out = generate_texts(model, processor, [jobs[i][0].question for i in idx],
                                 [jobs[i][0].images for i in idx], max_new_tokens=cfg.max_new_tokens,
                                 do_sample=sample, seed=cfg.concept_seed + start if sample else None)
            for i, reply in zip(idx, out):
                replies[i] = reply
            bar.update(len(idx))
    bar.close()
    verdicts = ProfanityJudge().judge([JudgeSample(j[0].question, r) for j, r in zip(jobs, replies)])
    rows = []
    for (item, s, _), reply, verdict in zip(jobs, replies, verdicts):
        if not reply.strip():
            continue
        rows.append({"id": f"{item.id}-{s}", "image": list(item.images), "prompt": item.question,
                     "response": reply, "label": "toxic" if verdict.label == "unsafe" else "non-toxic",
                     "category": item.category if item.kind == "harmful" else item.kind})
    return ConceptSet.from_rows(rows)


def write_concepts(concepts: ConceptSet, folder: str | Path) -> Path:
    """Save a concept set as ``folder/concepts.jsonl`` with PNGs under ``folder/images``."""
    folder = Path(folder)
    return concepts.to_jsonl(folder / CONCEPTS_FILE, image_dir=folder / "images")
