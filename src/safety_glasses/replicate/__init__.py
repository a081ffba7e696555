"""Replications of published experiments on real weights: AurA (``sgm replicate aura``).

Example:
    >>> from safety_glasses.replicate import AuraReplicationConfig
    >>> AuraReplicationConfig().positions
    'response'
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "AuraReplicationConfig": "aura",
    "ReplicationError": "aura",
    "replicate_aura": "aura",
    "build_concepts": "aura",
    "evaluate_defenses": "aura",
    "load_prompt_set": "prompts",
    "read_toxigen": "prompts",
    "write_outputs": "report",
    "AURA_PUBLISHED": "report",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
