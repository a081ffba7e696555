"""Rows -> model inputs: chat templates, the plain layout, left padding and token masks."""

from __future__ import annotations

import pytest
import torch

from safety_glasses.inputs import MASK_NAMES, build_text, encode_rows, image_token_ids, tokenizer_of
from safety_glasses.testing import tiny_concept_rows, tiny_image, tiny_tokenizer

from .conftest import TEXT_ARCHS, VLM_ARCHS

PROMPTS = ["describe it", "hello there, what do you see", "two pictures"]
RESPONSES = ["a cat on a red chair", "nothing", None]


def _images(arch: str) -> list[list]:
    if arch not in VLM_ARCHS:
        return [[], [], []]
    return [[tiny_image(0)], [], [tiny_image(1, (40, 48)), tiny_image(2)]]


def _expected_image_tokens(arch: str, model, batch) -> list[int] | None:
    per_image = {"llava": 16, "paligemma": 16, "idefics3": 4, "smolvlm": 4, "gemma3": 4, "mllama": 1}
    n_images = [1, 0, 2]
    if arch in per_image:
        return [per_image[arch] * n for n in n_images]
    if arch in ("qwen2_vl", "qwen2_5_vl"):
        counts = (batch.inputs["image_grid_thw"].prod(-1) // 4).tolist()
        return [counts[0], 0, counts[1] + counts[2]]
    return None  # llava_next: the count depends on the any-res grid; the forward pass checks it


@pytest.mark.parametrize("arch", VLM_ARCHS + TEXT_ARCHS)
def test_encode_rows_masks(tiny, arch):
    model, proc = tiny(arch)
    tok = tokenizer_of(proc)
    batch = encode_rows(proc, PROMPTS, _images(arch), RESPONSES, model_config=model.config)
    ids, att, masks = batch.inputs["input_ids"], batch.attention_mask, batch.masks
    assert set(masks) == set(MASK_NAMES) and all(m.shape == ids.shape and m.dtype == torch.bool for m in masks.values())
    # Left padding: every row ends at the last position and its tokens are one contiguous block.
    assert att[:, -1].all()
    for row in att:
        first = int(row.nonzero()[0])
        assert row[first:].all() and not row[:first].any()
    assert (ids[~att] == tok.pad_token_id).all()
    # Padding never enters a mask; the masks partition the real tokens.
    for name in MASK_NAMES:
        assert not (masks[name] & ~att).any(), name
    assert torch.equal(masks["text"] | masks["image"], att) and not (masks["text"] & masks["image"]).any()
    assert torch.equal(masks["prompt"] | masks["response"], att)
    assert not (masks["prompt"] & masks["response"]).any()
    # The response is a non-empty block ending at the last token, and decodes to the reply.
    for i, reply in enumerate(RESPONSES):
        resp = masks["response"][i]
        if reply is None:
            assert not resp.any()
            continue
        assert resp[-1] and resp[int(resp.nonzero()[0]):].all()
        assert tok.decode(ids[i][resp]).strip() == reply
        assert not masks["image"][i][resp].any()
    # The image mask counts exactly the placeholder tokens the model replaces with image features.
    expected = _expected_image_tokens(arch, model, batch)
    counts = masks["image"].sum(1).tolist()
    if arch in TEXT_ARCHS:
        assert counts == [0, 0, 0]
    elif expected is not None:
        assert counts == expected
    else:
        assert counts[1] == 0 and counts[0] > 0 and counts[2] > counts[0]
    with torch.no_grad():
        logits = model(**batch.inputs).logits  # the model itself checks placeholders against image features
    assert logits.shape[:2] == ids.shape


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl", "llava", "gpt2"])
def test_a_row_encodes_the_same_alone_and_in_a_batch(tiny, arch):
    model, proc = tiny(arch)
    imgs = _images(arch)
    batch = encode_rows(proc, PROMPTS, imgs, RESPONSES, model_config=model.config)
    alone = encode_rows(proc, PROMPTS[:1], imgs[:1], RESPONSES[:1], model_config=model.config)
    assert alone.attention_mask.all()
    n = alone.attention_mask.shape[1]
    assert torch.equal(batch.inputs["input_ids"][0, -n:], alone.inputs["input_ids"][0])
    for name in MASK_NAMES:
        assert torch.equal(batch.masks[name][0, -n:], alone.masks[name][0]), name
    with torch.no_grad():
        in_batch = model(**batch.inputs).logits[0, -n:]
        single = model(**alone.inputs).logits[0]
    resp = alone.masks["response"][0]
    assert torch.allclose(in_batch[resp], single[resp], atol=1e-4)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "llama", "gpt2"])
def test_generation_prompt_feeds_generate(tiny, arch):
    model, proc = tiny(arch)
    batch = encode_rows(proc, PROMPTS[:2], _images(arch)[:2], None, model_config=model.config)
    assert not batch.masks["response"].any()
    tok = tokenizer_of(proc)
    suffix = "ASSISTANT:" if arch == "gpt2" else "<|im_start|>assistant\n"
    assert tok.decode(batch.inputs["input_ids"][0]).endswith(suffix)
    out = model.generate(**batch.inputs, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    t = batch.inputs["input_ids"].shape[1]
    assert out.shape[0] == 2 and t < out.shape[1] <= t + 2
    assert torch.equal(out[:, :t], batch.inputs["input_ids"])


def test_empty_response_is_the_generation_prompt(tiny):
    model, proc = tiny("qwen2_vl")
    assert build_text(proc, "Look", 1, "") == build_text(proc, "Look", 1, None)
    batch = encode_rows(proc, ["Look"], [[tiny_image(0)]], [""], model_config=model.config)
    assert not batch.masks["response"].any()


def test_plain_layout_without_template(tiny):
    _, tok = tiny("gpt2")
    assert tok.chat_template is None
    assert build_text(tok, "Hi there", 0, "Hello") == "USER: Hi there\nASSISTANT: Hello"
    assert build_text(tok, "Hi there", 0, None) == "USER: Hi there\nASSISTANT:"
    model, proc = tiny("paligemma")
    text = build_text(proc, "What is it?", 2, "A dog", model_config=model.config)
    assert text == "USER: <image><image>\nWhat is it?\nASSISTANT: A dog"


def test_plain_layout_takes_image_token_from_config():
    tok = tiny_tokenizer(chat_template=None, extra_special_tokens=["<img>"])

    class Config:
        image_token_id = tok.convert_tokens_to_ids("<img>")

    class Pair:  # a processor-like pair without an ``image_token`` attribute
        tokenizer = tok
        image_processor = object()
        chat_template = None

    assert build_text(Pair(), "p", 1, None, model_config=Config()) == "USER: <img>\np\nASSISTANT:"
    assert image_token_ids(Pair(), Config()) == [Config.image_token_id]


def test_chat_template_layout(tiny):
    _, proc = tiny("qwen2_vl")
    text = build_text(proc, "Look", 1, "Nice")
    assert text.endswith("<|im_start|>assistant\nNice")
    assert text.count("<|image_pad|>") == 1 and text.index("<|image_pad|>") < text.index("Look")
    gen = build_text(proc, "Look", 1, None)
    assert gen.endswith("<|im_start|>assistant\n") and text.startswith(gen)
    _, tok = tiny("llama")  # a text-only template receives string content
    assert build_text(tok, "Hi", 0, "Yo") == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo"


def test_bad_inputs_raise(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match="image"):
        encode_rows(tok, ["a"], [[tiny_image(0)]], ["b"], model_config=model.config)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        encode_rows(tok, ["a", "b"], [[]], None, model_config=model.config)
    with pytest.raises(ValueError, match="responses"):
        encode_rows(tok, ["a", "b"], [[], []], ["x"], model_config=model.config)
    with pytest.raises(ValueError, match="at least one row"):
        encode_rows(tok, [], [], None, model_config=model.config)


def test_tokenizer_without_pad_token_is_left_unchanged(tiny):
    model, tok = tiny("gpt2")
    tok.pad_token = None
    batch = encode_rows(tok, ["a", "a much longer prompt"], [[], []], ["x", "y"], model_config=model.config)
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask.all()
    assert tok.pad_token is None and tok.padding_side == "left"


def test_text_only_batch_on_a_processor_that_requires_images(tiny):
    model, proc = tiny("paligemma")
    batch = encode_rows(proc, ["a", "bb cc"], [[], []], ["x", "y"], model_config=model.config)
    assert not batch.masks["image"].any() and batch.masks["response"].any(1).all()
    with torch.no_grad():
        assert torch.isfinite(model(**batch.inputs).logits).all()


def test_tiny_concept_rows_plant_only_in_toxic_rows():
    rows = tiny_concept_rows(10, seed=3, planted_token="qqx")
    assert [r["label"] for r in rows] == ["toxic", "non-toxic"] * 5
    for r in rows:
        text = r["prompt"] + " " + r["response"]
        assert ("qqx" in text) == (r["label"] == "toxic")
        assert r["image"].size == (32, 32)
    assert tiny_concept_rows(4, seed=3)[0]["image"].tobytes() == tiny_concept_rows(4, seed=3)[0]["image"].tobytes()
    assert all(r["image"] is None for r in tiny_concept_rows(2, with_images=False))
    with pytest.raises(ValueError):
        tiny_concept_rows(1)
