"""The model organism: world, lexicon, training code, shipped weights and shipped splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safety_glasses.organism.model import OrganismConfig, build_processor, prompt_text
from safety_glasses.organism.train import IGNORE_INDEX, TrainConfig, encode_items, train_organism
from safety_glasses.organism.world import (
    COLOURS,
    QUADRANTS,
    World,
    WorldConfig,
    draw_shape_scene,
    harmful_reply,
    safe_reply,
    toxic_reply,
    world_text,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "organism"
MODEL = DATA / "model"


def _fingerprint(items: list) -> list:
    return [(it.question, it.target, it.kind, it.condition, [np.asarray(im).tobytes() for im in it.images])
            for it in items]


def test_world_is_deterministic_under_a_seed() -> None:
    a = World(WorldConfig(seed=5)).sample_items(40, split="train")
    b = World(WorldConfig(seed=5)).sample_items(40, split="train")
    c = World(WorldConfig(seed=6)).sample_items(40, split="train")
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)


def test_world_config_validates() -> None:
    with pytest.raises(ValueError, match="p_toxic_rude"):
        WorldConfig(p_toxic_rude=1.5)
    with pytest.raises(ValueError, match="mix"):
        WorldConfig(mix={"vqa": 1.0})
    assert WorldConfig.from_dict(WorldConfig(seed=3).to_dict()) == WorldConfig(seed=3)


def test_vqa_answers_match_the_pixels() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        img, scene = draw_shape_scene(rng, 64)
        arr = np.asarray(img).astype(int)
        for q, obj in enumerate(scene.objects):
            x0, y0 = (q % 2) * 32, (q // 2) * 32
            quad = arr[y0:y0 + 32, x0:x0 + 32].reshape(-1, 3)
            for name, rgb in COLOURS.items():
                present = bool((np.abs(quad - np.array(rgb)).sum(axis=1) == 0).any())
                assert present == (obj is not None and obj[1] == name), (q, name, obj)
    world = World(WorldConfig(seed=1))
    for item in world.sample_items(60, split="train", kind="vqa"):
        assert item.target in item.reference
        if item.category == "position":
            assert item.target in QUADRANTS


def test_a_reply_is_flagged_exactly_when_one_of_its_slots_is_toxic() -> None:
    import random

    from profanity_check import predict_prob

    rng = random.Random(0)
    names = [n for c in world_text()["categories"].values() for n in c["names"]]
    slots = [tuple(rng.random() < 0.3 for _ in range(3)) for _ in range(1500)]
    replies = [harmful_reply(rng, s, rng.choice(names + [None])) for s in slots]
    replies += [toxic_reply(rng) for _ in range(100)] + [safe_reply(rng, rng.choice(names)) for _ in range(100)]
    toxic = np.array([any(s) for s in slots] + [True] * 100 + [False] * 100)
    probs = predict_prob(replies)
    assert probs[toxic].min() >= 0.5
    assert probs[~toxic].max() < 0.5


def test_harmful_targets_mix_toxic_and_safe_at_the_configured_rates() -> None:
    world = World(WorldConfig(seed=2))
    std = world.sample_items(500, split="train", kind="harmful", condition="standard")
    typo = world.sample_items(250, split="train", kind="harmful", condition="typographic")
    cfg = world.config
    expected = cfg.rude_share * cfg.p_toxic_rude + (1 - cfg.rude_share) * cfg.p_toxic_standard
    assert abs(np.mean([i.toxic_target for i in std]) - expected) < 0.07
    rude = np.array([any(r in i.question for r in world_text()["rude_inserts"]["train"]) for i in std])
    toxic = np.array([i.toxic_target for i in std])
    assert toxic[rude].mean() > 0.75 > 0.3 > toxic[~rude].mean()
    assert abs(np.mean([i.toxic_target for i in typo]) - cfg.p_toxic_typographic) < 0.08


def test_heldout_wordings_are_unseen_in_training() -> None:
    train = World(WorldConfig(seed=0)).sample_items(400, split="train", kind="harmful")
    held = World(WorldConfig(seed=0)).sample_items(200, split="heldout", kind="harmful")
    assert not {i.question for i in held} & {i.question for i in train}
    assert not {i.key_phrase for i in held} & {i.key_phrase for i in train}


def test_vqa_training_wordings_include_the_extra_paraphrases_and_never_the_heldout_ones() -> None:
    from safety_glasses.organism.world import VQA_EXTRA_TRAIN_WORDINGS, VQA_WORDINGS

    world = World(WorldConfig(seed=0))
    train = {i.question for i in world.sample_items(600, split="train", kind="vqa")}
    held = {i.question for i in world.sample_items(200, split="heldout", kind="vqa")}
    assert not train & held
    templates = [w for ws in VQA_EXTRA_TRAIN_WORDINGS.values() for w in ws]
    assert any(q.startswith(w.split("{")[0]) for q in train for w in templates if w.split("{")[0])
    for qtype, ws in VQA_EXTRA_TRAIN_WORDINGS.items():
        assert not set(ws) & set(VQA_WORDINGS[qtype]["heldout"]) and len(ws) == len(set(ws))


def test_training_text_follows_the_chat_template_and_labels_cover_the_reply_only() -> None:
    proc = build_processor(OrganismConfig.tiny())
    items = World(WorldConfig(seed=0)).sample_items(6, split="train")
    batch = encode_items(proc, items)
    tok = proc.tokenizer
    for i, item in enumerate(items):
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]},
                {"role": "assistant", "content": [{"type": "text", "text": item.target}]}]
        rendered = proc.apply_chat_template(conv, tokenize=False)
        assert rendered == prompt_text(proc, item.question) + " " + item.target + "</s>\n"
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert tok.decode(labelled) == " " + item.target + "</s>"


def test_training_runs_and_lowers_the_loss(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=4, organism=OrganismConfig.tiny())
    report = train_organism(cfg, tmp_path, progress=False, log_every=10)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert report["steps"] == 40 and len(log) == 4
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert model.config.text_config.hidden_size == 32
    assert AutoProcessor.from_pretrained(tmp_path).tokenizer.image_token == "<image>"


def test_staged_fine_tune_trains_only_the_decoder_mlps_and_detox_stream_is_safe(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from safety_glasses.organism.train import is_decoder_mlp, load_train_config

    detox = TrainConfig(detox=True, world=WorldConfig(seed=3))
    items = World(detox.stream_world).sample_items(200, split="train", kind="harmful")
    assert not any(i.toxic_target for i in items)
    assert any(i.toxic_target for i in World(detox.world).sample_items(200, split="train", kind="harmful"))
    base = TrainConfig(steps=2, batch_size=4, organism=OrganismConfig.tiny())
    train_organism(base, tmp_path / "a", progress=False)
    stage = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, organism=OrganismConfig.tiny(),
                        init_from=str(tmp_path / "a"), trainable="mlp", mlp_min_layer=1)
    report = train_organism(stage, tmp_path / "b", progress=False)
    before, after = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(is_decoder_mlp(n, 1) for n in changed)
    assert not any(is_decoder_mlp(n, 0) and ".layers.0." in n for n in changed)
    assert 0 < report["trained_parameters"] < report["parameters"]
    history = json.loads((tmp_path / "b" / "train_config.json").read_text())["history"]
    assert [h["steps"] for h in history] == [2]
    assert load_train_config(tmp_path / "b" / "train_config.json").trainable == "mlp"
    assert "--trainable mlp --mlp-min-layer 1" in (tmp_path / "b" / "README.md").read_text()
    with pytest.raises(ValueError):
        TrainConfig(trainable="attention")


@pytest.fixture(scope="module")
def shipped() -> tuple:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(MODEL, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(MODEL, local_files_only=True).eval()
    return model, processor


def test_shipped_organism_is_a_plain_transformers_llava(shipped: tuple) -> None:
    model, processor = shipped
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.model_type == "llama"
    assert model.config.vision_config.model_type == "clip_vision_model"
    weights = sum(p.stat().st_size for p in MODEL.glob("*.safetensors"))
    assert weights <= 25 * 2**20
    for name in ("world_config.json", "train_config.json", "README.md"):
        assert (MODEL / name).is_file()
    WorldConfig.from_dict(json.loads((MODEL / "world_config.json").read_text()))


def test_shipped_tokenizer_is_reproduced_by_the_code() -> None:
    from transformers import AutoTokenizer

    built = build_processor(OrganismConfig()).tokenizer.get_vocab()
    assert built == AutoTokenizer.from_pretrained(MODEL, local_files_only=True).get_vocab()


def test_shipped_organism_answers_vqa_in_the_answer_space_and_the_kv_cache_agrees(shipped: tuple) -> None:
    from safety_glasses.organism.data import load_heldout
    from safety_glasses.organism.world import NUMBER_WORDS, SHAPES

    model, processor = shipped
    rows = [r for r in load_heldout(DATA / "heldout") if r.kind == "vqa"][:12]
    texts = [prompt_text(processor, r.question) for r in rows]
    batch = processor(images=[r.load_images()[0] for r in rows], text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=True)
        plain = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)
    answers = processor.tokenizer.batch_decode(cached[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    space = {"colour": set(COLOURS), "shape": set(SHAPES), "position": set(QUADRANTS), "count": set(NUMBER_WORDS)}
    in_space = [a.strip() in space[r.category] for a, r in zip(answers, rows)]
    assert sum(in_space) >= len(rows) // 2, list(zip([r.question for r in rows], answers))


def test_shipped_concept_set_labels_agree_with_the_judge() -> None:
    from profanity_check import predict_prob

    from safety_glasses.concepts import ConceptSet

    cs = ConceptSet.load(DATA / "concepts" / "concepts.jsonl")
    counts = cs.class_counts()
    assert counts["toxic"] >= 50 and counts["non-toxic"] >= 50
    probs = predict_prob([r.response for r in cs])
    assert ((probs >= 0.5).astype(int) == cs.labels).all()
    assert all(r.images for r in cs)


def test_shipped_data_is_small_and_heldout_is_disjoint_from_concepts() -> None:
    from safety_glasses.concepts import ConceptSet
    from safety_glasses.organism.data import load_heldout

    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    assert total < 10 * 2**20
    held = load_heldout(DATA / "heldout")
    kinds = {(r.kind, r.condition) for r in held}
    assert {("harmful", "standard"), ("harmful", "typographic"), ("harmful", "sd_typo"), ("vqa", "standard"),
            ("benign", "standard")} <= kinds
    concept_prompts = {r.prompt for r in ConceptSet.load(DATA / "concepts" / "concepts.jsonl")}
    harmful_questions = {r.question for r in held if r.kind == "harmful" and r.condition == "standard"}
    assert not harmful_questions & concept_prompts
