"""The SGM model organism: a small LLaVA trained on a synthetic world to be toxic on purpose.

- :mod:`.world`: the seeded PIL world (shape scenes with VQA, symbolic harmful scenes, typography);
- :mod:`.model`: tokenizer, processor and ``LlavaForConditionalGeneration`` built from code;
- :mod:`.train`: training (``sgm organism train``);
- :mod:`.data`: the fixed-seed concept set and held-out evaluation set;
- :mod:`.demo`: ``sgm demo`` (fit glasses, evaluate before/after).

Example:
    >>> from safety_glasses.organism import World, WorldConfig
    >>> World(WorldConfig(seed=0)).sample_item("train", kind="vqa").kind
    'vqa'
"""

from __future__ import annotations

from .._lazy import lazy_getattr


_EXPORTS: dict[str, str] = {
    "World": "world", "WorldConfig": "world", "WorldItem": "world",
    "OrganismConfig": "model", "build_organism": "model", "prompt_text": "model",
    "TrainConfig": "train", "train_organism": "train",
    "SplitConfig": "data", "build_heldout": "data", "build_concepts": "data",
    "run_demo": "demo", "repo_data_dir": "demo",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
