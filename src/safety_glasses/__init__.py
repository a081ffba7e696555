"""SGM: safety glasses for vision-language models (neuron-level detoxification, no training).

Example:
    >>> from safety_glasses import load_vlm, fit_glasses, Glasses
    >>> model, processor = load_vlm("llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device_map="auto")
    >>> glasses = fit_glasses(model, processor, "concepts.jsonl")
    >>> glasses.save_pretrained("glasses/")
    >>> with Glasses.from_pretrained("glasses/").apply(model):
    ...     ids = model.generate(**inputs)

Names are imported lazily so that ``import safety_glasses`` stays cheap.
"""

from __future__ import annotations

from ._lazy import lazy_getattr


__version__ = "0.1.0"

_EXPORTS = {
    "load_vlm": "models",
    "resolve_units": "models",
    "UnitSite": "models",
    "ConceptSet": "concepts",
    "ConceptRow": "concepts",
    "ConceptError": "concepts",
    "auroc": "expertise",
    "gini": "expertise",
    "fit_glasses": "fitting",
    "Glasses": "glasses",
    "GlassesMismatchError": "glasses",
    "GlassesError": "glasses",
    "record_activations": "recording",
    "generate_texts": "generation",
    "export_merged": "export",
    "export_peft_ia3": "export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return __all__
