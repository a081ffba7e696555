"""Architecture resolution by structure, on tiny models built from transformers 5.x configs: AyaVision and
Cohere2Vision (base models whose class names say "Vision"), Kosmos-2, BLIP-2 (OPT and T5), InstructBLIP,
Llama-4 (decoder layers below get_decoder(); MoE layers refused), Florence-2 (an encoder-decoder LM)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf

from safety_glasses.glasses import Glasses, GlassesConfig
from safety_glasses.hooks import count_hooks
from safety_glasses.models import UnitResolutionError, decoder_layers, resolve_units

TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
SIGLIP = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=2, image_size=32, patch_size=8)
SMALL_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                    patch_size=8)
QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               encoder_hidden_size=32, vocab_size=128)
IDS = torch.tensor([[1, 5, 9, 17, 33, 2]])


def _aya() -> tuple[Any, Callable]:
    m = tf.AyaVisionForConditionalGeneration(tf.AyaVisionConfig(
        vision_config=SIGLIP, text_config={"model_type": "cohere2", **TEXT}, downsample_factor=2, image_token_index=5))
    return m, lambda: m(input_ids=IDS).logits


def _cohere2_vision() -> tuple[Any, Callable]:
    m = tf.Cohere2VisionForConditionalGeneration(tf.Cohere2VisionConfig(
        vision_config=SIGLIP, text_config={"model_type": "cohere2", **TEXT}, downsample_factor=2, image_token_id=5))
    return m, lambda: m(input_ids=IDS).logits


def _kosmos2() -> tuple[Any, Callable]:
    m = tf.Kosmos2ForConditionalGeneration(tf.Kosmos2Config(
        text_config=dict(vocab_size=128, embed_dim=32, ffn_dim=64, layers=2, attention_heads=4,
                         max_position_embeddings=256), vision_config=SMALL_VISION, latent_query_num=4))
    return m, lambda: m.text_model(input_ids=IDS).logits


def _blip2_opt() -> tuple[Any, Callable]:
    m = tf.Blip2ForConditionalGeneration(tf.Blip2Config(
        vision_config=SMALL_VISION, qformer_config=QFORMER, num_query_tokens=4,
        text_config=dict(model_type="opt", vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=256)))
    return m, lambda: m.language_model(input_ids=IDS).logits


def _blip2_t5() -> tuple[Any, Callable]:
    m = tf.Blip2ForConditionalGeneration(tf.Blip2Config(
        vision_config=SMALL_VISION, qformer_config=QFORMER, num_query_tokens=4,
        text_config=dict(model_type="t5", vocab_size=128, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                         num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", decoder_start_token_id=0)))
    return m, lambda: m.language_model(input_ids=IDS, decoder_input_ids=IDS).logits


def _instructblip() -> tuple[Any, Callable]:
    m = tf.InstructBlipForConditionalGeneration(tf.InstructBlipConfig(
        vision_config=SMALL_VISION, qformer_config=QFORMER, num_query_tokens=4,
        text_config={"model_type": "llama", **TEXT}))
    return m, lambda: m.language_model(input_ids=IDS).logits


def _llama4(moe_step: int = 100) -> tuple[Any, Callable]:
    m = tf.Llama4ForConditionalGeneration(tf.Llama4Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, vision_output_dim=32, projector_input_dim=32,
                           projector_output_dim=32, intermediate_layers_indices=[0]),
        text_config=dict(vocab_size=128, hidden_size=32, intermediate_size=64, intermediate_size_mlp=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_local_experts=2, interleave_moe_layer_step=moe_step, max_position_embeddings=256)))
    # the language model alone: transformers 5.x's full Llama-4 text-only forward fails on its own output class
    return m, lambda: m.language_model(input_ids=IDS).logits


def _florence2() -> tuple[Any, Callable]:
    m = tf.Florence2ForConditionalGeneration(tf.Florence2Config(
        text_config=dict(vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=256),
        vision_config=dict(embed_dim=[16, 32], depths=[1, 1], num_heads=[1, 2], num_groups=[1, 2], patch_size=[7, 3],
                           patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], projection_dim=32)))
    return m, lambda: m.model.language_model(input_ids=IDS, decoder_input_ids=IDS).last_hidden_state


ARCHS: dict[str, tuple[Callable[[], tuple[Any, Callable]], str, str]] = {
    # builder, the decoder layers' path, the act module inside a layer
    "aya_vision": (_aya, "model.language_model.layers", "mlp.down_proj"),
    "cohere2_vision": (_cohere2_vision, "model.language_model.layers", "mlp.down_proj"),
    "kosmos2": (_kosmos2, "text_model.model.layers", "ffn.fc2"),
    "blip2_opt": (_blip2_opt, "language_model.model.decoder.layers", "fc2"),
    "blip2_t5": (_blip2_t5, "language_model.decoder.block", "layer.2.DenseReluDense.wo"),
    "instructblip": (_instructblip, "language_model.model.layers", "mlp.down_proj"),
    "llama4": (_llama4, "language_model.model.layers", "feed_forward.down_proj"),
    "florence2": (_florence2, "model.language_model.decoder.layers", "fc2"),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_language_decoder_units_resolve_and_wear_like_folding(arch: str) -> None:
    build, layers_path, act = ARCHS[arch]
    torch.manual_seed(0)
    model, forward = build()
    model.eval()
    prefix, layers = decoder_layers(model)
    assert prefix == layers_path and len(layers) == 2
    sites = resolve_units(model, "act")
    assert [s.module_name for s in sites] == [f"{layers_path}.{i}.{act}" for i in range(2)]
    assert all(s.size == 64 for s in sites)
    assert all(s.size == 64 for s in resolve_units(model, "up"))
    gen = torch.Generator().manual_seed(1)
    alphas = {s.module_name: torch.rand(s.size, generator=gen) for s in sites}
    glasses = Glasses(GlassesConfig(strategy="aura", sites=sites), alphas)
    with torch.no_grad():
        plain = forward()
        with glasses.apply(model):
            worn = forward()
        assert count_hooks(model) == 0
        glasses.fold_into(model)
        folded = forward()
    assert not torch.allclose(plain, worn, atol=1e-4)
    assert torch.allclose(worn, folded, atol=1e-5)


def test_mixture_of_experts_layers_are_refused_with_a_message() -> None:
    model, _ = _llama4(moe_step=2)  # layer 1 is a mixture of experts, layer 0 dense
    with pytest.raises(UnitResolutionError, match=r"decoder layer 1 .*Llama4TextMoe.* mixture of experts.*--layers"):
        resolve_units(model, "act")
    assert [s.layer for s in resolve_units(model, "act", layers="0")] == [0]


def test_vision_tower_is_recognised_by_its_config_not_its_class_name() -> None:
    from safety_glasses.models import _other_towers

    model, _ = _aya()
    assert type(model.model).__name__ == "AyaVisionModel"  # the base model, which holds the language model
    assert _other_towers(model) == ["model.vision_tower"]
    blip, _ = _blip2_opt()
    assert set(_other_towers(blip)) == {"vision_model", "qformer"}
