"""MM-TOXIC-QA: offline multimodal toxicity evaluation (benchmark schema, conditions, runner,
judges, metrics, defences, report).

Submodules are imported lazily so that ``import safety_glasses.eval`` stays cheap (no torch).

Example:
    >>> from safety_glasses.eval import render_typographic
    >>> render_typographic("a phrase").size
    (256, 256)
"""

from __future__ import annotations

from .._lazy import lazy_getattr


_EXPORTS: dict[str, str] = {
    "CONDITIONS": "conditions",
    "render_typographic": "conditions",
    "stack_sd_typo": "conditions",
    "wrap_text": "conditions",
    "derive_condition": "conditions",
    "expand_conditions": "conditions",
    "TYPO_PROMPT": "conditions",
    "SD_TYPO_PROMPT": "conditions",
    "FIGSTEP_PROMPT": "conditions",
    "BenchRow": "schema",
    "BenchError": "schema",
    "load_bench": "schema",
    "save_bench": "schema",
    "load_benchmark": "loaders",
    "load_mm_safetybench": "loaders",
    "load_beavertails_v": "loaders",
    "load_mm_vet": "loaders",
    "load_figstep": "figstep",
    "FIGSTEP_PAPER_PROMPT": "figstep",
    "filter_categories": "selection",
    "limit_items": "selection",
    "judge_scope": "judges",
    "AdversarialConfig": "adversarial",
    "attack_image": "adversarial",
    "load_adversarial": "adversarial",
    "Judge": "judges",
    "JudgeSample": "judges",
    "Verdict": "judges",
    "make_judge": "judges",
    "is_refusal": "judges",
    "DefenseContext": "defenses",
    "parse_defenses": "defenses",
    "SamplingConfig": "runner",
    "RunConfig": "runner",
    "run_generations": "runner",
    "read_samples": "runner",
    "compute_metrics": "metrics",
    "build_results": "report",
    "write_report": "report",
    "evaluate": "pipeline",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
