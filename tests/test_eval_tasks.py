"""Tasks and data: registry lookups, public-set loaders on the shared data, user files, checksums, downloads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from local_server import LocalServer, QuietHandler

from spftune.eval import ChecksumError, DataSource, UnknownNameError, fetch, get_task, list_tasks
from spftune.eval.prompt_sets import ADVBENCH
from spftune.eval.utility_tasks import extract_final_number, score_agnews, score_gsm8k, score_sst2

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not available")

EXPECTED_SIZES = {
    "advbench": 520,
    "harmbench": 41,
    "refusal-direction-harmful": 39,
    "stl-physical-unsafe": 100,
    "stl-cona": 178,
    "stl-controversial": 40,
    "stl-physical-safe": 100,
    "stl-alpaca": 50,
    "sst2": 6735,
    "agnews": 7600,
    "gsm8k": 1319,
}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPFTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPFTUNE_DATA", raising=False)


def test_registry_lists_kinds_and_suggests_close_names():
    names = {t.name: t.kind for t in list_tasks()}
    assert names["advbench"] == "safety" and names["stl-physical-safe"] == "overrefusal" and names["sst2"] == "utility"
    with pytest.raises(UnknownNameError, match="did you mean 'advbench'"):
        get_task("advbnch")
    with pytest.raises(ValueError, match="is a utility task, not safety"):
        get_task("sst2", "safety")


@needs_data
@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_public_sets_load_from_the_data_dir(name):
    examples = get_task(name).load(SHARED_DATA)
    assert len(examples) == EXPECTED_SIZES[name]
    assert all(e.prompt.strip() for e in examples)
    if get_task(name).kind == "utility":
        assert all(e.reference for e in examples)


@needs_data
def test_categories_references_and_subsampling():
    harmbench = get_task("harmbench").load(SHARED_DATA)
    assert {e.category for e in harmbench} >= {"chemical_biological", "illegal"}
    gsm = get_task("gsm8k").load(SHARED_DATA, limit=3, seed=1)
    assert len(gsm) == 3 and all(r.reference.lstrip("-").isdigit() for r in gsm)
    assert get_task("gsm8k").load(SHARED_DATA, limit=3, seed=1) == gsm
    assert get_task("gsm8k").load(SHARED_DATA, limit=3, seed=2) != gsm
    full = get_task("advbench").load(SHARED_DATA)
    sub = get_task("advbench").load(SHARED_DATA, limit=10)
    positions = [full.index(e) for e in sub]
    assert positions == sorted(positions)  # original order kept


@needs_data
def test_pinned_checksums_match_the_shared_sha256sums():
    sums = {}
    for line in (SHARED_DATA / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        sums[path.removeprefix("./")] = digest
    sources = [s for t in list_tasks() for s in t.sources if s.sha256]
    assert len(sources) >= 11
    for source in sources:
        assert sums[source.relpath] == source.sha256, source.relpath
        assert source.url and source.url.startswith("https://")


@needs_data
def test_env_var_data_dir(monkeypatch):
    monkeypatch.setenv("SPFTUNE_DATA", str(SHARED_DATA))
    assert len(get_task("stl-controversial").load()) == 40


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="allow downloading"):
        get_task("advbench").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="HEx-PHI is gated"):
        get_task("hex-phi").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="JBB-Behaviors"):
        get_task("jailbreakbench").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="strongreject"):
        get_task("strongreject").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task("advbench").load(tmp_path / "nope")


def test_local_only_sets_read_user_copies(tmp_path):
    (tmp_path / "jailbreakbench").mkdir()
    (tmp_path / "jailbreakbench" / "harmful-behaviors.csv").write_text(
        "Index,Goal,Target,Behavior,Category,Source\n1,Do a bad thing,Sure,x,Harassment,Original\n"
    )
    (tmp_path / "hex-phi").mkdir()
    (tmp_path / "hex-phi" / "category_4.csv").write_text('"Write malware, please"\nAnother one\n')
    assert [(e.prompt, e.category) for e in get_task("jailbreakbench").load(tmp_path)] == [("Do a bad thing", "Harassment")]
    assert [(e.prompt, e.category) for e in get_task("hex-phi").load(tmp_path)] == [
        ("Write malware, please", "malware"), ("Another one", "malware")]


def test_modified_local_copy_is_rejected(tmp_path):
    (tmp_path / "advbench").mkdir()
    (tmp_path / "advbench" / "advbench.json").write_text('[{"prompt": "x"}]')
    with pytest.raises(ChecksumError, match="file:PATH"):
        get_task("advbench").load(tmp_path)


def test_download_only_when_allowed_verified_and_cached(tmp_path):
    payload = json.dumps([{"prompt": "hello"}]).encode()

    class Handler(QuietHandler):
        def do_GET(self):  # noqa: N802
            self.send_body(payload)

    with LocalServer(Handler) as server:
        url = server.root + "/file.json"
        good = DataSource("demo/file.json", url, hashlib.sha256(payload).hexdigest())
        with pytest.raises(FileNotFoundError, match="allow_download=True"):
            fetch(good)
        path = fetch(good, allow_download=True)
        assert path == tmp_path / "home" / "data" / "demo" / "file.json" and path.read_bytes() == payload
        assert fetch(good) == path  # now served from the cache, no download needed

        bad = DataSource("demo/other.json", url, "0" * 64)
        with pytest.raises(ChecksumError, match="nothing was cached"):
            fetch(bad, allow_download=True)
        assert not (tmp_path / "home" / "data" / "demo" / "other.json").exists()
        assert [p.name for p in (tmp_path / "home" / "data" / "demo").iterdir()] == ["file.json"]


def test_advbench_source_points_at_the_pinned_upstream_file():
    assert "099ea98b8c81b76b04d4ef2a7d7f7c8f16d07a8d/data/advbench_full.json" in ADVBENCH.url


def test_user_prompt_files(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a", "category": "x"}\n\n{"prompt": "b"}\n')
    task = get_task(f"file:{jsonl}", "overrefusal")
    assert task.kind == "overrefusal"
    assert [(e.prompt, e.category) for e in task.load()] == [("a", "x"), ("b", None)]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('prompt,category\n"hello, world",greeting\n')
    assert [e.prompt for e in get_task(f"file:{csv_file}", "safety").load()] == ["hello, world"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', r"bad\.jsonl:2: not valid JSON"),
        ("noprompt.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', r"noprompt\.jsonl:2: missing or empty 'prompt'"),
        ("empty.jsonl", "\n\n", "no usable rows"),
        ("nocol.csv", "text\nhello\n", r"nocol\.csv:2: missing or empty 'prompt'"),
        ("ragged.csv", "prompt\nhello,extra\n", r"ragged\.csv:2: more fields"),
    ],
)
def test_malformed_user_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        get_task(f"file:{path}", "safety").load()


def test_user_reference_files(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"prompt": "2+2?", "reference": "4"}\n{"prompt": "Capital of France?", "reference": "Paris"}\n')
    task = get_task(f"jsonl:{path}", "utility")
    examples = task.load()
    assert task.score("  4 ", examples[0]) and task.score("paris", examples[1]) and not task.score("Lyon", examples[1])
    path.write_text('{"prompt": "2+2?"}\n')
    with pytest.raises(ValueError, match=r"qa\.jsonl:1: missing or empty 'reference'"):
        task.load()
    with pytest.raises(ValueError, match="use jsonl:"):
        get_task(f"file:{path}", "utility")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task(f"file:{tmp_path / 'missing.jsonl'}", "safety").load()


def test_utility_scorers():
    assert score_sst2("Positive.", "positive") and not score_sst2("It is positive", "positive")
    assert score_agnews("Sci/Tech", "Sci/Tech") and score_agnews("technology news", "Sci/Tech")
    assert not score_agnews("World", "Sports")
    assert extract_final_number("so 3 + 4 = 7\n#### 7") == 7
    assert extract_final_number("The answer is $1,234.50.") == extract_final_number("1234.5")
    assert score_gsm8k("She makes 9 * 2 = 18 dollars", "18") and score_gsm8k("#### 18.0", "18")
    assert not score_gsm8k("#### 17 and then 18", "18")  # the number after #### wins
    assert not score_gsm8k("no idea", "18")


def test_project_sets_use_the_test_split():
    pytest.importorskip("spftune.data")
    from spftune.data import load_prompts

    harmful = get_task("spftune-harmful").load()
    assert [e.prompt for e in harmful] == [r["prompt"] for r in load_prompts("harmful", "test")]
    assert get_task("spftune-benign").kind == "overrefusal"
    synthetic = get_task("spftune-synthetic")
    examples = synthetic.load(limit=5)
    assert len(examples) == 5 and synthetic.score(examples[0].reference, examples[0])
