"""The grafted VLM: a real, frozen language model that sees through a small trained vision side.

- :mod:`.build`: assemble ``LlavaForConditionalGeneration`` from a causal LM folder + a vision side, the
  LM digest, saving / loading the vision side (``sgm organism graft``);
- :mod:`.data`: the training stream from the organism's synthetic world (slot captions, one-word
  answers, descriptions; a single-object curriculum);
- :mod:`.train`: LLaVA's recipe with the LM frozen (``sgm organism graft train``), checkpointed;
- :mod:`.probe`: held-out grounding against the constant-answer-per-question-type baseline.

Example:
    >>> from safety_glasses.organism.graft import GraftConfig
    >>> GraftConfig().image_tokens
    16
"""

from __future__ import annotations

from ..._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "GraftConfig": "build", "build_graft": "build", "build_graft_from": "build", "assemble_graft": "build",
    "lm_digest": "build", "load_lm": "build", "save_vision_side": "build", "load_vision_side": "build",
    "read_vision_side": "build", "vision_state": "build", "freeze_lm": "build", "pick_image_token": "build",
    "GraftTrainConfig": "train", "train_graft": "train",
    "grounding_report": "probe",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
