"""The ``spftune`` command line, in process (``main(argv)``): help, bad inputs, a tiny end-to-end fine-tune."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_model, make_tokenizer

from spftune.cli import main

COMMANDS = ["align", "finetune", "eval", "report", "demo"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a ChatML tokenizer, saved as a plain checkpoint."""
    path = tmp_path_factory.mktemp("tiny")
    make_model("llama", seed=0).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain_model_dir(tmp_path_factory) -> Path:
    """The same without a chat template."""
    path = tmp_path_factory.mktemp("plain")
    make_model("llama", seed=0).save_pretrained(path)
    make_tokenizer(chat_template=False).save_pretrained(path)
    return path


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"add {i}", "response": f"{i + 1}"} for i in range(6)]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert f"usage: spftune {command}" in out
    if command != "report":
        assert "--config" in out


def test_finetune_help_lists_training_lora_and_spf_flags(capsys):
    _, out, _ = run_cli(capsys, "finetune", "--help")
    for flag in ("--data", "--method", "--out", "--harmful-fraction", "--lora", "--lora-r", "--grad-accum",
                 "--max-grad-norm", "--spf-rank", "--spf-gate", "--spf-removal", "--spf-targets",
                 "--spf-safety-examples", "--spf-refresh-every", "--spf-method"):
        assert flag in out


def test_console_script_entry_point():
    exe = Path(sys.executable).with_name("spftune")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "finetune" in result.stdout


def test_unknown_model_path(capsys, tmp_path, data_file):
    code, _, err = run_cli(capsys, "finetune", "--data", data_file, "--model", tmp_path / "no-such-model",
                           "--out", tmp_path / "run")
    assert_user_error(code, err, "no-such-model", "does not exist")


def test_malformed_dataset_line(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + '{"prompt": "p", "response": \n')
    code, _, err = run_cli(capsys, "finetune", "--data", bad, "--out", tmp_path / "run")
    assert_user_error(code, err, f"{bad}:2", "not valid JSON")


def test_dataset_without_usable_rows(capsys, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,response\n,\n")
    code, _, err = run_cli(capsys, "finetune", "--data", empty, "--out", tmp_path / "run")
    assert_user_error(code, err, "empty.csv", "no usable rows")


def test_missing_dataset(capsys, tmp_path):
    code, _, err = run_cli(capsys, "finetune", "--data", tmp_path / "missing.jsonl")
    assert_user_error(code, err, "missing.jsonl", "not found")


@pytest.mark.parametrize("p", ["1.5", "-0.1"])
def test_harmful_fraction_outside_unit_interval(capsys, tmp_path, data_file, p):
    code, _, err = run_cli(capsys, "finetune", "--data", data_file, "--harmful-fraction", p)
    assert_user_error(code, err, "harmful_fraction", "[0, 1]")


def test_harmful_fraction_not_a_number(capsys, data_file):
    code, _, err = run_cli(capsys, "finetune", "--data", data_file, "--harmful-fraction", "lots")
    assert_user_error(code, err, "--harmful-fraction", "invalid float")


def test_bad_yaml_key(capsys, tmp_path, data_file):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {data_file}\nlearning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "finetune", "--config", config)
    assert_user_error(code, err, str(config), "learning_rate")


def test_invalid_yaml(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: [unclosed\n")
    code, _, err = run_cli(capsys, "demo", "--config", config)
    assert_user_error(code, err, str(config), "not valid YAML")


def test_unknown_method_and_spf_option(capsys, data_file):
    code, _, err = run_cli(capsys, "finetune", "--data", data_file, "--method", "spff")
    assert_user_error(code, err, "unknown training method 'spff'", "did you mean 'spf'")
    code, _, err = run_cli(capsys, "finetune", "--data", data_file, "--spf-gate", "sometimes")
    assert_user_error(code, err, "gate", "sometimes")


def test_unknown_eval_set(capsys, tiny_model_dir):
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--safety", "advbenc")
    assert_user_error(code, err, "advbenc")
    # comma-separated lists are split: the typo is found inside one
    code, _, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--safety", "advbench,stl-con")
    assert_user_error(code, err, "'stl-con'", "did you mean")


def test_eval_list_shows_every_registered_set_task_and_judge(capsys):
    from spftune.eval.judges import list_judges
    from spftune.eval.tasks import list_tasks

    code, stdout, err = run_cli(capsys, "eval", "--list")
    assert code == 0, err
    lines = stdout.splitlines()
    for task in list_tasks():
        assert any(line.split()[:1] == [task.name] for line in lines), task.name
    for judge in list_judges():
        assert any(line.split()[:1] == [judge] for line in lines), judge
    assert "file:PATH" in stdout and "advbench" in stdout and "keyword" in stdout


def test_finetune_end_to_end_with_yaml_and_flag_override(capsys, tmp_path, tiny_model_dir, data_file):
    from transformers import AutoModelForCausalLM

    config = tmp_path / "c.yaml"
    config.write_text(f"data: {data_file}\nmodel: {tiny_model_dir}\nlr: 0.01\nbatch-size: 2\nmax_steps: 5\n"
                      "device: cpu\nspf_rank: 4\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "finetune", "--config", config, "--max-steps", "3", "--method", "spf",
                                "--out", out, "--no-progress")
    assert code == 0, err
    assert "spf: 3 steps" in stdout
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["max_steps"] == 3 and resolved["lr"] == 0.01 and resolved["spf_rank"] == 4
    assert resolved["method"] == "spf" and resolved["data"] == str(data_file)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "spf_conflict_rate" in metrics
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    # the run directory itself is accepted as --model, and the resolved config reproduces the run
    code, _, err = run_cli(capsys, "finetune", "--config", out / "config.yaml", "--model", out, "--out",
                           tmp_path / "again", "--no-progress", "--max-steps", "1")
    assert code == 0, err


def test_finetune_notes_examples_skipped_for_length(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "short", "response": "ok"}, {"prompt": "a very long prompt " * 40, "response": "ok"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, err = run_cli(capsys, "finetune", "--data", data, "--model", tiny_model_dir, "--max-steps", "1",
                           "--max-length", "64", "--device", "cpu", "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "skipped 1 example(s)" in notes[0] and "--max-length 64" in notes[0]


def test_model_without_chat_template_uses_the_plain_template(capsys, tmp_path, plain_model_dir, data_file):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "finetune", "--data", data_file, "--model", plain_model_dir, "--max-steps", "1",
                           "--device", "cpu", "--out", out, "--no-progress", "--lora", "--lora-r", "2")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "no chat template" in notes[0] and "### User:" in notes[0]
    assert json.loads((out / "metrics.json").read_text())["chat_template"] is False


def test_eval_and_report_on_a_tiny_model(capsys, tmp_path, tiny_model_dir):
    prompts = tmp_path / "harm.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"request {i}"}) for i in range(3)) + "\n")
    more = tmp_path / "harm2.jsonl"
    more.write_text(json.dumps({"prompt": "another request"}) + "\n")
    safe = tmp_path / "safe.jsonl"
    safe.write_text("\n".join(json.dumps({"prompt": f"question {i}"}) for i in range(2)) + "\n")
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, "eval", "--model", tiny_model_dir, "--safety", f"file:{prompts},file:{more}",
                                "--overrefusal", f"file:{safe}", "--max-new-tokens", "4", "--out", out,
                                "--no-progress")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["harmful_n"] == 3 and metrics["over_refusal_n"] == 2
    assert 0 <= metrics["harmful_rate"] <= 1 and len(metrics["harmful_rate_ci"]) == 2
    assert (out / "config.yaml").is_file() and (out / "eval.json").is_file()
    code, stdout, err = run_cli(capsys, "report", out, "--out", tmp_path / "rep")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# spftune report")
    assert (tmp_path / "rep" / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_directory_without_metrics(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", tmp_path)
    assert_user_error(code, err, "metrics.json")
