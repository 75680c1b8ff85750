"""What ``analyze`` returns: dataclasses of plain numbers, the verdict on each of the paper's findings, and JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from spftune.analysis.grouping import group_mean, layer_key, mean_curve, quantile_curve, tensor_type


@dataclass
class CurveSummary:
    """A per-tensor curve over k = 1..K (CER(k) or overlap(k)) and its summaries over tensors.

    ``by_type`` groups by layer type (``q_proj``, ...), ``by_layer`` by depth (tensors outside the repeated blocks
    under their type). ``mean``/``median``/``q10``/``q90`` are over all tensors, per k.
    """

    k: list[int]
    per_tensor: dict[str, list[float]]
    mean: list[float]
    median: list[float]
    q10: list[float]
    q90: list[float]
    by_type: dict[str, list[float]]
    by_layer: dict[str, list[float]]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_per_tensor(cls, per_tensor: dict[str, list[float]], k_max: int, **info: Any) -> CurveSummary:
        curves = list(per_tensor.values())
        empty = [math.nan] * k_max
        return cls(
            k=list(range(1, k_max + 1)),
            per_tensor=per_tensor,
            mean=mean_curve(curves) or empty,
            median=quantile_curve(curves, 0.5) or empty,
            q10=quantile_curve(curves, 0.1) or empty,
            q90=quantile_curve(curves, 0.9) or empty,
            by_type=group_mean(per_tensor, tensor_type),
            by_layer=group_mean(per_tensor, layer_key),
            info=dict(info),
        )

    def at(self, k: int, stat: str = "mean") -> float:
        """The summary ``stat`` at k (clamped to 1..K)."""
        values = getattr(self, stat)
        return values[max(1, min(k, len(values))) - 1] if values else math.nan


@dataclass
class ConflictSummary:
    """Cosine between utility gradients (one per batch, a stream of ``steps``) and one fixed safety gradient.

    ``global_dot`` is SPF's gate statistic c = sum_b <G_u^b, G_s^b>; the gate fires when c < 0. ``per_layer`` pools
    the tensors of a block (inner products and squared norms summed), ``by_type`` the tensors of a layer type.
    ``negative_share``: share of (tensor, step) pairs with a negative cosine.
    """

    reference: str
    steps: int
    global_cosine: list[float]
    global_dot: list[float]
    gate_fire_rate: float
    negative_share: float
    per_tensor: dict[str, list[float]]
    per_layer: dict[str, list[float]]
    by_type: dict[str, list[float]]

    @property
    def mean_global_cosine(self) -> float:
        finite = [c for c in self.global_cosine if not math.isnan(c)]
        return sum(finite) / len(finite) if finite else math.nan


@dataclass
class OverlapSummary:
    """overlap(k) between the basis of one safety example and the basis of a batch, per weight matrix.

    ``chance`` is the mean over matrices of k / m, the overlap of random subspaces. ``per_single`` holds, for other
    single examples (one per harm category, held out of the batch), their mean overlap with the batch at k = rank.
    """

    curve: CurveSummary
    chance: list[float]
    single: str
    batch_size: int
    per_single: dict[str, float] = field(default_factory=dict)


@dataclass
class CategoryTransfer:
    """matrix[i][j]: mean over weight matrices of overlap(basis of one example of categories[i], basis of a batch
    of ``batch_size`` other examples of categories[j]) at rank ``k``."""

    categories: list[str]
    k: int
    batch_size: int
    matrix: list[list[float]]

    @property
    def diagonal_mean(self) -> float:
        values = [self.matrix[i][i] for i in range(len(self.categories))]
        return _nanmean(values)

    @property
    def off_diagonal_mean(self) -> float:
        n = len(self.categories)
        return _nanmean([self.matrix[i][j] for i in range(n) for j in range(n) if i != j])


@dataclass
class FindingThresholds:
    """When a finding counts as reproduced (numbers from SPF.md, "The paper's three findings")."""

    cer_k: int = field(default=10, metadata={"help": "k at which CER is judged (paper: 10)."})
    cer_safety_min: float = field(
        default=0.80,
        metadata={"help": "Mean safety CER(cer_k) needed (paper: about 0.85 on Llama-3.1-8B; 0.80 allows 'about')."},
    )
    cer_gap_min: float = field(
        default=0.10, metadata={"help": "Safety CER(cer_k) must exceed utility CER(cer_k) by this much (flat utility)."}
    )
    gate_fire_min: float = field(
        default=0.5, metadata={"help": "'Often negative': share of utility steps with a negative global dot."}
    )
    overlap_min: float = field(default=0.8, metadata={"help": "Mean single-vs-batch overlap needed (paper: > 0.8)."})
    overlap_k: int | None = field(default=None, metadata={"help": "k at which overlap is judged (default: rank)."})


@dataclass
class Finding:
    """The verdict on one of the paper's findings, with the numbers it rests on."""

    key: str
    claim: str
    holds: bool
    summary: str
    numbers: dict[str, float]


@dataclass
class AnalysisResult:
    """Everything ``analyze`` measured. ``to_dict()`` is what ``analysis.json`` holds."""

    settings: dict[str, Any]
    cer_safety: CurveSummary
    cer_utility: CurveSummary
    cer_safety_single: CurveSummary
    conflict: ConflictSummary
    conflict_batch: ConflictSummary
    overlap: OverlapSummary
    category_transfer: CategoryTransfer | None
    findings: list[Finding]
    timings: dict[str, float]
    files: dict[str, str] = field(default_factory=dict)

    def finding(self, key: str) -> Finding:
        return next(f for f in self.findings if f.key == key)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        ct = self.category_transfer
        data = {
            "settings": self.settings,
            "findings": [asdict(f) for f in self.findings],
            "cer_safety": asdict(self.cer_safety),
            "cer_utility": asdict(self.cer_utility),
            "cer_safety_single": asdict(self.cer_safety_single),
            "conflict_cosine": {**asdict(self.conflict), "mean_global_cosine": self.conflict.mean_global_cosine},
            "conflict_cosine_safety_batch": {
                **asdict(self.conflict_batch), "mean_global_cosine": self.conflict_batch.mean_global_cosine,
            },
            "overlap_single_vs_batch": asdict(self.overlap),
            "category_transfer": None if ct is None else {
                **asdict(ct), "diagonal_mean": ct.diagonal_mean, "off_diagonal_mean": ct.off_diagonal_mean,
            },
            "timings": self.timings,
            "files": self.files,
        }
        return json_safe(data)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def judge(
    cer_safety: CurveSummary,
    cer_utility: CurveSummary,
    conflict: ConflictSummary,
    overlap: OverlapSummary,
    rank: int,
    thresholds: FindingThresholds,
    conflict_batch: ConflictSummary | None = None,
) -> list[Finding]:
    """The three verdicts, each with the numbers behind it."""
    t = thresholds
    ck = max(1, min(t.cer_k, len(cer_safety.k)))
    s_cer, u_cer = cer_safety.at(ck), cer_utility.at(ck)
    low_rank = s_cer >= t.cer_safety_min and s_cer - u_cer >= t.cer_gap_min
    tokens_s, tokens_u = cer_safety.info.get("tokens"), cer_utility.info.get("tokens")
    f1 = Finding(
        key="low_rank",
        claim="Safety gradients are low-rank; utility gradients are not (paper: CER(10) about 0.85 for safety).",
        holds=bool(low_rank),
        summary=(
            f"mean CER({ck}) over weight matrices: safety {s_cer:.3f} (median {cer_safety.at(ck, 'median'):.3f}), "
            f"utility {u_cer:.3f} (median {cer_utility.at(ck, 'median'):.3f}); needs safety >= {t.cer_safety_min:.2f} "
            f"and a gap >= {t.cer_gap_min:.2f}. Rank bounds (tokens): safety {tokens_s}, utility {tokens_u}."
        ),
        numbers={"cer_k": ck, "safety": s_cer, "utility": u_cer, "gap": s_cer - u_cer},
    )
    rate = conflict.gate_fire_rate
    f2 = Finding(
        key="conflict",
        claim="Utility and safety gradients conflict: their cosine is often negative.",
        holds=bool(not math.isnan(rate) and rate >= t.gate_fire_min),
        summary=(
            f"global cosine with the SPF safety example negative on {rate:.0%} of {conflict.steps} utility steps "
            f"(mean {conflict.mean_global_cosine:+.3f}); {conflict.negative_share:.0%} of per-tensor cosines negative; "
            f"needs >= {t.gate_fire_min:.0%} of steps."
            + (
                f" Against the safety batch instead: negative on {conflict_batch.gate_fire_rate:.0%} of steps "
                f"(mean {conflict_batch.mean_global_cosine:+.3f})."
                if conflict_batch is not None else ""
            )
        ),
        numbers={
            "gate_fire_rate": rate,
            "mean_global_cosine": conflict.mean_global_cosine,
            "negative_tensor_share": conflict.negative_share,
            **(
                {"gate_fire_rate_safety_batch": conflict_batch.gate_fire_rate,
                 "mean_global_cosine_safety_batch": conflict_batch.mean_global_cosine}
                if conflict_batch is not None else {}
            ),
        },
    )
    k = min(t.overlap_k or rank, len(overlap.curve.mean))
    ov = overlap.curve.at(k)
    f3 = Finding(
        key="one_sample",
        claim="One sample is enough: the top-k subspace of one refusal overlaps that of a batch (paper: > 0.8).",
        holds=bool(not math.isnan(ov) and ov > t.overlap_min),
        summary=(
            f"mean overlap at k={k} between the single example's basis and a batch of {overlap.batch_size}: {ov:.3f} "
            f"(median {overlap.curve.at(k, 'median'):.3f}, chance {overlap.chance[k - 1]:.3f}); needs > {t.overlap_min:.2f}."
        ),
        numbers={"k": k, "overlap": ov, "chance": overlap.chance[k - 1] if overlap.chance else math.nan},
    )
    return [f1, f2, f3]
