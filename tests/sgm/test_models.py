"""Loading, unit resolution, layer selection, folding and identity on tiny models of many architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from safety_glasses.inputs import encode_rows
from safety_glasses.models import (
    ModelLoadError,
    UnitResolutionError,
    UnitSite,
    decoder_layers,
    fold_site,
    load_vlm,
    model_fingerprint,
    model_identity,
    parse_layers,
    resolve_units,
)
from safety_glasses.testing import TINY_ARCHS, tiny_image

from .conftest import TEXT_ARCHS, VLM_ARCHS


def _text_config(model: nn.Module):
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


def _inputs(model, proc, arch: str) -> dict[str, torch.Tensor]:
    imgs = [[tiny_image(1)], [tiny_image(2, (40, 48))]] if arch in VLM_ARCHS else [[], []]
    batch = encode_rows(proc, ["describe", "what is this picture"], imgs, ["a cat", "a red chair"],
                        model_config=model.config)
    return batch.inputs


@torch.no_grad()
def _logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits.float()


def test_all_promised_archs_build():
    assert set(VLM_ARCHS + TEXT_ARCHS) <= set(TINY_ARCHS)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_units_resolve_in_language_tower(tiny, arch):
    model, _ = tiny(arch)
    text = _text_config(model)
    n_layers = text.num_hidden_layers if hasattr(text, "num_hidden_layers") else text.n_layer
    inter = getattr(text, "intermediate_size", None) or text.n_inner
    hidden = getattr(text, "hidden_size", None) or text.n_embd
    prefix, layers = decoder_layers(model)
    decoder = model.get_decoder()
    # The layers found are the language decoder's own, never a vision tower's.
    assert any(layers is m for m in decoder.modules())
    decoder_ids = {id(m) for m in decoder.modules()}
    vision = [m for name, m in model.named_modules() if name.endswith(("vision_tower", "vision_model", "visual"))]
    vision_ids = {id(sub) for v in vision for sub in v.modules()}
    if arch in VLM_ARCHS:
        assert vision_ids, "a tiny VLM should have a vision tower"
    expected = {"act": inter, "gate": inter, "up": inter, "down": hidden}
    for kind, size in expected.items():
        if arch == "gpt2" and kind == "gate":
            continue
        sites = resolve_units(model, kind)
        assert [s.layer for s in sites] == list(range(n_layers))
        assert all(s.size == size and s.kind == kind for s in sites)
        assert all(s.module_name.startswith(prefix + ".") for s in sites)
        for s in sites:
            mod = model.get_submodule(s.module_name)
            assert id(mod) in decoder_ids and id(mod) not in vision_ids
        assert all(s.where == ("input" if kind == "act" else "output") for s in sites)


def test_gate_on_gpt2_errors(tiny):
    model, _ = tiny("gpt2")
    with pytest.raises(UnitResolutionError, match="gate.*GPT2MLP.*gate_proj"):
        resolve_units(model, "gate")


def test_unknown_architecture_names_what_was_tried():
    class Weird(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = nn.Sequential(nn.Linear(4, 4))

    with pytest.raises(UnitResolutionError) as err:
        resolve_units(Weird(), "act")
    msg = str(err.value)
    assert "Weird" in msg and "layers" in msg and "language_model" in msg


def test_layer_without_mlp_errors():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.Linear(4, 4)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Block()])

    with pytest.raises(UnitResolutionError, match="no MLP.*mlp, feed_forward"):
        resolve_units(Decoder(), "act")


def test_unknown_kind_errors(tiny):
    with pytest.raises(UnitResolutionError, match="unknown unit kind"):
        resolve_units(tiny("llama")[0], "neuron")


def test_layer_selection(tiny):
    model, _ = tiny("mllama")  # 3 layers, the middle one a cross-attention layer
    assert [s.layer for s in resolve_units(model, "act", layers="1")] == [1]
    assert [s.layer for s in resolve_units(model, "act", layers="-2:")] == [1, 2]
    assert [s.layer for s in resolve_units(model, "up", layers=[0, -1])] == [0, 2]
    assert "cross_attn" not in resolve_units(model, "act", layers="1")[0].module_name
    assert type(decoder_layers(model)[1][1]).__name__ == "MllamaCrossAttentionDecoderLayer"


@pytest.mark.parametrize("spec", ["5", "2-9", ":0", "3:", "x"])
def test_empty_or_bad_selection_errors(tiny, spec):
    model, _ = tiny("llava")
    with pytest.raises(UnitResolutionError, match="llava|Llava"):
        resolve_units(model, "act", layers=spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [0, 1, 2, 3, 4, 5, 6, 7]),
        ("all", [0, 1, 2, 3, 4, 5, 6, 7]),
        ("4-7", [4, 5, 6, 7]),
        ("0,2,5", [0, 2, 5]),
        ("6-", [6, 7]),
        ("-1", [7]),
        ("-3:", [5, 6, 7]),
        (":2", [0, 1]),
        ("2:-4", [2, 3]),
        ("1, 1-2", [1, 2]),
        ([3, -1, 3], [3, 7]),
        ("0:8", list(range(8))),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 8) == expected


@pytest.mark.parametrize("spec", ["8", "-9", "5-3", "7-8", ":0", "0:9", "a-b", "1;2", [8], [True]])
def test_parse_layers_errors_name_valid_range(spec):
    with pytest.raises(ValueError) as err:
        parse_layers(spec, 8)
    assert "0..7" in str(err.value) or "cannot parse" in str(err.value) or "ints" in str(err.value)


FOLD_ARCHS = ("llama", "gpt2", "llava", "qwen2_vl", "mllama")


@pytest.mark.parametrize("arch", FOLD_ARCHS)
def test_fold_equals_hook_for_every_kind(tiny, scale, arch):
    model, proc = tiny(arch)
    inputs = _inputs(model, proc, arch)
    base = _logits(model, inputs)
    for site in resolve_units(model, "act"):  # alpha = 1 on an input site changes nothing
        with scale(model, site, torch.ones(site.size)):
            assert torch.equal(_logits(model, inputs), base)
    gen = torch.Generator().manual_seed(0)
    for kind in ("act", "gate", "up", "down"):
        if arch == "gpt2" and kind == "gate":
            continue
        site = resolve_units(model, kind, layers="0")[0]
        alpha = torch.rand(site.size, generator=gen) * 1.5
        alpha[:3] = 0.0
        with scale(model, site, alpha):
            hooked = _logits(model, inputs)
        assert not torch.allclose(hooked, base, atol=1e-4), f"{kind}: scaling had no effect"
        module = model.get_submodule(site.module_name)
        saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        fold_site(model, site, alpha)
        folded = _logits(model, inputs)
        assert torch.allclose(folded, hooked, atol=1e-5, rtol=0), (kind, (folded - hooked).abs().max())
        module.load_state_dict(saved)  # unfold exactly for the next kind


def test_fold_bf16_is_float32_product_cast_back(tiny):
    model, _ = tiny("llama")
    model.to(torch.bfloat16)
    for kind in ("act", "down"):
        site = resolve_units(model, kind, layers="1")[0]
        module = model.get_submodule(site.module_name)
        before = module.weight.detach().clone()
        alpha = torch.linspace(0.1, 1.3, site.size, dtype=torch.float64)
        fold_site(model, site, alpha)
        a = alpha.float().view(1, -1) if kind == "act" else alpha.float().view(-1, 1)
        assert module.weight.dtype == torch.bfloat16
        assert torch.equal(module.weight, (before.float() * a).to(torch.bfloat16))


def test_fold_gpt2_conv1d_output_scales_bias(tiny):
    model, _ = tiny("gpt2")
    site = resolve_units(model, "up", layers="0")[0]
    module = model.get_submodule(site.module_name)
    w, b = module.weight.detach().clone(), module.bias.detach().clone()
    alpha = torch.arange(site.size, dtype=torch.float32)
    fold_site(model, site, alpha)
    assert torch.equal(module.weight, w * alpha.view(1, -1)) and torch.equal(module.bias, b * alpha)


def test_fold_rejects_wrong_alpha_size(tiny):
    model, _ = tiny("llama")
    site = resolve_units(model, "act")[0]
    with pytest.raises(ValueError, match="entries"):
        fold_site(model, site, torch.ones(site.size + 1))
    bad = UnitSite(site.module_name, 0, "act", site.size + 1, "input")
    with pytest.raises(ValueError, match="holds"):
        fold_site(model, bad, torch.ones(site.size + 1))


def test_unit_site_validation():
    with pytest.raises(ValueError):
        UnitSite("x", 0, "neuron", 4, "input")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UnitSite("x", 0, "act", 0, "input")


def test_fingerprint_ignores_weights_and_dtype_but_not_shapes(tiny):
    a, _ = tiny("llava", seed=0)
    b, _ = tiny("llava", seed=1)
    assert model_fingerprint(a) == model_fingerprint(b)
    b.to(torch.bfloat16)
    b.config.dtype = torch.bfloat16
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(tiny("llava_next")[0])
    c, _ = tiny("llava")
    c.config.text_config.intermediate_size = 128
    assert model_fingerprint(a) != model_fingerprint(c)
    ident = model_identity(a)
    assert ident["class"] == "LlavaForConditionalGeneration" and ident["fingerprint"] == model_fingerprint(a)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "smolvlm", "gpt2"])
def test_load_vlm_round_trip_offline(tiny, tmp_path, arch):
    model, proc = tiny(arch)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded, loaded_proc = load_vlm(tmp_path, dtype="float32")
    assert type(loaded) is type(model) and not loaded.training
    assert type(loaded_proc).__name__ == type(proc).__name__
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert model_identity(loaded)["name_or_path"] == str(tmp_path)
    assert [s.module_name for s in resolve_units(loaded)] == [s.module_name for s in resolve_units(model)]
    before, after = _inputs(model, proc, arch), _inputs(loaded, loaded_proc, arch)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.allclose(_logits(loaded, after), _logits(model, before), atol=1e-6)


def test_load_vlm_dtype_and_errors(tiny, tmp_path):
    model, tok = tiny("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_vlm(tmp_path, dtype="bfloat16", device_map="cpu")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    site = resolve_units(loaded, "act")[0]
    fold_site(loaded, site, torch.full((site.size,), 0.5))  # folds in place on a device-mapped bf16 model
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_vlm(tmp_path, dtype="int3")
    with pytest.raises(ModelLoadError, match="cannot read a model config"):
        load_vlm(tmp_path / "missing")


def test_load_vlm_names_every_auto_class_tried(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelLoadError) as err:
        load_vlm(tmp_path)
    msg = str(err.value)
    assert "AutoModelForImageTextToText" in msg and "AutoModelForCausalLM" in msg


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "layers", "act", "hidden"),
    [
        ("LlavaConfig", "LlavaForConditionalGeneration", 32, 11008, 4096),  # LLaVA-1.5-7B shapes
        ("MllamaConfig", "MllamaForConditionalGeneration", 40, 14336, 4096),  # Llama-3.2-11B-Vision shapes
    ],
)
def test_full_size_default_configs_resolve_on_meta_device(config_cls, model_cls, layers, act, hidden):
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)())
    sites = resolve_units(model, "act")
    assert len(sites) == layers and {s.size for s in sites} == {act}
    assert {s.size for s in resolve_units(model, "down", layers="-8:")} == {hidden}
    with pytest.raises(ValueError, match="meta"):
        fold_site(model, sites[0], torch.ones(act))


def test_processor_without_torchvision_is_rebuilt_without_its_video_part(tiny, tmp_path):
    import importlib.util

    from safety_glasses.models import load_processor

    model, proc = tiny("qwen2_vl")
    proc.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path, model.config)
    assert isinstance(loaded, type(proc).__mro__[1])  # the real Qwen2VLProcessor class
    if importlib.util.find_spec("torchvision") is None:
        assert "video_processor" not in loaded.get_attributes()
        assert not hasattr(loaded, "video_processor")
    assert loaded.chat_template == proc.chat_template
    assert loaded.image_processor.size == proc.image_processor.size
