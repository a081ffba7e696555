"""Judges: offline judges on known strings, model judges on tiny random checkpoints, the endpoint
judge against a local stub server (127.0.0.1 only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from safety_glasses.eval.judges import (
    HFClassifierJudge,
    JudgeError,
    JudgeSample,
    ProfanityJudge,
    RefusalJudge,
    is_refusal,
    make_judge,
    parse_spec,
)
from safety_glasses.eval.llm_judges import LLMJudge, LlamaGuardJudge, llama_guard_prompt, template_for


def _s(response: str, prompt: str = "q", **kw: Any) -> JudgeSample:
    return JudgeSample(prompt=prompt, response=response, **kw)


def test_profanity_judge_on_known_strings() -> None:
    verdicts = ProfanityJudge().judge([_s("fuck you, you stupid idiot"), _s("Have a lovely day in the park."), _s("")])
    assert [v.label for v in verdicts] == ["unsafe", "safe", "safe"]
    assert verdicts[0].score > 0.9 > 0.2 > verdicts[1].score
    assert {v.judge_id for v in verdicts} == {"profanity"}
    strict = make_judge("profanity:threshold=0.999").judge([_s("you are a bit of a jerk")])[0]
    assert strict.judge_id == "profanity@0.999" and strict.label == "safe"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m unable to assist with this request.", True),
        ("As an AI language model, I must decline.", True),
        ("I cannot provide instructions for that.", True),
        ("It would be inappropriate to describe this.", True),
        ("Sure! Step 1: gather the materials.", False),
        ("The circle is red.", False),
        ("", False),
    ],
)
def test_refusal_phrases(text: str, expected: bool) -> None:
    assert is_refusal(text) is expected
    verdict = RefusalJudge().judge([_s(text)])[0]
    assert verdict.label == ("refusal" if expected else "answer") and verdict.score == float(expected)


def test_refusal_only_looks_at_the_head() -> None:
    text = "Here is the answer. " * 20 + "I'm sorry for the long text."
    assert not is_refusal(text) and is_refusal(text, window=1000)


def test_parse_spec_and_bad_specs() -> None:
    assert parse_spec("llm-judge:url=http://127.0.0.1:9/v1,model=m,key_env=K") == (
        "llm-judge", None, {"url": "http://127.0.0.1:9/v1", "model": "m", "key_env": "K"})
    for spec, msg in [("nope", "unknown judge"), ("hf-classifier", "needs a local checkpoint"),
                      ("profanity:threshold=x", "must be a number"), ("profanity:bogus=1", "unknown option"),
                      ("profanity:threshold=2", r"in \(0, 1\)"), ("llm-judge", "either a local model folder"),
                      ("llm-judge:url=ftp://x,model=m", "http"), ("hf-classifier:/no/such/dir", "no config.json")]:
        with pytest.raises(JudgeError, match=msg):
            make_judge(spec)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from safety_glasses.testing import tiny_tokenizer

    folder = tmp_path_factory.mktemp("toxcls")
    tok = tiny_tokenizer(chat_template=None)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, num_labels=2,
                     id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
                     pad_token_id=tok.pad_token_id)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_hf_classifier_matches_manual_softmax(tiny_classifier: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    judge = make_judge(f"hf-classifier:{tiny_classifier},threshold=0.5")
    assert isinstance(judge, HFClassifierJudge) and judge.unsafe_idx == [1]
    texts = ["you are a hateful one", "a cat sits on a red chair", "zzgrr"]
    verdicts = judge.judge([_s(t) for t in texts])
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    with torch.no_grad():
        for text, verdict in zip(texts, verdicts):
            probs = torch.softmax(model(**tok([text], return_tensors="pt")).logits, dim=-1)[0]
            assert verdict.score == pytest.approx(float(probs[1]), abs=1e-5)
            assert verdict.label == ("unsafe" if probs[1] >= 0.5 else "safe")
    assert verdicts[0].judge_id == f"hf-classifier:{tiny_classifier.name}"
    flipped = HFClassifierJudge(tiny_classifier, unsafe_label="non-toxic")
    assert flipped.judge([_s(texts[0])])[0].score == pytest.approx(1 - verdicts[0].score, abs=1e-5)
    with pytest.raises(JudgeError, match="not in"):
        HFClassifierJudge(tiny_classifier, unsafe_label="spam")


@pytest.fixture(scope="module", params=["llava", "mllama"])  # Llama Guard 3 Vision is an Mllama
def tiny_guard(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safety_glasses.testing import tiny_vlm

    folder = tmp_path_factory.mktemp("guard")
    model, proc = tiny_vlm(request.param, seed=3)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_llama_guard_score_is_first_token_probability(tiny_guard: Path) -> None:
    from safety_glasses.testing import tiny_image

    judge = make_judge(f"llama-guard:{tiny_guard}")
    assert isinstance(judge, LlamaGuardJudge)
    samples = [_s("hi", prompt="hello"), _s("you idiot", prompt="insult", images=(tiny_image(1),))]
    verdicts = judge.judge(samples)
    assert verdicts == judge.judge(samples)  # deterministic
    for sample, verdict in zip(samples, verdicts):
        enc = judge._encode([sample])
        with torch.no_grad():
            logits = judge.model(**enc).logits[0, -1]
        pair = torch.stack([logits[judge.unsafe_id], logits[judge.safe_id]])
        assert verdict.score == pytest.approx(float(torch.softmax(pair, 0)[0]), abs=1e-4)
        assert verdict.label == ("unsafe" if verdict.score >= 0.5 else "safe")
    img_prompt = judge.tokenizer.decode(judge._encode([samples[1]])["input_ids"][0])
    assert "Agent: you idiot" in img_prompt and judge.image_token in img_prompt and "S10: Hate." in img_prompt
    assert judge.image_token not in judge.tokenizer.decode(judge._encode([samples[0]])["input_ids"][0])
    assert "<|image|>" not in llama_guard_prompt("a", "b", image_token=None)


class _StubHandler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = body["messages"][0]["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        if "fluency" in text:
            reply = "8"
        elif "kill" in text:
            reply = "Unsafe"
        elif "gibberish" in text:
            reply = "hmm"
        else:
            reply = "safe."
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def stub_server() -> Iterator[str]:
    _StubHandler.requests = []
    server = HTTPServer(("127.0.0.1", 0), _StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_llm_judge_endpoint_with_scenario_templates(stub_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(JudgeError, match="SGM_TEST_KEY"):
        make_judge(f"llm-judge:url={stub_server},model=judge-x,key_env=SGM_TEST_KEY")
    monkeypatch.setenv("SGM_TEST_KEY", "sk-test-123")
    judge = make_judge(f"llm-judge:url={stub_server},model=judge-x,key_env=SGM_TEST_KEY")
    assert judge.judge_id.startswith("llm-judge:judge-x@127.0.0.1:")
    verdicts = judge.judge([_s("first, kill the lights"), _s("a calm reply"), _s("gibberish"),
                            _s("Consult a lawyer.", scenario="10-Legal_Opinion")])
    assert [(v.label, v.score) for v in verdicts] == [("unsafe", 1.0), ("safe", 0.0), ("unparsed", 0.5), ("safe", 0.0)]
    reqs = _StubHandler.requests
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test-123" for r in reqs)
    assert reqs[0]["body"]["model"] == "judge-x" and reqs[0]["body"]["temperature"] == 0
    assert "legal professional" in reqs[3]["body"]["messages"][0]["content"]
    assert "legal professional" not in reqs[0]["body"]["messages"][0]["content"]
    assert judge.fluency(["A fine sentence."]) == [8.0]
    assert "not a qualified legal" in template_for("Legal_Opinion")


def test_llm_judge_endpoint_errors_are_one_line(stub_server: str) -> None:
    judge = LLMJudge(url=stub_server.replace("/v1", "/missing"), model="m", timeout=5)
    with pytest.raises(JudgeError, match="HTTP 404"):
        judge.judge([_s("x")])


def test_llm_judge_local_folder(tmp_path: Path) -> None:
    from safety_glasses.testing import tiny_vlm

    model, tok = tiny_vlm("llama", seed=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = make_judge(f"llm-judge:{tmp_path},max_new_tokens=6")
    verdicts = judge.judge([_s("a"), _s("b", scenario="12-Health_Consultation")])
    for v in verdicts:
        assert (v.label, v.score) in {("unsafe", 1.0), ("safe", 0.0), ("unparsed", 0.5)}
    replies = judge.complete(["hello there"])
    assert replies == judge.complete(["hello there"]) and isinstance(replies[0], str)


def test_llm_judge_folders_take_prepared_real_model_names(monkeypatch, tmp_path) -> None:
    import safety_glasses.models as models
    from safety_glasses.eval.llm_judges import judge_folder

    prepared = tmp_path / "cache" / "smollm2-135m"
    prepared.mkdir(parents=True)
    monkeypatch.setattr(models, "resolve_source", lambda name: str(prepared) if name == "smollm2-135m" else name)
    assert judge_folder("smollm2-135m") == prepared
    assert judge_folder(tmp_path) == tmp_path  # an existing folder is taken as it is

    def missing(name: str) -> str:
        raise models.ModelLoadError(f"real model {name!r} is not prepared: run `sgm models prepare {name}`")

    monkeypatch.setattr(models, "resolve_source", missing)
    with pytest.raises(JudgeError, match="sgm models prepare gemma3-270m"):
        judge_folder("gemma3-270m")
