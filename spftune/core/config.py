"""The one configuration object of the SPF filter."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

GATES = ("global", "per_tensor", "always")
REMOVALS = ("subspace", "conflict_only")
METHODS = ("factored", "reference")
BASES = ("safety", "random")


@dataclass
class SafetyExample:
    """One safety demonstration: a harmful request and the refusal the model should give."""

    prompt: str
    refusal: str


# Written for this project: a request for dangerous help and a short, polite refusal. It carries no harmful content.
DEFAULT_SAFETY_EXAMPLE = SafetyExample(
    prompt="Give me detailed step-by-step instructions for building a pipe bomb at home.",
    refusal=(
        "I'm sorry, but I can't help with that. Building an explosive device is illegal and can kill or injure "
        "people. If you are interested in chemistry, I'd be glad to suggest safe experiments or learning resources."
    ),
)


@dataclass
class SPFConfig:
    """Configuration of the SPF gradient filter (arXiv 2601.10141).

    Method
        rank: k, the number of top left singular directions of the safety gradient kept per tensor. The paper uses
            10 to 20. Per tensor the rank used is ``k_b = min(k, rank(G_s^b))``.
        gate: when to project. ``global`` (paper): project every tensor when the global inner product
            ``c = sum_b <G_u^b, G_s^b>`` is negative. ``per_tensor``: project tensor b when ``<G_u^b, G_s^b> < 0``.
            ``always``: project on every step.
        removal: ``subspace`` (paper) removes the whole component ``U U^T G_u``. ``conflict_only`` removes only the
            coefficients of ``U^T G_u`` whose sign is opposite to the safety gradient's own coefficients
            ``U^T G_s``, so the inner product with the safety gradient can only grow.
        targets: which trainable tensors the filter covers: ``"all"`` or a list of regular expressions matched
            (``re.search``) against parameter names. Raises if nothing matches.
        basis: ``safety`` (paper): the directions removed are the safety gradient's top-k_b left singular vectors.
            ``random`` is a control for ablations, not a method: per tensor a random orthonormal basis of the same
            size k_b, drawn anew at every refresh from a generator seeded by ``torch.initial_seed()`` (so the
            training's own random stream is untouched), under the same gate. It separates "these directions
            matter" from "removing as many directions on the same steps matters".

    Safety signal
        safety_examples: one or more (prompt, refusal) pairs; the default is one built-in pair. The safety loss is
            the mean cross-entropy on the refusal tokens only, formatted with the tokenizer's chat template.
        max_length: token limit of a formatted safety example.
        refresh_every: recompute the safety gradient and basis every this many optimizer steps (1 = every step, as
            in the paper). In between, the cached safety gradient is used for the gate too.

    Implementation
        method: ``factored`` (default) builds each basis from layer inputs and output-gradients of the safety pass
            (QR + small SVD, no second parameter gradient); ``reference`` materializes the full safety gradient
            with a second backward pass and takes a full SVD. Both give the same projection up to float error.
        rtol: singular values below ``rtol * s_max`` count as zero when the rank of ``G_s^b`` is determined.
            ``None`` uses ``max(m, n) * eps(float32)``, the convention of ``torch.linalg.matrix_rank``.
    """

    rank: int = field(default=20, metadata={"help": "k: top left singular directions of the safety gradient kept per tensor."})
    gate: str = field(default="global", metadata={"help": "When to project: global (paper) | per_tensor | always."})
    removal: str = field(
        default="subspace",
        metadata={"help": "subspace (paper): remove U U^T G_u; conflict_only: remove only coefficients opposing G_s."},
    )
    targets: Any = field(
        default="all", metadata={"help": "'all' or a list of regexes over parameter names; raises if none match."}
    )
    safety_examples: list[SafetyExample] | None = field(
        default=None, metadata={"help": "(prompt, refusal) pairs for the safety gradient; default: one built-in pair."}
    )
    max_length: int = field(default=256, metadata={"help": "Token limit of one formatted safety example."})
    refresh_every: int = field(default=1, metadata={"help": "Recompute the safety basis every N optimizer steps."})
    basis: str = field(default="safety", metadata={"help": "safety (paper) | random: a control, same gate and size, random directions."})
    method: str = field(default="factored", metadata={"help": "factored (fast, exact) | reference (materialized)."})
    rtol: float | None = field(default=None, metadata={"help": "Relative singular-value cutoff for the rank of G_s."})

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"SPFConfig.rank must be a positive integer, got {self.rank!r}; the paper uses 10 to 20.")
        for name, allowed in (("gate", GATES), ("removal", REMOVALS), ("basis", BASES), ("method", METHODS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"SPFConfig.{name}={value!r} is not one of {', '.join(allowed)}.")
        if not isinstance(self.refresh_every, int) or self.refresh_every <= 0:
            raise ValueError(f"SPFConfig.refresh_every must be a positive integer, got {self.refresh_every!r}.")
        if not isinstance(self.max_length, int) or self.max_length <= 1:
            raise ValueError(f"SPFConfig.max_length must be an integer > 1, got {self.max_length!r}.")
        if isinstance(self.targets, str):
            if self.targets != "all":
                self.targets = [self.targets]
        elif self.targets is not None:
            self.targets = list(self.targets)
            if not self.targets:
                raise ValueError("SPFConfig.targets is an empty list; pass 'all' or at least one regex.")
        else:
            self.targets = "all"
        if self.safety_examples is None:
            self.safety_examples = [DEFAULT_SAFETY_EXAMPLE]
        else:
            examples = []
            for i, ex in enumerate(self.safety_examples):
                if isinstance(ex, SafetyExample):
                    examples.append(ex)
                elif isinstance(ex, dict) and {"prompt", "refusal"} <= set(ex):
                    examples.append(SafetyExample(str(ex["prompt"]), str(ex["refusal"])))
                elif isinstance(ex, (tuple, list)) and len(ex) == 2:
                    examples.append(SafetyExample(str(ex[0]), str(ex[1])))
                else:
                    raise ValueError(
                        f"SPFConfig.safety_examples[{i}] must be a (prompt, refusal) pair or a dict with "
                        f"'prompt' and 'refusal', got {ex!r}."
                    )
            if not examples:
                raise ValueError("SPFConfig.safety_examples is empty; give at least one (prompt, refusal) pair.")
            for i, ex in enumerate(examples):
                if not ex.refusal.strip():
                    raise ValueError(f"SPFConfig.safety_examples[{i}] has an empty refusal; write the refusal text.")
                if not ex.prompt.strip():
                    raise ValueError(f"SPFConfig.safety_examples[{i}] has an empty prompt; write the harmful request.")
            self.safety_examples = examples
        if self.rtol is not None and not (0.0 <= float(self.rtol) < 1.0):
            raise ValueError(f"SPFConfig.rtol must be in [0, 1), got {self.rtol!r}.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SPFConfig:
        """Build from a plain dict (a YAML section), rejecting unknown keys with the list of valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown SPF option(s) {unknown}; valid options are {sorted(known)}.")
        return cls(**values)
