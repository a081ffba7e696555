"""The grafted VLM on a tiny ChatML LM built from a config: the LM stays bit-identical through building,
training and assembling; the vision side round-trips; the fast training loss equals the Llava forward;
the CLI answers --help and refuses bad input with one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from safety_glasses.organism.graft.build import (
    GraftConfig,
    assemble_graft,
    build_graft,
    freeze_lm,
    lm_digest,
    load_lm,
    load_vision_side,
    pick_image_token,
    read_vision_side,
    save_vision_side,
    vision_state,
)
from safety_glasses.organism.graft.data import encode_for_lm, prompt_prefix_ids, sample_examples, slot_ids
from safety_glasses.organism.graft.probe import constant_baseline, grounding_report, names_drawing
from safety_glasses.organism.graft.tiny import save_tiny_lm
from safety_glasses.organism.graft.train import GraftTrainConfig, PrefixLM, image_embeddings, train_graft

TINY = GraftConfig.tiny(image_token="<empty_output>")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def trained(lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graft-train")
    cfg = GraftTrainConfig(graft=TINY, pretrain_steps=3, align_steps=3, single_object_steps=1, batch_size=3,
                           pretrain_batch_size=4, lm_dtype="float32", checkpoint_every=2, log_every=1,
                           probe_every=10 ** 6, probe_vqa=4, probe_names=2, probe_reading=1)
    train_graft(cfg, lm_dir, out, progress=False)
    return out


def test_graft_holds_the_lm_bit_for_bit_and_freezes_it(lm_dir: Path) -> None:
    lm, _ = load_lm(lm_dir)
    model, processor = build_graft(lm_dir, TINY)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert lm_digest(model) == lm_digest(lm)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as in the LM
    assert processor.image_token == "<empty_output>"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for n in trainable)
    with torch.no_grad():  # the digest sees a single flipped value
        model.model.language_model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert lm_digest(model) != lm_digest(lm)


def test_image_token_must_be_one_unused_token(lm_dir: Path) -> None:
    _, tok = load_lm(lm_dir)
    assert pick_image_token(tok, None) == "<empty_output>"
    with pytest.raises(ValueError):
        pick_image_token(tok, "<|im_start|>")  # used by the chat template
    with pytest.raises(ValueError):
        pick_image_token(tok, "two words")


def test_prefix_cached_loss_equals_the_full_llava_forward(lm_dir: Path) -> None:
    model, processor = build_graft(lm_dir, TINY)
    n = TINY.image_tokens
    prefix = prompt_prefix_ids(processor, n)
    batch = encode_for_lm(processor, sample_examples(0, 1, 3), n, prefix)
    assert batch.image.sum(1).tolist() == [n] * 3
    eos = processor.tokenizer.eos_token_id
    for i in range(3):  # every answer ends with the end-of-turn token
        assert batch.ids[i][batch.target[i]][-1].item() == eos
    model.model.language_model.config._attn_implementation = "eager"
    with torch.no_grad():
        fast = PrefixLM(model, prefix).loss(batch, image_embeddings(model, batch.pixel_values))
        p = len(prefix)
        ids = torch.cat([torch.tensor([prefix] * 3), batch.ids], 1)
        mask = torch.cat([torch.ones(3, p, dtype=torch.long), batch.attention.long()], 1)
        labels = torch.full_like(ids, -100)
        target = torch.cat([torch.zeros(3, p, dtype=torch.bool), batch.target], 1)
        labels[target] = ids[target]
        full = model(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values, labels=labels).loss
    assert fast.item() == pytest.approx(full.item(), rel=1e-4)


def test_training_moves_only_the_vision_side_and_records_the_lm_digest(lm_dir: Path, trained: Path) -> None:
    lm, _ = load_lm(lm_dir)
    config, tensors, info = read_vision_side(trained)
    assert info["lm"]["digest"] == lm_digest(lm)
    assert config == TINY
    fresh, _ = build_graft(lm_dir, TINY)  # same seed: the initial vision side
    init = vision_state(fresh)
    assert set(tensors) == set(init)
    assert any(not torch.equal(tensors[k], init[k]) for k in tensors)
    lines = [json.loads(x) for x in (trained / "train_log.jsonl").read_text().splitlines()]
    stages = [x["stage"] for x in lines if "loss" in x]
    assert stages[:3] == ["pretrain"] * 3 and stages[-1] == "align"
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines if "loss" in x)
    assert info["recipe"]["align_steps"] == 3 and info["recipe"]["graft"]["image_token"] == "<empty_output>"


def test_vision_side_round_trips_and_assembles_a_loadable_vlm(lm_dir: Path, trained: Path, tmp_path: Path) -> None:
    from safety_glasses.generation import generate_texts
    from safety_glasses.models import load_vlm, resolve_units

    model, _ = build_graft(lm_dir, TINY)
    load_vision_side(model, trained)
    _, tensors, _ = read_vision_side(trained)
    assert all(torch.equal(vision_state(model)[k], v) for k, v in tensors.items())
    save_vision_side(model, TINY, tmp_path / "again")
    _, again, _ = read_vision_side(tmp_path / "again")
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)

    out = assemble_graft(lm_dir, trained, tmp_path / "vlm")
    vlm, processor = load_vlm(out)  # the project's own loader
    assert lm_digest(vlm) == lm_digest(load_lm(lm_dir)[0])
    assert all(torch.equal(vision_state(vlm)[k], v) for k, v in tensors.items())
    assert len(resolve_units(vlm, "act")) == 2  # the LM's decoder MLPs, never the vision tower's
    item = sample_examples(3, 0, 1)[0]
    reply = generate_texts(vlm, processor, [item.question], [[item.image]], max_new_tokens=3)
    assert isinstance(reply[0], str)
    with pytest.raises(FileExistsError):
        assemble_graft(lm_dir, trained, out)


def test_assembling_refuses_another_lm_and_leaves_nothing(trained: Path, tmp_path: Path) -> None:
    other = save_tiny_lm(tmp_path / "other-lm", seed=1)
    with pytest.raises(ValueError, match="digest"):
        assemble_graft(other, trained, tmp_path / "vlm")
    assert not (tmp_path / "vlm").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["other-lm"]  # no temporary folder left behind
    assert assemble_graft(other, trained, tmp_path / "vlm", allow_other_lm=True).is_dir()


def test_training_resumes_from_its_checkpoint(lm_dir: Path, tmp_path: Path) -> None:
    base = dict(graft=TINY, pretrain_steps=2, align_steps=0, pretrain_batch_size=2, lm_dtype="float32",
                checkpoint_every=1, log_every=1, probe_every=10 ** 6)
    train_graft(GraftTrainConfig(**base), lm_dir, tmp_path / "a", progress=False)
    state = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    report = train_graft(GraftTrainConfig(**base), lm_dir, tmp_path / "a", progress=False)
    assert report["steps"] == 2
    lines = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2]  # nothing trained twice
    with pytest.raises(ValueError, match="another configuration"):
        train_graft(GraftTrainConfig(**{**base, "pretrain_lr": 1e-4}), lm_dir, tmp_path / "a", progress=False)


def test_examples_and_slots_are_deterministic_and_sized(lm_dir: Path) -> None:
    _, tok = load_lm(lm_dir)
    a, b = sample_examples(5, 7, 6), sample_examples(5, 7, 6)
    assert [(x.question, x.answer) for x in a] == [(x.question, x.answer) for x in b]
    single = sample_examples(1, 0, 8, single_object=True, kind_mix={"vqa": 1.0, "benign": 0.0, "harmful": 0.0})
    assert all(sum(s != "" for s in ex.slots) == 1 for ex in single)
    for ex in a:
        assert len(slot_ids(ex, tok, 16)) == 16
    harmful = [ex for ex in sample_examples(2, 0, 30) if ex.kind == "harmful"]
    assert harmful and not any("insult" in ex.answer.lower() for ex in harmful)


def test_probe_scores_against_image_blind_baselines(lm_dir: Path, trained: Path) -> None:
    assert names_drawing("That is a loaded pistol.", "a gun") and not names_drawing("A red circle.", "a gun")
    assert constant_baseline(["red", "red", "blue"], ["c", "c", "c"]) == pytest.approx(2 / 3)
    model, processor = build_graft(lm_dir, TINY)
    load_vision_side(model, trained)
    report = grounding_report(model, processor, n_vqa=4, n_names=2, n_reading=1)
    assert set(report) == {"vqa", "names", "reading", "reading_train"}
    assert 0.0 <= report["vqa"]["accuracy"] <= 1.0 and report["vqa"]["baseline"] > 0
    assert report["vqa"]["n"] == 4 and sum(v["n"] for v in report["vqa"]["by_type"].values()) == 4


def test_cli_help_and_bad_input(lm_dir: Path, trained: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from safety_glasses.cli import app

    runner = CliRunner()
    for args in (["organism", "graft", "--help"], ["organism", "graft", "train", "--help"],
                 ["organism", "graft", "probe", "--help"], ["organism", "graft", "measure", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage" in res.output
    bad = [
        ["organism", "graft"],  # nothing to assemble
        ["organism", "graft", "--lm", str(tmp_path / "missing"), "--out", str(tmp_path / "o1"), "--vision", str(trained)],
        ["organism", "graft", "--lm", str(lm_dir), "--out", str(tmp_path / "o2"), "--vision", str(tmp_path)],
        ["organism", "graft", "train", "--lm", str(tmp_path / "missing"), "--out", str(tmp_path / "o3"), "--quick"],
        ["organism", "graft", "train", "--lm", str(lm_dir), "--out", str(tmp_path / "o4"), "--quick", "--threads", "0"],
        ["organism", "graft", "probe", "--model", str(tmp_path / "missing")],
        ["demo", "--real", "--lm", str(tmp_path / "missing"), "--out", str(tmp_path / "o5")],
        ["demo", "--real", "--lm", str(lm_dir), "--items", "0", "--out", str(tmp_path / "o6")],
    ]
    for args in bad:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "Traceback" not in res.output
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))
    res = runner.invoke(app, ["demo", "--help"])
    assert res.exit_code == 0 and "--real" in res.output and "--items" in res.output
    ok = runner.invoke(app, ["organism", "graft", "--lm", str(lm_dir), "--out", str(tmp_path / "vlm"),
                             "--vision", str(trained)])
    assert ok.exit_code == 0, ok.output
    assert "unchanged" in ok.output and (tmp_path / "vlm" / "model.safetensors").is_file()


class ParityJudge:
    """A deterministic stand-in safety judge for tiny random LMs: replies of even length are unsafe."""

    judge_id = "parity"
    kind = "safety"
    measures = "test judge: even reply length"

    def judge(self, samples):
        from safety_glasses.eval.judges import Verdict

        return [Verdict("unsafe" if len(s.response) % 2 == 0 else "safe", float(len(s.response) % 2 == 0), "parity")
                for s in samples]


def test_measure_fits_glasses_on_the_grafts_own_replies(lm_dir: Path, trained: Path, tmp_path: Path) -> None:
    from safety_glasses.organism.graft.measure import measure_graft

    vlm = assemble_graft(lm_dir, trained, tmp_path / "vlm")
    result = measure_graft(vlm, tmp_path / "m", quick=True, dtype="float32", conditions=("standard",),
                           defenses=("none", "sgm"), progress=False, judges=[ParityJudge(), "profanity"])
    saved = json.loads((tmp_path / "m" / "results.json").read_text())
    assert saved["concepts"] == result["concepts"] and saved["judges"] == ["parity", "profanity"]
    counts = result["concepts"]
    # the concepts-build procedure balances the classes; its replies and verdicts are kept
    assert counts["toxic"] == counts["non-toxic"] > 0
    build = json.loads((tmp_path / "m" / "concepts" / "build.json").read_text())
    assert build["judge"] == "parity" and (tmp_path / "m" / "concepts" / "replies.jsonl").is_file()
    concept_ids = {json.loads(line)["bench_id"] for line in
                   (tmp_path / "m" / "concepts" / "concepts.jsonl").read_text().splitlines()}
    heldout_ids = {r["id"] for r in map(json.loads, (Path(saved["config"]["heldout"]) / "heldout.jsonl")
                                          .read_text().splitlines())}
    assert concept_ids and not concept_ids & heldout_ids  # concept rows come from the world's concept split
    names = {r["defense"] for r in result["rows"]}
    assert names == {"none", "aura"} and (tmp_path / "m" / "glasses-aura" / "glasses_config.json").is_file()
    assert all(r["condition"] == "standard" for r in result["rows"])
    assert all("profanity_rate" in r for r in result["rows"])
    assert result["timings"]["eval_s"] >= 0 and result["throughput"]["eval_new_samples"] > 0
    with pytest.raises(ValueError, match="unknown condition"):
        measure_graft(vlm, tmp_path / "m2", quick=True, conditions=("nope",))


def test_measure_without_a_toxic_reply_evaluates_only_the_glasses_free_defences(lm_dir: Path, trained: Path,
                                                                                 tmp_path: Path) -> None:
    from safety_glasses.organism.graft.measure import measure_graft

    class SafeJudge(ParityJudge):
        judge_id = "all-safe"

        def judge(self, samples):
            from safety_glasses.eval.judges import Verdict

            return [Verdict("safe", 0.0, "all-safe") for _ in samples]

    vlm = assemble_graft(lm_dir, trained, tmp_path / "vlm")
    result = measure_graft(vlm, tmp_path / "m", quick=True, dtype="float32", conditions=("standard",),
                           defenses=("none", "sgm", "adashield-s"), progress=False, judges=[SafeJudge()])
    assert result["glasses_skipped"] and "0 toxic" in result["glasses_skipped"]
    assert {r["defense"] for r in result["rows"]} == {"none", "adashield-s"}
    assert not (tmp_path / "m" / "concepts" / "concepts.jsonl").exists()
    # a top-up concept set (e.g. the LM's own text continuations) joins in and the glasses get fitted
    topup = tmp_path / "topup.jsonl"
    topup.write_text("".join(json.dumps({"id": f"t{i}", "prompt": "You are", "response": text, "label": label}) + "\n"
                             for i, (text, label) in enumerate([("a stupid idiot", "toxic"), ("a dumb moron", "toxic"),
                                                                ("a kind friend", "non-toxic"),
                                                                ("a helpful person", "non-toxic")])))
    topped = measure_graft(vlm, tmp_path / "m3", quick=True, dtype="float32", conditions=("standard",),
                           defenses=("none", "sgm", "aura-text"), progress=False, judges=[SafeJudge()], topup=topup)
    assert topped["glasses_skipped"] is None and topped["concepts"] == {"toxic": 2, "non-toxic": 2}
    assert topped["concepts_own"] == {"toxic": 0, "non-toxic": 0} and "topped up" in topped["concepts_source"]
    assert {r["defense"] for r in topped["rows"]} == {"none", "aura", "aura-text"}
    assert (tmp_path / "m3" / "concepts-merged.jsonl").is_file()


def test_real_demo_plumbing_on_a_tiny_graft(lm_dir: Path, trained: Path, tmp_path: Path) -> None:
    from safety_glasses.organism.graft.demo_real import RealDemoConfig, run_real_demo

    cfg = RealDemoConfig(lm=str(lm_dir), items=2, concept_harmful=2, concept_samples=2, concept_benign=2,
                         max_new_tokens=4, dtype="float32", aura=False,
                         defenses=("none", "sgm", "aura-text", "det0", "damp", "random"))
    result = run_real_demo(tmp_path / "demo", cfg, vision=trained, progress=False, min_class=1,
                           judges=[ParityJudge(), "profanity"])
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["parts"] == {"graft": str(tmp_path / "demo" / "graft" / "results.json")}
    assert (tmp_path / "demo" / "graft-vlm" / "config.json").is_file()
    assert (tmp_path / "demo" / "graft" / "results.png").is_file()
    rows = saved["graft"]["rows"]
    assert {r["condition"] for r in rows} == {"standard", "typographic"}
    assert {r["defense"] for r in rows} == {"none", "aura", "aura-text", "det0", "damp", "random"}
    assert all(r["n"] == 2 for r in rows)  # items per (kind, condition) group, one sample each
    targets = saved["targets"]
    assert set(targets) >= {"harmful_rate_without_glasses", "relative_cut_by_aura", "vqa_within_3_points",
                            "sgm_below_every_neuron_baseline", "over_refusal"}
    assert set(targets["sgm_below_every_neuron_baseline"]["value"]) == {"typographic"}
    assert saved["timings"]["total_s"] >= saved["timings"]["graft_s"] >= 0
    with pytest.raises(ValueError, match="jailbreak"):
        RealDemoConfig(conditions=("standard",))


def test_targets_are_checked_against_the_rows() -> None:
    from safety_glasses.organism.graft.demo_real import check_targets

    def row(d: str, c: str, h: float, v: float | None = None) -> dict:
        return {"defense": d, "condition": c, "harmful_rate": h, "vqa_accuracy": v, "over_refusal": 0.0}

    rows = [row("none", "standard", 0.1, 0.50), row("aura", "standard", 0.05, 0.40),
            row("aura", "typographic", 0.1), *(row(b, "typographic", 0.2) for b in ("aura-text", "det0", "damp")),
            row("random", "typographic", 0.1)]
    t = check_targets(rows, [{"defense": "none", "toxicity_mean": 0.3, "perplexity": 10.0},
                             {"defense": "aura", "toxicity_mean": 0.1, "perplexity": 12.0}])
    assert t["harmful_rate_without_glasses"]["met"] is False
    assert t["relative_cut_by_aura"]["value"] == pytest.approx(0.5) and t["relative_cut_by_aura"]["met"] is False
    assert t["vqa_within_3_points"]["met"] is False
    assert t["sgm_below_every_neuron_baseline"] == {"value": {"typographic": False}, "met": False,
                                                     "target": "in at least one jailbreak condition"}
    assert t["aura_text_toxicity_cut"]["met"] is True and t["aura_text_perplexity_change"]["met"] is False


def test_a_second_stage_starts_from_the_first_ones_vision_side(lm_dir: Path, trained: Path, tmp_path: Path) -> None:
    cfg = GraftTrainConfig(graft=TINY, init_from=str(trained), pretrain_steps=0, align_steps=1, batch_size=2,
                           lm_dtype="float32", probe_every=10 ** 6, probe_vqa=0, probe_names=0, probe_reading=0)
    train_graft(cfg, lm_dir, tmp_path / "s2", progress=False)
    _, first, _ = read_vision_side(trained)
    _, second, info = read_vision_side(tmp_path / "s2")
    assert info["recipe"]["init_from"] == str(trained)
    # one align step moved the first stage's weights a little; they did not restart from a fresh init
    fresh, _ = build_graft(lm_dir, TINY)
    init = vision_state(fresh)
    key = "model.multi_modal_projector.linear_2.weight"
    assert (second[key] - first[key]).abs().max() < (second[key] - init[key]).abs().max()
    with pytest.raises(FileNotFoundError):
        train_graft(GraftTrainConfig(**{**cfg.__dict__, "init_from": str(tmp_path / "none")}), lm_dir,
                    tmp_path / "s3", progress=False)


def test_a_budgeted_run_stops_early_on_the_full_schedule(lm_dir: Path, tmp_path: Path) -> None:
    from safety_glasses.organism.graft.train import _lr

    base = dict(graft=TINY, pretrain_steps=4, align_steps=0, pretrain_batch_size=2, lm_dtype="float32",
                checkpoint_every=1, log_every=1, probe_every=10 ** 6, probe_vqa=0, probe_names=0, probe_reading=0)
    report = train_graft(GraftTrainConfig(**base, stop_after=2), lm_dir, tmp_path / "b", progress=False)
    assert report["steps"] == 2
    lines = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines() if "loss" in x]
    full = GraftTrainConfig(**base)
    assert [x["step"] for x in lines] == [1, 2] and lines[-1]["lr"] == pytest.approx(_lr(full, 1))
    with pytest.raises(ValueError, match="stop_after"):
        GraftTrainConfig(**base, stop_after=9)


def test_text_twins_are_the_lms_own_replies_and_enter_training(lm_dir: Path, tmp_path: Path) -> None:
    from safety_glasses.organism.graft.teacher import caption_text, load_teacher, teacher_items

    cfg = GraftTrainConfig(graft=TINY, pretrain_steps=0, align_steps=2, single_object_steps=0, batch_size=4,
                           teacher_examples=6, teacher_share=0.5, lm_dtype="float32", probe_every=10 ** 6,
                           probe_vqa=0, probe_names=0, probe_reading=0)
    train_graft(cfg, lm_dir, tmp_path / "t", progress=False)
    records = load_teacher(tmp_path / "t" / "teacher.jsonl")
    items = teacher_items(cfg.seed + 2, 6)
    assert [r["index"] for r in records] == list(range(6))
    assert all(r["caption"] == caption_text(it) and r["question"] == it.question for r, it in zip(records, items))
    assert all(isinstance(r["ended"], bool) for r in records)
    with pytest.raises(ValueError, match="together"):
        GraftTrainConfig(teacher_examples=4)


def test_the_shipped_vision_side_is_complete_and_names_its_lm() -> None:
    from safety_glasses.organism.graft.cli import shipped_vision_dir

    config, tensors, info = read_vision_side(shipped_vision_dir())
    assert config == GraftConfig() and config.image_tokens == 16
    assert len(info["lm"]["digest"]) == 64 and info["lm"]["hidden_size"] == 576 and info["lm"]["vocab_size"] == 49152
    proj = tensors["model.multi_modal_projector.linear_2.weight"]
    assert proj.shape == (576, 576) and torch.isfinite(proj).all()
    assert [h["stage"] for h in info["history"]] == [1, 2, 3] and info["stage"] == 4
    assert info["recipe"]["init_from"].startswith("stage 3")
