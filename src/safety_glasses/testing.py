"""Tiny, offline, random vision-language models for tests and demos.

Everything here is built from configs and code: a byte-level BPE tokenizer trained in-process on a small
built-in corpus, image processors with explicit small arguments, and models with a handful of hidden units.
Nothing touches the network and nothing here is meant to produce sensible text.

Example:
    >>> from safety_glasses.testing import tiny_vlm
    >>> model, processor = tiny_vlm("llava")
    >>> model.config.text_config.num_hidden_layers
    2
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from PIL import Image

from safety_glasses.models import build_processor

__all__ = [
    "TINY_ARCHS",
    "CHAT_TEMPLATE",
    "chat_template_for",
    "tiny_tokenizer",
    "tiny_vlm",
    "tiny_image",
    "tiny_concept_rows",
]

_CORPUS = """
The quick brown fox jumps over the lazy dog. A picture shows a cat sitting on a red chair.
Describe the image in one sentence. What is in this picture? The photo shows a street at night.
Please answer the question about the image. I am sorry, I cannot help with that request.
You are a helpful assistant. The user asked a question and the assistant gave a polite answer.
Here is a short story about a garden with flowers, trees, birds and a small river.
The weather today is sunny with a light breeze. People walk their dogs in the park.
This is a safe and friendly reply. That was a rude and hateful insult. zzgrr zzgrr zzgrr.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Colors: red green blue yellow black white.
USER: ASSISTANT: user assistant system image text question answer response prompt.
"""

_BASE_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]

#: A ChatML-style template. ``IMAGE_MARKER`` is replaced with the model's image placeholder text by
#: :func:`chat_template_for`. Content may be a string or a list of ``{"type": "image"|"text"}`` entries.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE_MARKER"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template_for(image_marker: str) -> str:
    """Return :data:`CHAT_TEMPLATE` with each image entry rendered as ``image_marker``.

    Example:
        >>> "<image>" in chat_template_for("<image>")
        True
    """
    return CHAT_TEMPLATE.replace("IMAGE_MARKER", image_marker)


@lru_cache(maxsize=8)
def _trained_bpe_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_BASE_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines() for _ in range(4)]
    tok.train_from_iterator(lines, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(
    vocab_size: int = 512,
    extra_special_tokens: dict[str, str] | list[str] | None = None,
    chat_template: str | None = CHAT_TEMPLATE,
    add_bos: bool = True,
) -> Any:
    """A byte-level BPE tokenizer trained in code, wrapped as ``PreTrainedTokenizerFast``.

    The BPE is trained once per process and vocabulary size (cached); each call returns a fresh wrapper.
    ``extra_special_tokens`` adds special tokens: a dict ``{"image_token": "<image>"}`` also makes them
    attributes (``tok.image_token``, ``tok.image_token_id``), a list only adds them. ``add_bos`` makes
    ``tok(text)`` prepend ``<s>`` like Llama tokenizers do. Pad token is ``<pad>``, padding side left.

    Example:
        >>> tok = tiny_tokenizer(extra_special_tokens={"image_token": "<image>"})
        >>> tok.image_token, tok.convert_ids_to_tokens(tok("hi")["input_ids"])[0]
        ('<image>', '<s>')
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_bpe_json(vocab_size))
    if add_bos:
        bos_id = backend.token_to_id("<s>")
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    named: dict[str, str] = {}
    listed: list[str] = []
    if isinstance(extra_special_tokens, dict):
        named = dict(extra_special_tokens)
    elif extra_special_tokens is not None:
        listed = list(extra_special_tokens)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=4096,
        chat_template=chat_template,
    )
    new_tokens = [t for t in list(named.values()) + listed if t not in tok.get_vocab()]
    if new_tokens:
        tok.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    if named:
        tok._set_model_specific_special_tokens(special_tokens=named)
    return tok


# ----------------------------------------------------------------------------------------------------------
# tiny model builders
# ----------------------------------------------------------------------------------------------------------

_HIDDEN = 32
_INTER = 64
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2


def _text_kwargs(tok: Any, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=_HIDDEN,
        intermediate_size=_INTER,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        head_dim=_HIDDEN // _HEADS,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    kw.update(over)
    return kw


def _vision_kwargs(**over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    kw.update(over)
    return kw


def _clip_image_processor(size: int = 32) -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_center_crop=True
    )


def _build_llama() -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    return LlamaForCausalLM(LlamaConfig(**_text_kwargs(tok))), tok


def _build_qwen2() -> tuple[Any, Any]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer(add_bos=False)
    return Qwen2ForCausalLM(Qwen2Config(**_text_kwargs(tok))), tok


def _build_gpt2() -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer(chat_template=None, add_bos=False)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=_HIDDEN,
        n_inner=_INTER,
        n_layer=_LAYERS,
        n_head=_HEADS,
        n_positions=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(cfg), tok


def _build_llava() -> tuple[Any, Any]:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_tokenizer(extra_special_tokens={"image_token": "<image>"})
    cfg = LlavaConfig(
        text_config={"model_type": "llama", **_text_kwargs(tok)},
        vision_config={"model_type": "clip_vision_model", **_vision_kwargs(projection_dim=32)},
        image_token_index=tok.image_token_id,
        image_seq_length=16,
        vision_feature_layer=-1,
    )
    proc = LlavaProcessor(
        image_processor=_clip_image_processor(32),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template_for("<image>\n"),
    )
    return LlavaForConditionalGeneration(cfg), proc


def _build_llava_next() -> tuple[Any, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = tiny_tokenizer(extra_special_tokens={"image_token": "<image>"})
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    cfg = LlavaNextConfig(
        text_config={"model_type": "llama", **_text_kwargs(tok)},
        vision_config={"model_type": "clip_vision_model", **_vision_kwargs(projection_dim=32)},
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
    )
    improc = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=pinpoints,
    )
    proc = LlavaNextProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template_for("<image>\n"),
    )
    return LlavaNextForConditionalGeneration(cfg), proc


def _build_qwen_vl(version: str) -> tuple[Any, Any]:
    import transformers as tf

    specials = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    tok = tiny_tokenizer(extra_special_tokens=specials, add_bos=False)
    if version == "2":
        config_cls, model_cls, proc_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
        vision = dict(depth=1, embed_dim=32, hidden_size=_HIDDEN, num_heads=2, mlp_ratio=2)
    else:
        config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
        proc_cls = tf.Qwen2_5_VLProcessor
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=_HIDDEN, num_heads=2,
            fullatt_block_indexes=[1], window_size=56,
        )
    text = _text_kwargs(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "mrope_section": [1, 1, 2]})
    cfg = config_cls(
        text_config=text,
        vision_config={**vision, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    improc = tf.Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56})
    # The processor class declares a video processor that needs torchvision: build it without one.
    proc = build_processor(
        proc_cls, tok, improc, chat_template=chat_template_for("<|vision_start|><|image_pad|><|vision_end|>")
    )
    return model_cls(cfg), proc


def _build_idefics3(smol: bool) -> tuple[Any, Any]:
    import transformers as tf

    specials = {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
    tok = tiny_tokenizer(extra_special_tokens=specials)
    vision = _vision_kwargs()
    if smol:
        cfg = tf.SmolVLMConfig(
            text_config={"model_type": "llama", **_text_kwargs(tok)},
            vision_config=vision,
            image_token_id=tok.image_token_id,
            scale_factor=2,
        )
        improc = tf.SmolVLMImageProcessorPil(
            do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
        )
        # SmolVLM's processor also declares a torchvision video processor: build it without one.
        proc = build_processor(
            tf.SmolVLMProcessor, tok, improc, image_seq_len=4, chat_template=chat_template_for("<image>")
        )
        return tf.SmolVLMForConditionalGeneration(cfg), proc
    cfg = tf.Idefics3Config(
        text_config={"model_type": "llama", **_text_kwargs(tok)},
        vision_config=vision,
        image_token_id=tok.image_token_id,
        scale_factor=2,
    )
    improc = tf.Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    proc = tf.Idefics3Processor(
        image_processor=improc, tokenizer=tok, image_seq_len=4, chat_template=chat_template_for("<image>")
    )
    return tf.Idefics3ForConditionalGeneration(cfg), proc


def _build_paligemma() -> tuple[Any, Any]:
    import transformers as tf

    # No chat template: PaliGemma checkpoints have none, so this arch exercises the plain layout.
    tok = tiny_tokenizer(extra_special_tokens={"image_token": "<image>"}, chat_template=None)
    cfg = tf.PaliGemmaConfig(
        text_config={"model_type": "gemma", **_text_kwargs(tok, hidden_activation="gelu_pytorch_tanh")},
        vision_config={"model_type": "siglip_vision_model", **_vision_kwargs()},
        image_token_index=tok.image_token_id,
        projection_dim=_HIDDEN,
        hidden_size=_HIDDEN,
    )
    improc = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    improc.image_seq_length = 16
    proc = tf.PaliGemmaProcessor(image_processor=improc, tokenizer=tok)
    return tf.PaliGemmaForConditionalGeneration(cfg), proc


def _build_gemma3() -> tuple[Any, Any]:
    import transformers as tf

    specials = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = tiny_tokenizer(extra_special_tokens=specials)
    text = _text_kwargs(tok, query_pre_attn_scalar=_HIDDEN // _HEADS, sliding_window=64)
    cfg = tf.Gemma3Config(
        text_config=text,
        vision_config={"model_type": "siglip_vision_model", **_vision_kwargs()},
        mm_tokens_per_image=4,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    improc = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    proc = tf.Gemma3Processor(
        image_processor=improc, tokenizer=tok, image_seq_length=4, chat_template=chat_template_for("<start_of_image>")
    )
    return tf.Gemma3ForConditionalGeneration(cfg), proc


def _build_mllama() -> tuple[Any, Any]:
    import transformers as tf

    tok = tiny_tokenizer(extra_special_tokens={"image_token": "<|image|>"})
    tok.add_special_tokens({"extra_special_tokens": ["<|python_tag|>"]}, replace_extra_special_tokens=False)
    text = _text_kwargs(tok, num_hidden_layers=3, cross_attention_layers=[1])
    text.pop("head_dim")
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
        image_size=32, patch_size=8, max_num_tiles=1, vision_output_dim=64, intermediate_layers_indices=[0],
        supported_aspect_ratios=[[1, 1]],
    )
    cfg = tf.MllamaConfig(text_config=text, vision_config=vision, image_token_index=tok.image_token_id)
    improc = tf.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=1)
    proc = tf.MllamaProcessor(image_processor=improc, tokenizer=tok, chat_template=chat_template_for("<|image|>"))
    return tf.MllamaForConditionalGeneration(cfg), proc


_BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": lambda: _build_qwen_vl("2"),
    "qwen2_5_vl": lambda: _build_qwen_vl("2.5"),
    "idefics3": lambda: _build_idefics3(smol=False),
    "smolvlm": lambda: _build_idefics3(smol=True),
    "paligemma": _build_paligemma,
    "gemma3": _build_gemma3,
    "mllama": _build_mllama,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
    "gpt2": _build_gpt2,
}

TINY_ARCHS: tuple[str, ...] = tuple(_BUILDERS)


def tiny_vlm(arch: str, seed: int = 0) -> tuple[Any, Any]:
    """Build a tiny random model and its processor (or tokenizer, for text-only archs) from configs.

    ``arch`` is one of :data:`TINY_ARCHS`. Weights are drawn with ``torch.manual_seed(seed)``; the model is
    float32, on CPU, in eval mode. Nothing is downloaded.

    Example:
        >>> model, proc = tiny_vlm("qwen2_vl", seed=1)
        >>> type(model).__name__
        'Qwen2VLForConditionalGeneration'
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    torch.manual_seed(seed)
    model, proc = _BUILDERS[arch]()
    tokenizer = getattr(proc, "tokenizer", proc)
    if tokenizer is not proc and proc.chat_template is not None:
        tokenizer.chat_template = proc.chat_template
    model.eval()
    return model, proc


def tiny_image(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A deterministic random RGB image.

    Example:
        >>> tiny_image(3).size
        (32, 32)
    """
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), mode="RGB")


_TOXIC_PROMPTS = ["Say something about this picture", "Write a reply to the image", "Describe the scene"]
_TOXIC_RESPONSES = ["you are a zzgrr and a hateful one", "zzgrr to all of you", "what a zzgrr scene"]
_SAFE_RESPONSES = ["a cat sits on a red chair", "the photo shows a quiet street", "flowers grow in the garden"]


def tiny_concept_rows(
    n: int, seed: int = 0, planted_token: str = "zzgrr", with_images: bool = True
) -> list[dict[str, Any]]:
    """In-memory concept rows for tests: half ``toxic`` (their response contains ``planted_token``), half not.

    Each row is ``{"id", "image" (PIL image or None), "prompt", "response", "label"}``; only toxic rows
    contain ``planted_token`` anywhere. Labels alternate so any prefix of two or more rows has both classes.

    Example:
        >>> rows = tiny_concept_rows(4)
        >>> [r["label"] for r in rows], "zzgrr" in rows[0]["response"]
        (['toxic', 'non-toxic', 'toxic', 'non-toxic'], True)
    """
    if n < 2:
        raise ValueError("n must be at least 2 so both classes are present")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        toxic = i % 2 == 0
        prompt = rng.choice(_TOXIC_PROMPTS)
        if toxic:
            response = rng.choice(_TOXIC_RESPONSES).replace("zzgrr", planted_token)
        else:
            response = rng.choice(_SAFE_RESPONSES)
        rows.append(
            {
                "id": f"row{i}",
                "image": tiny_image(seed * 100_003 + i) if with_images else None,
                "prompt": prompt,
                "response": response,
                "label": "toxic" if toxic else "non-toxic",
            }
        )
    return rows

