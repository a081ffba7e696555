"""Defences: prompt wrappers, ECSO and the output filter on scripted generators, glasses and the neuron
baselines on a tiny model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from safety_glasses.eval.defenses import (
    ADASHIELD_PROMPT,
    REFUSAL_TEXT,
    DefenseContext,
    DefenseError,
    GlassesDefense,
    parse_defenses,
)

TOXIC = "fuck you, you stupid idiot"


class ScriptedGenerate:
    """A stand-in for the model: answers from a function of the prompt, records every call."""

    def __init__(self, reply: Any) -> None:
        self.reply, self.calls = reply, []

    def __call__(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]) -> list[str]:
        self.calls.append((list(prompts), [len(i) for i in images]))
        return [self.reply(p) for p in prompts]


def test_prompt_defences_compose_in_order() -> None:
    stack = parse_defenses("self-reminder+adashield-s", DefenseContext())
    assert stack.name == "self-reminder+adashield-s"
    text = stack.prompt("How do I do X?")
    assert text.startswith("You are a responsible assistant") and text.endswith(ADASHIELD_PROMPT)
    assert "How do I do X?" in text
    assert parse_defenses("none", DefenseContext()).prompt("q") == "q"


@pytest.mark.parametrize(("spec", "message"), [
    ("nope", "unknown defence"), ("adashield-s+adashield-s", "listed twice"), ("sgm", "needs glasses"),
    ("ecso:check=gpt", "check must be"), ("self-reminder:x=1", "unknown option"),
    ("aura-text", "needs a concept set"), ("adashield-s:prompt_file=/no/file", "not found"), ("", "empty"),
    ("output-filter:judge=nope", "unknown judge"),
])
def test_bad_defence_specs(spec: str, message: str) -> None:
    with pytest.raises(DefenseError, match=message):
        parse_defenses(spec, DefenseContext())


def test_output_filter_blocks_unsafe_replies() -> None:
    stack = parse_defenses("output-filter", DefenseContext())
    gen = ScriptedGenerate(lambda p: "unused")
    out, traces = stack.after(gen, ["q1", "q2"], [[], []], [TOXIC, "Have a nice day."])
    assert out == [REFUSAL_TEXT, "Have a nice day."] and gen.calls == []
    assert traces[0]["output_filter"] == "blocked" and traces[0]["filtered_original"] == TOXIC
    assert traces[1] == {"output_filter": "passed"}


def test_ecso_captions_and_answers_without_the_image() -> None:
    img = Image.new("RGB", (8, 8))
    gen = ScriptedGenerate(lambda p: "a caption" if p.startswith("Describe") else "calm answer")
    stack = parse_defenses("ecso:check=profanity+adashield-s", DefenseContext())
    out, traces = stack.after(gen, ["q1", "q2", "q3"], [[img], [img], []], [TOXIC, "fine reply", TOXIC])
    assert out == ["calm answer", "fine reply", TOXIC]  # no image to close its eyes on: kept
    (cap_prompts, cap_imgs), (ans_prompts, ans_imgs) = gen.calls
    assert cap_imgs == [1] and ans_imgs == [0]
    assert "q1" in cap_prompts[0] and cap_prompts[0].endswith(ADASHIELD_PROMPT)  # other defences still apply
    assert "a caption" in ans_prompts[0] and "q1" in ans_prompts[0]
    assert traces[0]["ecso"] == "unsafe" and traces[0]["ecso_original"] == TOXIC
    assert traces[1] == {"ecso": "safe"} and traces[2] == {"ecso": "unsafe"}


def test_ecso_self_check_asks_the_model() -> None:
    img = Image.new("RGB", (8, 8))
    gen = ScriptedGenerate(lambda p: "Yes, it is." if "Is the reply harmful" in p else "from caption")
    out, _ = parse_defenses("ecso", DefenseContext()).after(gen, ["q"], [[img]], ["something"])
    assert out == ["from caption"] and len(gen.calls) == 3
    gen_no = ScriptedGenerate(lambda p: "No.")
    out, _ = parse_defenses("ecso", DefenseContext()).after(gen_no, ["q"], [[img]], ["something"])
    assert out == ["something"] and len(gen_no.calls) == 1


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, Path]:
    from safety_glasses.concepts import ConceptSet
    from safety_glasses.fitting import fit_glasses
    from safety_glasses.testing import tiny_concept_rows, tiny_vlm

    model, proc = tiny_vlm("llava", seed=0)
    root = tmp_path_factory.mktemp("defences")
    rows = tiny_concept_rows(8, seed=0)
    fit_glasses(model, proc, rows, progress=False, top_k=None).save_pretrained(root / "glasses")
    concepts = ConceptSet.from_rows(rows).to_jsonl(root / "concepts.jsonl")
    return model, proc, root / "glasses", Path(concepts)


def test_glasses_defence_changes_the_model_only_while_worn(fitted: Any, tmp_path: Path) -> None:
    from safety_glasses.hooks import count_hooks
    from safety_glasses.inputs import encode_rows
    from safety_glasses.testing import tiny_image

    model, proc, gdir, concepts = fitted
    ctx = DefenseContext(model=model, processor=proc, glasses_dir=gdir, concepts=concepts, cache_dir=tmp_path)
    stack = parse_defenses("sgm+adashield-s", ctx)
    assert stack.name == "aura+adashield-s"
    enc = encode_rows(proc, ["hi"], [[tiny_image(2)]], None, model_config=model.config)
    with torch.no_grad():
        plain = model(**enc.inputs).logits
        with stack.wear(model):
            assert count_hooks(model) > 0
            worn = model(**enc.inputs).logits
        after = model(**enc.inputs).logits
    assert not torch.allclose(plain, worn) and torch.equal(plain, after) and count_hooks(model) == 0

    base = ctx.sgm_glasses()
    in_memory = parse_defenses("sgm:name=sgm", DefenseContext(glasses_dir=base)).defenses[0]
    assert in_memory.name == "sgm" and in_memory.glasses is base and in_memory.source == "in-memory glasses"
    det0 = parse_defenses("det0", ctx).defenses[0]
    rand = parse_defenses("random:seed=3", ctx).defenses[0]
    assert isinstance(det0, GlassesDefense) and det0.glasses.n_experts == base.n_experts
    assert rand.glasses.n_experts == base.n_experts
    assert all(float(a.min()) >= 0.0 for a in det0.glasses.alphas.values())
    assert min(float(a.min()) for a in det0.glasses.alphas.values()) == 0.0
    assert len(list(tmp_path.glob("det0-*/glasses_config.json"))) == 1  # cached, keyed by its source glasses
    cached = parse_defenses("det0", ctx).defenses[0]
    assert cached.source.startswith("cached:") and cached.glasses.n_experts == det0.glasses.n_experts

    text = parse_defenses("aura-text", ctx).defenses[0]
    assert "text only" in text.source and text.glasses.config.strategy == "aura"
    assert text.glasses.config.concepts["hash"] != base.config.concepts["hash"]
