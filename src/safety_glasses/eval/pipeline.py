"""``evaluate``: benchmark rows x conditions x defence configurations -> generations -> judges ->
metrics -> ``results.json``, ``report.md`` and PNGs in one call (what ``sgm eval`` and the demo run).

Example:
    >>> from safety_glasses.testing import tiny_vlm
    >>> model, proc = tiny_vlm("llava")  # doctest: +SKIP
    >>> rows = load_bench("tests/sgm/fixtures/eval/bench.jsonl")  # doctest: +SKIP
    >>> results = evaluate(model, proc, rows, "runs/x", defenses=["none", "adashield-s"])  # doctest: +SKIP
    >>> results["by_defense"]["none"]["harmful_rate"]["overall"]  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from .adversarial import AdversarialConfig, attack_image, load_adversarial
from .conditions import expand_conditions
from .defenses import DefenseContext, DefenseStack, parse_defenses
from .judges import Judge, RefusalJudge, judge_scope, language_only_warning, make_judge
from .report import build_results, write_report
from .runner import RunConfig, _bench_hash, read_samples, run_generations, sample_key
from .schema import BenchError, BenchRow

ADV_DIR = "adversarial"


def _targets_from_concepts(concepts: Any) -> list[str]:
    from ..concepts import ConceptSet

    rows = concepts if isinstance(concepts, ConceptSet) else ConceptSet.load(concepts)
    return [row.response for row in rows if row.label == 1 and row.response.strip()]


def resolve_adversarial_image(model: Any, processor: Any, out_dir: Path, *, image: str | Path | Image.Image | None,
                              targets: Sequence[str] | None, config: AdversarialConfig,
                              progress: bool) -> tuple[Image.Image, dict[str, Any]]:
    """The run's universal adversarial image: the one given, the one already in ``out_dir``
    (resume), or a new one made by PGD on ``targets`` and saved under ``out_dir/adversarial``.

    Example:
        >>> img, meta = resolve_adversarial_image(model, proc, Path("runs/x"), image=None,
        ...                                       targets=["insult"], config=AdversarialConfig(steps=5),
        ...                                       progress=False)  # doctest: +SKIP
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB"), {"source": "in-memory image"}
    if image is not None:
        img, meta = load_adversarial(image)
        return img, {**meta, "source": str(image)}
    saved = out_dir / ADV_DIR / "adversarial_image.png"
    if saved.is_file():
        img, meta = load_adversarial(saved)
        return img, {**meta, "source": str(saved)}
    if not targets:
        raise BenchError("condition 'adversarial_image' needs --adv-image or target replies "
                         "(--adv-targets FILE, or --concepts whose toxic responses are used)")
    result = attack_image(model, processor, targets, config=config, progress=progress)
    result.save(out_dir / ADV_DIR)
    meta = {"config": asdict(config), "loss_before": result.loss_before, "loss_after": result.loss_after,
            "n_targets": len(result.targets), "source": str(saved)}
    return result.image, meta


def evaluate(
    model: Any,
    processor: Any,
    rows: Sequence[BenchRow],
    out_dir: str | Path,
    *,
    defenses: Sequence[str | DefenseStack] = ("none",),
    judges: Sequence[str | Judge] = ("profanity",),
    conditions: Sequence[str] | None = None,
    glasses_dir: Any = None,
    concepts: Any = None,
    run_config: RunConfig = RunConfig(),
    adversarial_image: str | Path | Image.Image | None = None,
    adversarial_targets: Sequence[str] | None = None,
    adversarial_config: AdversarialConfig = AdversarialConfig(),
    typo_style: str = "mmsb",
    ppl_model: Any = None,
    ppl_processor: Any = None,
    judge_device: str = "cpu",
    n_boot: int = 1000,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
    warn_language_only: bool = True,
) -> dict[str, Any]:
    """Run the whole evaluation and write its outputs to ``out_dir``; returns the results object.

    ``defenses``: configurations (``none``, ``sgm``, ``sgm+adashield-s``, ``aura-text``, ...; see
    :mod:`safety_glasses.eval.defenses`) or ready :class:`DefenseStack` objects. ``glasses_dir``: the
    glasses of ``sgm`` (a folder or a ``Glasses`` object). ``judges``: specs or judge objects; the first safety judge
    is the primary one (harmful rate); a ``refusal`` judge is added when absent (over-refusal); an
    ``llm-judge`` among them also rates fluency and grades rows with ``meta["grader"] == "llm"``.
    ``conditions``: keep/derive these conditions (default: the rows as given). Rerunning with the same
    ``out_dir`` resumes.

    Warnings (issued with :func:`warnings.warn` and kept in ``results["warnings"]``): only language
    judges (profanity, toxicity) scoring harmful requests (``warn_language_only=False`` where the
    harm studied *is* offensive language, as in the organism demo), and defences whose replies are
    mostly empty.

    Example:
        >>> results = evaluate(model, proc, rows, "runs/x", defenses=["none", "sgm"], glasses_dir="g/")  # doctest: +SKIP
    """
    out = Path(out_dir)
    if not rows:
        raise BenchError("the benchmark has no rows")
    built: list[Judge] = [make_judge(j, device=judge_device) if isinstance(j, str) else j for j in judges]
    if not any(j.kind == "refusal" for j in built):
        built.append(RefusalJudge())
    safety = [j.judge_id for j in built if j.kind == "safety"]
    if not safety:
        raise BenchError("at least one safety judge is needed (e.g. --judge profanity)")
    refusal_id = next(j.judge_id for j in built if j.kind == "refusal")
    llm_judge = next((j for j in built if j.judge_id.startswith("llm-judge:")), None)
    notes: list[str] = []
    language_note = language_only_warning(built, any(r.kind == "harmful" for r in rows))
    if warn_language_only and language_note:
        notes.append(language_note)
        warnings.warn(language_note, UserWarning, stacklevel=2)

    ctx = DefenseContext(model=model, processor=processor, glasses_dir=glasses_dir, concepts=concepts,
                         cache_dir=out / "baselines", batch_size=run_config.batch_size, progress=progress,
                         judge_device=judge_device)
    if glasses_dir is not None:  # glasses that do not fit fail before any attack, baseline or sample
        ctx.sgm_glasses().check_compatible(model)
    out.mkdir(parents=True, exist_ok=True)
    adv_meta: dict[str, Any] | None = None
    selected = list(rows)
    if conditions:
        adv_img = None
        if "adversarial_image" in conditions and not any(r.condition == "adversarial_image" for r in rows):
            targets = list(adversarial_targets or []) or (_targets_from_concepts(concepts) if concepts else [])
            adv_img, adv_meta = resolve_adversarial_image(model, processor, out, image=adversarial_image,
                                                          targets=targets, config=adversarial_config,
                                                          progress=progress)
        selected = expand_conditions(rows, conditions, adversarial_image=adv_img, typo_style=typo_style)
        if not selected:
            raise BenchError(f"no benchmark rows under the conditions {', '.join(conditions)}")

    stacks = [d if isinstance(d, DefenseStack) else parse_defenses(d, ctx) for d in dict.fromkeys(defenses)]

    from ..models import model_identity

    identity = model_identity(model)
    stats = run_generations(model, processor, selected, stacks, built, out, config=run_config,
                            ppl_model=ppl_model, ppl_processor=ppl_processor, llm_judge=llm_judge,
                            fingerprint={"model_fingerprint": identity.get("fingerprint"),
                                         "model_path": identity.get("name_or_path")}, progress=progress)
    wanted = {sample_key(s.name, r, k) for s in stacks for r in selected
              for k in range(run_config.sampling_for(r.kind).num_samples)}
    samples = [s for s in read_samples(out / "samples.jsonl") if s["key"] in wanted]
    config = {
        "model": identity,
        "defenses": {s.name: s.describe() for s in stacks},
        "judges": [j.judge_id for j in built],
        "conditions": list(conditions) if conditions else sorted({r.condition for r in selected}),
        "n_rows": len(selected),
        "bench_hash": _bench_hash(selected),
        "batch_size": run_config.batch_size,
        "sampling": asdict(run_config.sampling),
        "greedy_kinds": list(run_config.greedy_kinds),
        "perplexity_reference": "separate model" if ppl_model is not None else "same model, no defence",
        "typo_style": typo_style,
        "adversarial": adv_meta,
        **(extra_config or {}),
    }
    results = build_results(samples, safety_judges=safety, refusal_judge=refusal_id,
                            defenses=[s.name for s in stacks], config=config, n_boot=n_boot,
                            seed=run_config.sampling.seed,
                            throughput={"new_samples": stats.new, "seconds": stats.seconds,
                                        "samples_per_s": stats.samples_per_s, "total_samples": stats.total},
                            judge_scopes={j.judge_id: judge_scope(j) for j in built}, warnings=notes)
    write_report(out, results)
    for note in results["warnings"][len(notes):]:  # the flags of this run's replies
        warnings.warn(note, UserWarning, stacklevel=2)
    return results
