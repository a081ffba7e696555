"""An API key typed into a judge spec is never echoed in an error message or written to a file; keys come
only from environment variables (key_env=VAR)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from safety_glasses._secrets import redact_secrets
from safety_glasses.cli import app
from safety_glasses.eval.judges import JudgeError, make_judge

SECRET = "sk-live-DO-NOT-PRINT-0123456789"
FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.mark.parametrize("spec", [
    f"llm-judge:url=http://127.0.0.1:9/v1,model=m,key={SECRET}",
    f"llm-judge:url=http://127.0.0.1:9/v1,model=m,api_key={SECRET}",
    f"llm-judge:url=http://user:{SECRET}@127.0.0.1:9/v1,model=m",
    f"llm-judge:url=http://127.0.0.1:9/v1?api_key={SECRET},model=m",
    f"llm-judge:url=ftp://{SECRET},model=m",
    f"profanity:threshold=oops,token={SECRET}",
    f"llm-judge:url=http://127.0.0.1:9/v1,model=m,max_new_tokens=x{SECRET}",
    f"llm-judge:/no/such,{SECRET}",
])
def test_a_key_in_a_spec_is_refused_without_being_echoed(spec: str) -> None:
    with pytest.raises(JudgeError) as err:
        make_judge(spec)
    assert SECRET not in str(err.value)


def test_cli_never_prints_the_key(tmp_path: Path) -> None:
    runner = CliRunner()
    for judge in (f"llm-judge:url=http://127.0.0.1:9/v1,model=m,key={SECRET}",
                  f"llm-judge:url=http://u:{SECRET}@127.0.0.1:9/v1,model=m"):
        res = runner.invoke(app, ["eval", "--model", str(tmp_path / "unused"), "--bench", str(FIX / "bench.jsonl"),
                                  "--out", str(tmp_path / "o"), "--judge", judge])
        assert res.exit_code == 2 and SECRET not in res.output and "error:" in res.output
        assert "key_env=VAR" in res.output
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "unused"), "--bench", str(FIX / "bench.jsonl"), "--out",
                              str(tmp_path / "o"), "--defense", f"output-filter:judge=profanity,key={SECRET}"])
    assert res.exit_code == 2 and SECRET not in res.output
    assert not (tmp_path / "o").exists()  # nothing written that could hold it


def test_key_env_reads_the_environment_and_the_judge_id_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    judge = make_judge("llm-judge:url=http://127.0.0.1:9/v1,model=m,key_env=JUDGE_KEY")
    assert judge.judge_id == "llm-judge:m@127.0.0.1:9" and SECRET not in repr(vars(judge))
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(JudgeError, match="JUDGE_KEY .* is not set"):
        make_judge("llm-judge:url=http://127.0.0.1:9/v1,model=m,key_env=JUDGE_KEY")


def test_redaction_keeps_what_is_not_secret() -> None:
    assert redact_secrets("key_env=MY_KEY,model=gpt") == "key_env=MY_KEY,model=gpt"
    assert "abc.def" not in redact_secrets("Authorization: Bearer abc.def")
