"""Safety and over-refusal prompt sets.

Public sets are read through :mod:`spftune.eval.datasets` (local data directory first, checksums pinned). The
upstream URLs are the exact files the reference copies in the project's shared data were taken from (repository @
commit, see that folder's README); their SHA-256 values are those of ``SHA256SUMS`` there.

Sets that cannot be redistributed or that are gated (JailbreakBench, StrongREJECT, HEx-PHI) are registered too, but
read only from a local data directory (HEx-PHI also with the user's own Hugging Face token): their loaders say how to
get the files. Nothing is faked or bundled.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from spftune.eval.datasets import DataSource, LoadContext
from spftune.eval.tasks import Example, register_task

_SAFETUNEBED = "https://raw.githubusercontent.com/criticalml-uw/SafeTuneBed/099ea98b8c81b76b04d4ef2a7d7f7c8f16d07a8d"
_ADVERSARIALLM = "https://raw.githubusercontent.com/busycalibrating/AdversariaLLM/f970939"
_STL = "https://raw.githubusercontent.com/vinid/safety-tuned-llamas/36a4b8d"

ADVBENCH = DataSource(
    "advbench/advbench.json",
    f"{_SAFETUNEBED}/data/advbench_full.json",
    "f369cb115383835d87e671918d922437bba7d882d30e8db99a85d11b67959868",
    "MIT",
)
HARMBENCH_VAL = DataSource(
    "harmbench/harmbench_behaviors_text_val.csv",
    f"{_ADVERSARIALLM}/data/behavior_datasets/harmbench_behaviors_text_val.csv",
    "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
    "MIT",
)
REFUSAL_DIRECTION_HARMFUL_VAL = DataSource(
    "refusal_direction/harmful_val.json",
    f"{_ADVERSARIALLM}/data/refusal_direction/harmful_val.json",
    "305f1d1e6dfa6c50a32d24a18ef815f42b5441eb83e6d7767d242107162fd9f4",
    "MIT (mixed upstream)",
)
REFUSAL_DIRECTION_HARMLESS_VAL = DataSource(
    "refusal_direction/harmless_val.json",
    f"{_ADVERSARIALLM}/data/refusal_direction/harmless_val.json",
    "772010758e7d771ef4c7e5e4acdfd7598dcece1a6f383f20d382f640913a2a4d",
    "CC BY-NC 4.0 (Alpaca)",
)


def _stl(name: str, sha256: str) -> DataSource:
    return DataSource(
        f"safety_tuned_llamas/evaluation/{name}.json", f"{_STL}/data/evaluation/{name}.json", sha256, "CC BY-NC 4.0"
    )


STL_PHYSICAL_UNSAFE = _stl("I-PhysicalSafetyUnsafe", "16324a2f1ded933e8c7a9f6c7d3924130f76260d03f9df2205e0a25c02de8aae")
STL_PHYSICAL_SAFE = _stl("I-PhysicalSafetySafe", "34c874532623e405fb574f0fa8d6b86cbecce0e3340f67b146a6a6bc2453bed6")
STL_CONA = _stl("I-CoNa", "e07d92e376198e60ac1004902dc3fec46513ac70b08d855b4101288b8270d62a")
STL_CONTROVERSIAL = _stl("I-Controversial", "0590fc6ee97a39c6a43adc21fe5a4ccbf546ea52e89a32757db6ea3d46ce65c4")
STL_ALPACA = _stl("I-Alpaca", "30db84ee303df15b653566437ccf1a2fc837caac99a570915d720f65f041fe6d")

JAILBREAKBENCH = DataSource(
    "jailbreakbench/harmful-behaviors.csv",
    how_to_get=(
        "JailbreakBench behaviors are not bundled: download data/harmful-behaviors.csv from "
        "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors (MIT) into <data-dir>/jailbreakbench/"
    ),
)
STRONGREJECT = DataSource(
    "strongreject/strongreject_dataset.csv",
    how_to_get=(
        "StrongREJECT is not bundled: download strongreject_dataset/strongreject_dataset.csv from "
        "https://github.com/alexandrasouly/strongreject (MIT) into <data-dir>/strongreject/"
    ),
)
HEX_PHI_REPO = "LLM-Tuning-Safety/HEx-PHI"
HEX_PHI_CATEGORIES = {
    1: "illegal_activity",
    2: "child_abuse_content",
    3: "hate_harass_violence",
    4: "malware",
    5: "physical_harm",
    6: "economic_harm",
    7: "fraud_deception",
    8: "adult_content",
    9: "political_campaigning",
    10: "privacy_violation",
    11: "tailored_financial_advice",
}
HEX_PHI_HOW_TO_GET = (
    "HEx-PHI is gated and never bundled: accept its terms at https://huggingface.co/datasets/LLM-Tuning-Safety/HEx-PHI "
    "with your Hugging Face account, then either put its category_*.csv files into <data-dir>/hex-phi/, or log in "
    "(`hf auth login` or HF_TOKEN) and pass allow_download=True (--download)"
)


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _require_columns(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> None:
    have = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; is this the right file?")


@register_task("advbench", kind="safety", sources=[ADVBENCH])
def load_advbench(ctx: LoadContext) -> list[Example]:
    """AdvBench harmful behaviors (Zou et al. 2023), 520 prompts."""
    return [Example(row["prompt"]) for row in _read_json(ctx.path(ADVBENCH))]


@register_task("harmbench", kind="safety", sources=[HARMBENCH_VAL])
def load_harmbench(ctx: LoadContext) -> list[Example]:
    """HarmBench text behaviors, validation split, standard behaviors only (41), by semantic category."""
    path = ctx.path(HARMBENCH_VAL)
    rows = _read_csv(path)
    _require_columns(path, rows, ("Behavior", "FunctionalCategory", "SemanticCategory"))
    return [
        Example(r["Behavior"], category=r["SemanticCategory"] or None)
        for r in rows
        if r["FunctionalCategory"] == "standard"
    ]


@register_task("refusal-direction-harmful", kind="safety", sources=[REFUSAL_DIRECTION_HARMFUL_VAL])
def load_refusal_direction_harmful(ctx: LoadContext) -> list[Example]:
    """Harmful instructions, validation split of Arditi et al.'s refusal-direction data (39), by category."""
    return [Example(r["instruction"], category=r.get("category")) for r in _read_json(ctx.path(REFUSAL_DIRECTION_HARMFUL_VAL))]


@register_task("refusal-direction-harmless", kind="overrefusal", sources=[REFUSAL_DIRECTION_HARMLESS_VAL])
def load_refusal_direction_harmless(ctx: LoadContext) -> list[Example]:
    """Harmless Alpaca instructions, validation split of the refusal-direction data (6,264; use a limit)."""
    return [Example(r["instruction"]) for r in _read_json(ctx.path(REFUSAL_DIRECTION_HARMLESS_VAL))]


def _stl_examples(ctx: LoadContext, source: DataSource) -> list[Example]:
    """safety-tuned-llamas evaluation files: ``{"instructions": [...], "inputs": [...]}`` (inputs usually empty)."""
    path = ctx.path(source)
    data = _read_json(path)
    if not isinstance(data, dict) or "instructions" not in data:
        raise ValueError(f"{path}: expected a JSON object with an 'instructions' list")
    instructions = data["instructions"]
    inputs = data.get("inputs") or []
    if inputs and len(inputs) != len(instructions):
        raise ValueError(f"{path}: 'inputs' has {len(inputs)} entries for {len(instructions)} instructions")
    if not inputs:
        inputs = [""] * len(instructions)
    return [Example(f"{i}\n\n{x}" if x else i) for i, x in zip(instructions, inputs, strict=True)]


@register_task("stl-physical-unsafe", kind="safety", sources=[STL_PHYSICAL_UNSAFE])
def load_stl_physical_unsafe(ctx: LoadContext) -> list[Example]:
    """safety-tuned-llamas I-PhysicalSafetyUnsafe: unsafe physical advice requests (100)."""
    return _stl_examples(ctx, STL_PHYSICAL_UNSAFE)


@register_task("stl-cona", kind="safety", sources=[STL_CONA])
def load_stl_cona(ctx: LoadContext) -> list[Example]:
    """safety-tuned-llamas I-CoNa: hateful-speech requests (178)."""
    return _stl_examples(ctx, STL_CONA)


@register_task("stl-controversial", kind="safety", sources=[STL_CONTROVERSIAL])
def load_stl_controversial(ctx: LoadContext) -> list[Example]:
    """safety-tuned-llamas I-Controversial: requests on controversial, discriminatory topics (40)."""
    return _stl_examples(ctx, STL_CONTROVERSIAL)


@register_task("stl-physical-safe", kind="overrefusal", sources=[STL_PHYSICAL_SAFE])
def load_stl_physical_safe(ctx: LoadContext) -> list[Example]:
    """safety-tuned-llamas I-PhysicalSafetySafe: safe physical-safety questions that sound risky (100)."""
    return _stl_examples(ctx, STL_PHYSICAL_SAFE)


@register_task("stl-alpaca", kind="overrefusal", sources=[STL_ALPACA])
def load_stl_alpaca(ctx: LoadContext) -> list[Example]:
    """safety-tuned-llamas I-Alpaca: ordinary benign instructions (50)."""
    return _stl_examples(ctx, STL_ALPACA)


@register_task("jailbreakbench", kind="safety", sources=[JAILBREAKBENCH])
def load_jailbreakbench(ctx: LoadContext) -> list[Example]:
    """JailbreakBench JBB-Behaviors harmful behaviors (100), by category; local file only."""
    path = ctx.path(JAILBREAKBENCH)
    rows = _read_csv(path)
    _require_columns(path, rows, ("Goal", "Category"))
    return [Example(r["Goal"], category=r["Category"] or None) for r in rows if r["Goal"].strip()]


@register_task("strongreject", kind="safety", sources=[STRONGREJECT])
def load_strongreject(ctx: LoadContext) -> list[Example]:
    """StrongREJECT forbidden prompts (313), by category; local file only."""
    path = ctx.path(STRONGREJECT)
    rows = _read_csv(path)
    _require_columns(path, rows, ("forbidden_prompt", "category"))
    return [Example(r["forbidden_prompt"], category=r["category"] or None) for r in rows if r["forbidden_prompt"].strip()]


def _hex_phi_dir(ctx: LoadContext) -> Path:
    if ctx.data_dir is not None and any((ctx.data_dir / "hex-phi").glob("category_*.csv")):
        return ctx.data_dir / "hex-phi"
    if not ctx.allow_download:
        where = f"in {ctx.data_dir / 'hex-phi'}" if ctx.data_dir is not None else "(no data directory given)"
        raise FileNotFoundError(f"HEx-PHI files not found {where}; {HEX_PHI_HOW_TO_GET}")
    from huggingface_hub import get_token, snapshot_download

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PermissionError(f"no Hugging Face token found; {HEX_PHI_HOW_TO_GET}")
    try:
        folder = snapshot_download(HEX_PHI_REPO, repo_type="dataset", token=token, allow_patterns=["category_*.csv"])
    except Exception as e:  # gated-repo and network errors come in many types
        raise PermissionError(f"could not download {HEX_PHI_REPO} ({type(e).__name__}); {HEX_PHI_HOW_TO_GET}") from None
    return Path(folder)


@register_task(
    "hex-phi",
    kind="safety",
    description="HEx-PHI (Qi et al. 2023): 30 harmful instructions per category; gated, the user's own copy or token",
)
def load_hex_phi(ctx: LoadContext) -> list[Example]:
    folder = _hex_phi_dir(ctx)
    examples: list[Example] = []
    for number, category in HEX_PHI_CATEGORIES.items():
        path = folder / f"category_{number}.csv"
        if not path.is_file():
            continue  # some categories are not distributed
        with open(path, encoding="utf-8", newline="") as f:
            examples += [Example(row[0].strip(), category=category) for row in csv.reader(f) if row and row[0].strip()]
        ctx.files.append({"relpath": f"hex-phi/{path.name}", "path": str(path), "sha256": ""})
    return examples


def _project_prompts(kind: str) -> list[Example]:
    try:
        from spftune.data import load_prompts
    except ImportError as e:
        raise RuntimeError(f"spftune.data.load_prompts is not available ({e}); reinstall spftune") from None
    return [
        Example(row["prompt"], category=row.get("category"), meta={k: v for k, v in row.items() if k not in ("prompt", "category")})
        for row in load_prompts(kind, "test")
    ]


@register_task("spftune-harmful", kind="safety")
def load_spftune_harmful(ctx: LoadContext) -> list[Example]:
    """The project's own harmful requests, test split, by harm category (shipped with the package)."""
    return _project_prompts("harmful")


@register_task("spftune-benign", kind="overrefusal")
def load_spftune_benign(ctx: LoadContext) -> list[Example]:
    """The project's own benign requests, test split: refusing them is over-refusal."""
    return _project_prompts("benign")


@register_task("spftune-overrefusal", kind="overrefusal")
def load_spftune_overrefusal(ctx: LoadContext) -> list[Example]:
    """The project's safe prompts that sound dangerous (XSTest-like), test split."""
    return _project_prompts("overrefusal")
