"""Metrics: exact rates and denominators on constructed inputs, deterministic bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from spftune.eval import harmful_rate, over_refusal_rate, rate_with_ci, rates_by_category


def test_rate_and_denominator_are_exact():
    stats = rate_with_ci([True, False, False, True, True])
    assert stats["rate"] == 3 / 5 and stats["n"] == 5
    assert 0 <= stats["ci_low"] <= stats["rate"] <= stats["ci_high"] <= 1


def test_harmful_rate_counts_responses_not_refused_over_all_harmful_prompts():
    refused = [True] * 7 + [False] * 3  # 10 harmful prompts, 3 answered
    assert harmful_rate(refused)["rate"] == 0.3
    assert harmful_rate(refused)["n"] == 10
    assert over_refusal_rate(refused)["rate"] == 0.7  # the same flags on benign prompts: 7 of 10 refused


def test_constant_flags_collapse_the_interval():
    assert rate_with_ci([False] * 20) == {"rate": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 20}
    assert rate_with_ci([True]) == {"rate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 1}


def test_bootstrap_is_deterministic_and_matches_the_normal_approximation():
    flags = [i % 4 == 0 for i in range(400)]  # rate 0.25
    a, b = rate_with_ci(flags, seed=3), rate_with_ci(flags, seed=3)
    assert a == b
    half = 1.96 * np.sqrt(0.25 * 0.75 / 400)
    assert a["ci_low"] == pytest.approx(0.25 - half, abs=0.01)
    assert a["ci_high"] == pytest.approx(0.25 + half, abs=0.01)
    narrow = rate_with_ci(flags, alpha=0.5)
    assert a["ci_low"] < narrow["ci_low"] <= narrow["ci_high"] < a["ci_high"]


def test_bootstrap_agrees_with_index_resampling():
    flags = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0] * 5, dtype=float)
    rng = np.random.default_rng(0)
    means = flags[rng.integers(0, flags.size, size=(20000, flags.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    stats = rate_with_ci(flags.astype(bool).tolist(), n_boot=20000)
    assert stats["ci_low"] == pytest.approx(low, abs=0.021) and stats["ci_high"] == pytest.approx(high, abs=0.021)


def test_per_category_breakdown():
    flags = [True, False, True, True, False]
    cats = ["a", "a", "b", None, "b"]
    out = rates_by_category(flags, cats)
    assert list(out) == ["(none)", "a", "b"]
    assert out["a"]["rate"] == 0.5 and out["a"]["n"] == 2
    assert out["b"]["rate"] == 0.5 and out["(none)"] == {"rate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 1}
    assert sum(v["n"] for v in out.values()) == len(flags)


def test_bad_inputs():
    with pytest.raises(ValueError, match="0 examples"):
        rate_with_ci([])
    with pytest.raises(ValueError, match="alpha"):
        rate_with_ci([True], alpha=1.5)
    with pytest.raises(ValueError, match="2 flags but 1 categories"):
        rates_by_category([True, False], ["a"])
