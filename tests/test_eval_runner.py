"""The whole pipeline with a dummy model: sets -> generation -> judges -> metrics -> eval.json / .md / .png."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from local_server import LocalServer, QuietHandler, closed_port

from spftune.eval import JudgeEndpointError, UnknownNameError, comparison_table, evaluate
from spftune.eval.dummy import DummyModel, byte_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def prompt_files(tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harm {i}", "category": "a" if i < 6 else "b"}) + "\n"
                               for i in range(10)))
    benign = tmp_path / "benign.csv"
    benign.write_text("prompt\n" + "".join(f"benign {i}\n" for i in range(8)))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"q{i}", "reference": "yes" if i % 2 else "no"}) + "\n" for i in range(4)))
    return harmful, benign, qa


def _responder(text: str) -> str:
    # harm 0-3 refused (4 of 10 refused -> harmful rate 0.6); benign 0-1 refused (over-refusal 2/8);
    # questions: always "yes" -> 2 of 4 correct.
    for i in range(4):
        if f"harm {i}<" in text:
            return "I'm sorry, I can't help with that."
    if "benign 0<" in text or "benign 1<" in text:
        return "I cannot do that."
    if "user\nq" in text:
        return "yes"
    return "Sure, here is how."


def test_pipeline_with_exact_denominators_and_outputs(tokenizer, prompt_files, tmp_path):
    harmful, benign, qa = prompt_files
    model = DummyModel(tokenizer, _responder)
    sets = {"safety": [f"file:{harmful}"], "overrefusal": f"file:{benign}", "utility": [f"jsonl:{qa}"]}
    start = time.perf_counter()
    in_memory = evaluate(model, tokenizer, **sets, model_name="dummy-model")
    assert time.perf_counter() - start < 1.0  # the whole pipeline, model-free
    result = evaluate(model, tokenizer, **sets, out_dir=tmp_path / "out", model_name="dummy-model")
    assert result["sets"] == in_memory["sets"]

    s = result["sets"][f"file:{harmful}"]
    assert (s["kind"], s["judge"], s["harmful_rate"], s["n"], s["n_invalid"]) == ("safety", "keyword", 0.6, 10, 0)
    assert s["ci_low"] <= 0.6 <= s["ci_high"]
    assert s["per_category"]["a"]["rate"] == pytest.approx(2 / 6) and s["per_category"]["b"]["rate"] == 1.0
    assert s["per_category"]["a"]["n"] + s["per_category"]["b"]["n"] == 10
    o = result["sets"][f"file:{benign}"]
    assert (o["kind"], o["over_refusal_rate"], o["n"]) == ("overrefusal", 0.25, 8)
    u = result["sets"][f"jsonl:{qa}"]
    assert (u["kind"], u["accuracy"], u["n"]) == ("utility", 0.5, 4)

    settings = result["settings"]
    assert settings["model"] == "dummy-model"
    assert settings["generation"]["do_sample"] is False and settings["generation"]["max_new_tokens"] == 64
    assert settings["chat_format"]["format"] == "chat_template" and settings["judges"][0]["name"] == "keyword"
    assert settings["tasks"][f"file:{harmful}"]["files"][0]["sha256"]

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md", "eval.png", "generations.jsonl"]
    assert json.loads((out / "eval.json").read_text())["sets"][f"file:{benign}"]["over_refusal_rate"] == 0.25
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 22 and rows[0]["verdicts"]["keyword"]["refused"] is True
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "eval.md").read_text()
    assert "| 60.0% [" in table and "over_refusal_rate" in table
    assert "file:" in comparison_table({"before": result, "after": result})


def test_unknown_names_fail_before_generation(tokenizer):
    model = DummyModel(tokenizer)
    with pytest.raises(UnknownNameError, match="did you mean 'advbench'"):
        evaluate(model, tokenizer, safety=["advbnch"])
    with pytest.raises(UnknownNameError, match="did you mean 'keyword'"):
        evaluate(model, tokenizer, safety=["advbench"], judges=["keywrod"])
    with pytest.raises(ValueError, match="is a safety task, not utility"):
        evaluate(model, tokenizer, utility=["advbench"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(model, tokenizer)
    assert model.calls == []


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not available")
def test_public_sets_end_to_end_with_limit(tokenizer, tmp_path):
    model = DummyModel(tokenizer, {"bomb": "I'm sorry."}, default="Sure.")
    result = evaluate(model, tokenizer, safety="advbench,harmbench", overrefusal=["stl-physical-safe"],
                      utility=["sst2"], data_dir=SHARED_DATA, limit=20, batch_size=8)
    assert result["sets"]["advbench"]["n"] == 20 and result["sets"]["harmbench"]["n"] == 20
    assert "per_category" in result["sets"]["harmbench"]
    assert result["sets"]["stl-physical-safe"]["over_refusal_rate"] == 0.0
    assert result["settings"]["tasks"]["advbench"]["files"][0]["sha256"].startswith("f369cb11")


class _ScoringHandler(QuietHandler):
    def do_POST(self):  # noqa: N802
        score = 5 if 'Model Response: "Sure' in self.read_json()["messages"][0]["content"] else 1
        self.send_chat_answer(f"#thescore: {score}")


def test_several_judges_side_by_side(tokenizer, prompt_files):
    harmful, benign, _ = prompt_files
    with LocalServer(_ScoringHandler) as server:
        result = evaluate(DummyModel(tokenizer, _responder), tokenizer, safety=[f"file:{harmful}"],
                          overrefusal=[f"file:{benign}"], judges=["keyword", "llm"],
                          judge_options={"llm": {"base_url": server.root + "/v1", "model": "m", "workers": 2}})
    s = result["sets"][f"file:{harmful}"]
    assert s["judge"] == "keyword" and s["judges"]["keyword"]["harmful_rate"] == 0.6
    assert s["judges"]["llm"]["harmful_rate"] == 0.6 and s["judges"]["llm"]["mean_score"] == pytest.approx(3.4)
    assert "llm" not in result["sets"][f"file:{benign}"].get("judges", {})


def test_generations_are_kept_when_the_judge_endpoint_is_down(tokenizer, prompt_files, tmp_path):
    harmful, _, _ = prompt_files
    port = closed_port()
    out = tmp_path / "run"
    with pytest.raises(JudgeEndpointError, match="unreachable"):
        evaluate(DummyModel(tokenizer, _responder), tokenizer, safety=[f"file:{harmful}"], judges=["llm"],
                 judge_options={"llm": {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "max_retries": 1,
                                        "backoff": 0.01, "workers": 1}}, out_dir=out)
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and rows[0]["response"].startswith("I'm sorry")
    assert not (out / "eval.json").exists()
