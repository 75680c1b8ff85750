"""Diagnostics: reproduce the SPF paper's three findings on any model (``spftune analyze``).

1. low rank: CER(k) of safety vs utility gradients per weight matrix (:mod:`spftune.analysis.spectra`);
2. conflict: utility/safety cosines and the share of steps SPF's gate fires (:mod:`spftune.analysis.conflict`);
3. one sample is enough: single-vs-batch subspace overlap and category transfer (:mod:`spftune.analysis.overlap`).

Everything returns numbers and dataclasses; only :mod:`spftune.analysis.plots` imports matplotlib.
"""

from spftune.analysis.conflict import gradient_inner, gradient_norm_sq
from spftune.analysis.overlap import chance_overlap, overlap_curve
from spftune.analysis.result import (
    AnalysisResult,
    CategoryTransfer,
    ConflictSummary,
    CurveSummary,
    Finding,
    FindingThresholds,
    OverlapSummary,
)
from spftune.analysis.runner import analyze, write_outputs
from spftune.analysis.spectra import gradient_basis, spectra

__all__ = [
    "AnalysisResult",
    "CategoryTransfer",
    "ConflictSummary",
    "CurveSummary",
    "Finding",
    "FindingThresholds",
    "OverlapSummary",
    "analyze",
    "chance_overlap",
    "gradient_basis",
    "gradient_inner",
    "gradient_norm_sq",
    "overlap_curve",
    "spectra",
    "write_outputs",
]
