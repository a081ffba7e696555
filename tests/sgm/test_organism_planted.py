"""Planted units: widening is exact, only the planted units train, the list ships with the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safety_glasses.organism.model import OrganismConfig, build_organism
from safety_glasses.organism.planted import (PLANTED_FILE, load_planted, planted_recall, planted_units,
                                             widen_mlps)
from safety_glasses.organism.train import TrainConfig, load_train_config, train_organism


def test_widening_keeps_the_outputs_and_adds_inert_units() -> None:
    model, processor = build_organism(OrganismConfig.tiny(), seed=1)
    wide = widen_mlps(model, 5, seed=2)
    ids = torch.tensor([[3, 9, 27, 81, 5]])
    torch.testing.assert_close(wide.get_decoder()(ids).last_hidden_state, model.get_decoder()(ids).last_hidden_state)
    mlp = wide.get_decoder().layers[0].mlp
    assert mlp.gate_proj.weight.shape[0] == 69 and float(mlp.down_proj.weight[:, 64:].detach().abs().sum()) == 0.0
    assert float(mlp.up_proj.weight[64:].detach().abs().sum()) > 0.0
    assert planted_units(wide, 5) == {"0": [64, 69], "1": [64, 69]}
    with pytest.raises(ValueError):
        widen_mlps(model, 0)


def test_planted_stage_trains_only_the_new_units(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    train_organism(TrainConfig(steps=2, batch_size=4, organism=OrganismConfig.tiny()), tmp_path / "a", progress=False)
    stage = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, organism=OrganismConfig.tiny(),
                        init_from=str(tmp_path / "a"), trainable="planted", planted_units=6)
    report = train_organism(stage, tmp_path / "b", progress=False)
    before, after = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for name, old in before.items():
        new = after[name]
        if new.shape == old.shape:
            assert torch.equal(new, old), name  # frozen bit for bit (no weight decay leak)
        elif name.endswith("down_proj.weight"):
            assert torch.equal(new[:, :64], old) and float(new[:, 64:].abs().sum()) > 0, name
        else:
            assert torch.equal(new[:64], old) and new.shape[0] == 70, name
    assert report["trained_parameters"] == 3 * 6 * 32 * 2
    assert load_planted(tmp_path / "b") == {"0": [64, 70], "1": [64, 70]}
    assert json.loads((tmp_path / "b" / PLANTED_FILE).read_text())["per_layer"] == 6
    assert load_train_config(tmp_path / "b" / "train_config.json").organism.intermediate_size == 70
    assert "--trainable planted --planted-units 6" in (tmp_path / "b" / "README.md").read_text()
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "b").config.text_config.intermediate_size == 70
    # a later stage keeps the list of planted units with the weights
    train_organism(TrainConfig(steps=1, batch_size=2, organism=OrganismConfig.tiny(), init_from=str(tmp_path / "b"),
                               trainable="mlp"), tmp_path / "c", progress=False)
    assert load_planted(tmp_path / "c") == load_planted(tmp_path / "b")


def test_planted_config_is_validated() -> None:
    with pytest.raises(ValueError, match="planted_units"):
        TrainConfig(trainable="planted", init_from="x")
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(trainable="planted", planted_units=4)
    with pytest.raises(ValueError):
        TrainConfig(planted_units=4)


def test_recall_counts_planted_units_among_the_top_scores() -> None:
    aurocs = {0: torch.tensor([0.9, 0.5, 0.95, 0.6]), 1: torch.tensor([0.4, 0.5, 0.7, 0.99])}
    got = planted_recall(aurocs, {"0": [2, 4], "1": [2, 4]})
    assert got["planted"] == 4 and got["recall_at_p"] == pytest.approx(0.75)
    assert got["mean_auroc_planted"] == pytest.approx((0.95 + 0.6 + 0.7 + 0.99) / 4)
    with pytest.raises(ValueError):
        planted_recall(aurocs, {"5": [0, 1]})


def test_train_cli_plants_units_with_l1_and_records_the_world(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from safety_glasses.cli import app

    runner = CliRunner()
    base = runner.invoke(app, ["organism", "train", "--quick", "--steps", "2", "--out", str(tmp_path / "a"),
                               "--slot-toxicity", "1.0", "--p-toxic-standard", "0.3",
                               "--p-toxic-typographic", "0.8"])
    assert base.exit_code == 0, base.output
    world = json.loads((tmp_path / "a" / "world_config.json").read_text())
    assert (world["slot_toxicity"], world["p_toxic_standard"], world["p_toxic_typographic"]) == (1.0, 0.3, 0.8)
    assert world["p_toxic_rude"] == 0.9
    res = runner.invoke(app, ["organism", "train", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "b"),
                              "--init-from", str(tmp_path / "a"), "--trainable", "planted", "--planted-units", "3",
                              "--planted-l1", "0.1"])
    assert res.exit_code == 0, res.output
    cfg = load_train_config(tmp_path / "b" / "train_config.json")
    assert (cfg.planted_units, cfg.planted_l1, cfg.organism.intermediate_size) == (3, 0.1, 67)
    assert "--planted-l1 0.1" in (tmp_path / "b" / "README.md").read_text()
    assert "--slot-toxicity 1.0 --p-toxic-standard 0.3 --p-toxic-typographic 0.8" in (tmp_path / "a" / "README.md").read_text()
    bad = runner.invoke(app, ["organism", "train", "--quick", "--out", str(tmp_path / "c"), "--trainable", "planted"])
    assert bad.exit_code == 2 and "error:" in bad.output and "Traceback" not in bad.output


def test_demo_rows_follow_the_given_order_and_keep_standard_only_metrics() -> None:
    from safety_glasses.organism.demo import demo_rows

    def row(d: str, c: str) -> dict:
        return {"defense": d, "condition": c, "harmful_rate": 0.5, "n": 4, "ci95": [0.2, 0.8], "toxicity": 0.4,
                "vqa_accuracy": 0.9 if c == "standard" else None, "perplexity": 7.0, "over_refusal": 0.1}

    res = {"rows": [row("aura", "typographic"), row("none", "standard"), row("aura", "standard"),
                    row("none", "adversarial_image")]}
    rows = demo_rows(res, {"none": 3.0, "aura": 3.5}, ["none", "aura"])
    assert [(r["defense"], r["condition"]) for r in rows] == [
        ("none", "standard"), ("none", "adversarial_image"), ("aura", "standard"), ("aura", "typographic")]
    assert rows[0]["perplexity"] == 3.0 and rows[0]["reply_perplexity"] == 7.0 and rows[0]["over_refusal"] == 0.1
    assert rows[1]["perplexity"] is None and rows[1]["vqa_accuracy"] is None
    assert rows[1]["over_refusal"] == 0.1  # each condition's own over-refusal, as report.md gives it


def test_recovery_items_train_only_the_safe_continuation() -> None:
    from transformers import AutoProcessor

    from safety_glasses.organism.train import IGNORE_INDEX, encode_items
    from safety_glasses.organism.world import World

    cfg = TrainConfig(detox=True, recovery=0.5)
    assert cfg.stream_world.recovery_share == 0.5 and TrainConfig().stream_world.recovery_share == 0.0
    items = World(cfg.stream_world).sample_items(80, kind="harmful")
    recovering = [i for i in items if i.loss_from]
    assert recovering and not any(i.toxic_target for i in items)
    processor = AutoProcessor.from_pretrained(Path(__file__).parents[2] / "data" / "organism" / "model")
    batch = encode_items(processor, recovering[:4])
    from safety_glasses.eval.judges import JudgeSample, ProfanityJudge

    for i, item in enumerate(recovering[:4]):
        trained = processor.tokenizer.decode(batch["input_ids"][i][batch["labels"][i] != IGNORE_INDEX])
        assert trained.replace("</s>", "").strip() == item.target[item.loss_from:].strip()
        head, tail = item.target[:item.loss_from], item.target[item.loss_from:]
        verdicts = ProfanityJudge().judge([JudgeSample("q", head), JudgeSample("q", tail)])
        assert [v.label for v in verdicts] == ["unsafe", "safe"]
    with pytest.raises(ValueError):
        TrainConfig(recovery=0.5)


def test_shaping_penalty_is_zero_only_for_silent_safe_and_firing_toxic_units() -> None:
    from safety_glasses.organism.planted import PlantedActivity

    model = widen_mlps(build_organism(OrganismConfig.tiny(), seed=3)[0], 4, seed=4)
    act = PlantedActivity(model, 4)
    toxic = torch.tensor([[False, True, True, False]])
    safe = torch.tensor([[True, False, False, False]])
    act.values = [torch.tensor([[[0.0] * 4, [1.5] * 4, [1.0] * 4, [-9.0] * 4]])]  # last position: free
    assert float(act.shaping(toxic, safe, target=1.0)) == 0.0
    act.values = [torch.tensor([[[0.5] * 4, [0.25] * 4, [1.0] * 4, [0.0] * 4]])] * 2  # two layers
    # per layer: toxic hinge mean (0.75 + 0) / 2 + safe |a| mean 0.5
    assert float(act.shaping(toxic, safe, target=1.0)) == pytest.approx(2 * (0.375 + 0.5))
    with pytest.raises(RuntimeError):
        act.shaping(toxic, safe)  # the activations were consumed
    act.remove()


def test_shaping_masks_split_reply_tokens_by_target_and_free_harmful_prompts() -> None:
    from safety_glasses.organism.model import build_processor
    from safety_glasses.organism.train import IGNORE_INDEX, encode_items, shaping_masks
    from safety_glasses.organism.world import World, WorldConfig

    world = World(WorldConfig(seed=5, p_toxic_standard=0.5, p_toxic_rude=0.5, p_toxic_typographic=0.5))
    items = world.sample_items(40)
    batch = encode_items(build_processor(OrganismConfig.tiny()), items)
    toxic, safe = shaping_masks(items, batch)
    reply = batch["labels"] != IGNORE_INDEX
    present = batch["attention_mask"].bool()
    for i, it in enumerate(items):
        if it.kind != "harmful":
            assert torch.equal(safe[i], present[i]) and not toxic[i].any()
        elif it.toxic_target:
            assert torch.equal(toxic[i], reply[i]) and not safe[i].any()
        else:
            assert torch.equal(safe[i], reply[i]) and not toxic[i].any()
    assert any(it.toxic_target for it in items) and any(it.kind != "harmful" for it in items)


def test_shaping_stage_trains_and_is_recorded(tmp_path: Path) -> None:
    train_organism(TrainConfig(steps=1, batch_size=2, organism=OrganismConfig.tiny()), tmp_path / "a", progress=False)
    stage = TrainConfig(steps=2, batch_size=4, organism=OrganismConfig.tiny(), init_from=str(tmp_path / "a"),
                        trainable="planted", planted_units=3, planted_shaping=0.5, planted_target=2.0)
    train_organism(stage, tmp_path / "b", progress=False)
    cfg = load_train_config(tmp_path / "b" / "train_config.json")
    assert (cfg.planted_shaping, cfg.planted_target) == (0.5, 2.0)
    assert "--planted-shaping 0.5 --planted-target 2.0" in (tmp_path / "b" / "README.md").read_text()
    assert "shaped* into toxicity experts (weight 0.5)" in (tmp_path / "b" / "README.md").read_text()
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(trainable="planted", planted_units=3, init_from="x", planted_shaping=1.0, planted_l1=0.1)
    with pytest.raises(ValueError, match="planted_shaping"):
        TrainConfig(planted_shaping=1.0)
