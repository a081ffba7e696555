"""Universal visual adversarial image: PGD lowers the target loss on a tiny model and stays in budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from safety_glasses.eval.adversarial import (
    AdversarialConfig,
    AdversarialError,
    _encode_pairs,
    _norm_stats,
    _target_loss,
    attack_image,
    load_adversarial,
)
from safety_glasses.testing import tiny_vlm

TARGETS = ["you are a zzgrr and a hateful one", "zzgrr to all of you", "what a zzgrr scene"]


def test_pgd_lowers_target_loss_within_budget_and_round_trips(tmp_path: Path) -> None:
    model, proc = tiny_vlm("llava", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.lm_head.weight.requires_grad_(False)  # a mixed set of flags must come back as it was
    flags = [p.requires_grad for p in model.parameters()]
    cfg = AdversarialConfig(eps=24 / 255, steps=6, step_size=4 / 255, batch_size=1, batches_per_step=3, seed=1)
    result = attack_image(model, proc, TARGETS, config=cfg, progress=False)
    assert result.loss_after < result.loss_before
    assert result.history[-1] < result.history[0]
    assert result.checkpoints[0] == (0, result.loss_before) and result.checkpoints[-1][0] == 6
    assert result.loss_after == min(loss for _, loss in result.checkpoints)  # the best scored iterate is kept
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    assert [p.requires_grad for p in model.parameters()] == flags and any(flags) and not all(flags)
    arr = np.asarray(result.image, dtype=int)
    assert result.image.size == (32, 32) and np.abs(arr - 128).max() <= 24  # grey start, L-inf budget
    assert np.abs(arr - 128).max() > 0

    png = result.save(tmp_path / "adv")
    image, meta = load_adversarial(tmp_path / "adv")
    assert meta["config"]["eps"] == pytest.approx(24 / 255) and meta["targets"] == TARGETS
    assert np.array_equal(np.asarray(image), np.asarray(result.image)) and png.name == "adversarial_image.png"
    # the saved PNG, re-processed by the model's processor, reproduces the reported loss
    mean, std = _norm_stats(proc)
    batches = _encode_pairs(model, proc, cfg.prompts, TARGETS, image, batch_size=8)
    inputs, mask = batches[0]
    with torch.no_grad():
        reproduced = float(_target_loss(model, inputs, mask, inputs["pixel_values"][:1]))
    assert reproduced == pytest.approx(result.loss_after, abs=1e-4)
    assert mean.shape == std.shape == (1, 3, 1, 1)


def test_attack_refuses_bad_inputs() -> None:
    model, tok = tiny_vlm("llama", seed=0)
    with pytest.raises(AdversarialError, match="no image processor"):
        attack_image(model, tok, TARGETS, config=AdversarialConfig(steps=1), progress=False)
    with pytest.raises(AdversarialError, match="at least one"):
        attack_image(model, tok, ["  "], progress=False)
    with pytest.raises(ValueError, match="batches_per_step"):
        AdversarialConfig(batches_per_step=0)
    with pytest.raises(ValueError, match="init must be"):
        AdversarialConfig(init="zeros")
    with pytest.raises(AdversarialError, match="not found"):
        load_adversarial("/nonexistent/adv.png")
