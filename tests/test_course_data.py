"""The course's own data: its four JSONL files as our splits, and GSM-Symbolic's P1 variant from a copy
in the Hub dataset's format (the Hub itself is unreachable here; the same `datasets` loader reads it)."""

import json

import pytest

from conftest import GSM8K_TEST, run_job
from ray_app.data.gsm import COURSE_FILES, SPLITS

GSM8K = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines() if line.strip()]


def _course_folder(tmp_path, bad: tuple[str, int, str] | None = None):
    """The four files with GSM8K-style rows (question, answer ending '#### N'), as students get them."""
    folder = tmp_path / "a4-data"
    folder.mkdir()
    picks = {"gsm_symbolic_train": range(0, 12), "gsm_symbolic_test": range(20, 24),
             "gsm8k_same_templates": range(30, 34), "gsm8k_non_overlapping": range(40, 44)}
    for split, name in COURSE_FILES.items():
        lines = [json.dumps({"question": GSM8K[i]["question"], "answer": GSM8K[i]["answer"], "original_id": i}) for i in picks[split]]
        if bad and bad[0] == split:
            lines[bad[1] - 1] = bad[2]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_course_files_become_the_four_splits(tmp_path):
    folder = _course_folder(tmp_path)
    out = tmp_path / "course"
    proc = run_job("prepare_data.py", "--course-files", str(folder), "--out-dir", str(out), "--no-use-ray", "--build-models", "")
    assert "the course's files from" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == {"course_files": str(folder)}
    assert {s: f["rows"] for s, f in manifest["files"].items()} == {
        "gsm_symbolic_train": 12, "gsm_symbolic_test": 4, "gsm8k_same_templates": 4, "gsm8k_non_overlapping": 4}
    first = json.loads((out / "gsm_symbolic_test.jsonl").read_text().splitlines()[0])
    assert first == {"id": "gsm_symbolic_test-0000", "question": GSM8K[20]["question"], "answer": GSM8K[20]["answer"],
                     "gold": GSM8K[20]["answer"].split("####")[-1].strip().replace(",", ""), "template_id": 20, "source": "course"}
    # Same files, same bytes (the manifest records the files' hashes, not when they were read).
    again = tmp_path / "again"
    run_job("prepare_data.py", "--course-files", str(folder), "--out-dir", str(again), "--no-use-ray", "--build-models", "")
    for name in [f"{s}.jsonl" for s in SPLITS] + ["manifest.json"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_a_bad_course_row_names_file_and_line_and_nothing_is_published(tmp_path):
    folder = _course_folder(tmp_path, bad=("gsm8k_same_templates", 3, json.dumps({"question": "How many?", "answer": "4 apples"})))
    out = tmp_path / "course"
    proc = run_job("prepare_data.py", "--course-files", str(folder), "--out-dir", str(out), "--no-use-ray", "--build-models", "",
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{folder / 'gsm8k_test_100_same_templates.jsonl'}:3: answer does not end with a numeric '#### N' line" in proc.stderr
    assert not out.exists()
    missing = tmp_path / "empty"
    missing.mkdir()
    proc = run_job("prepare_data.py", "--course-files", str(missing), "--out-dir", str(out), "--no-use-ray", check=False)
    assert proc.returncode == 2 and "missing gsm_symbolic_train_4500_student.jsonl" in proc.stderr


def test_p1_variant_from_a_local_copy_of_the_hub_dataset(tmp_path):
    """apple/GSM-Symbolic's columns (id, instance, question, answer, original_id, ...) for 3 templates x 6
    instances of the P1 variant: the build splits them per template, takes the GSM8K originals of those
    templates as gsm8k_same_templates, and runs the train/test separation check."""
    copy = tmp_path / "gsm-symbolic-p1"
    copy.mkdir()
    rows = []
    for template, original in enumerate((5, 11, 17)):
        for instance in range(6):
            n = 10 + instance
            rows.append({"id": template, "instance": instance, "original_id": original, "canary": "x",
                         "original_question": GSM8K[original]["question"], "original_answer": GSM8K[original]["answer"],
                         "question": f"Ann has {n} pens and buys {instance + 2} more; each pen costs $2. How much did she pay "
                                     f"in all for template {template}?",
                         "answer": f"{n} + {instance + 2} = {n + instance + 2} pens, x 2 = {2 * (n + instance + 2)}\n#### {2 * (n + instance + 2)}"})
    (copy / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p1"
    run_job("prepare_data.py", "--symbolic-source", str(copy), "--symbolic-config", "p1", "--train-size", "9",
            "--non-overlapping-size", "5", "--out-dir", str(out), "--no-use-ray", "--build-models", "")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["symbolic_config"] == "p1"
    assert "local copy of apple/GSM-Symbolic/p1" in manifest["sources"]["gsm_symbolic"]
    assert {s: f["rows"] for s, f in manifest["files"].items()} == {
        "gsm_symbolic_train": 9, "gsm_symbolic_test": 3, "gsm8k_same_templates": 3, "gsm8k_non_overlapping": 5}
    same = [json.loads(line) for line in (out / "gsm8k_same_templates.jsonl").read_text().splitlines()]
    assert [r["question"] for r in same] == [GSM8K[i]["question"] for i in (5, 11, 17)]
    assert manifest["separation"]["test_rows_matching_train"] == {"gsm_symbolic_test": 0, "gsm8k_same_templates": 0, "gsm8k_non_overlapping": 0}
    # P1 from the package's templates cannot be: refused at once, naming the flags.
    proc = run_job("prepare_data.py", "--symbolic-config", "p1", "--out-dir", str(tmp_path / "no"), check=False)
    assert proc.returncode == 2 and "--symbolic-config p1 needs --symbolic-source apple/GSM-Symbolic" in proc.stderr


METAMATH = [  # MetaMathQA's fields and answer style ('The answer is: N'), one row without a number
    {"query": "Tom has 3 apples and buys 4 more. How many apples does he have?", "response": "He has 3 + 4 = 7 apples.\nThe answer is: 7",
     "type": "GSM_Rephrased", "original_question": "..."},
    {"query": "A box holds 6 eggs. How many eggs are in 5 boxes?", "response": "5 boxes hold 5 * 6 = 30 eggs.\nThe answer is: 30",
     "type": "GSM_AnsAug", "original_question": "..."},
    {"query": "Simplify 2/4.", "response": "Dividing both by 2 gives \\frac{1}{2}.\nThe answer is: \\frac{1}{2}",
     "type": "MATH_AnsAug", "original_question": "..."},
]


def _metamath_file(tmp_path, copies: int = 4):
    path = tmp_path / "metamathqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for _ in range(copies) for r in METAMATH))
    return path


def test_metamath_rows_encode_with_the_trained_answer_line():
    from ray_app.data.encoding import build_completion_text

    assert build_completion_text(METAMATH[0]["response"], "metamath") == " He has 3 + 4 = 7 apples.\nFinal answer: 7.<end_of_turn>\n<eos>"
    assert build_completion_text(METAMATH[2]["response"], "metamath").startswith(" Dividing both by 2 gives \\frac{1}{2}.\nThe answer is:")


def test_metamath_rows_in_the_gsm8k_format_are_refused_with_the_flag_to_use(tmp_path):
    """Without the flags the job stops on the driver (no Ray: RAY_ADDRESS points nowhere) naming file, line and the fix."""
    proc = run_job("sft.py", "--train-file", str(_metamath_file(tmp_path)), check=False, env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 2 and "missing field(s) question, answer" in proc.stderr
    proc = run_job("sft.py", "--train-file", str(_metamath_file(tmp_path)), "--question-field", "query", "--answer-field", "response",
                   check=False, env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 2 and f"{tmp_path / 'metamathqa.jsonl'}:1: 'response' has no numeric '#### N' line" in proc.stderr
    assert "--answer-format metamath" in proc.stderr


@pytest.mark.slow
def test_readme_course_data_and_metamathqa_commands_as_typed(tmp_path):
    """README's two-step try, run as typed (HOME holds ~/a4-data and ~/metamathqa.jsonl): the course's
    files become the splits, SFT reads MetaMathQA's fields and answers (a real Ray Train + DeepSpeed
    run) and its after-training check greedy-decodes the course's test file."""
    import os
    import re
    import subprocess

    from conftest import ROOT

    home, root = tmp_path / "home", tmp_path / "root"
    home.mkdir()
    _course_folder(home)  # ~/a4-data
    _metamath_file(home)
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"A two-step try, with the course's files.*?```bash\n(.*?)```", readme, re.S).group(1)
    env = {**os.environ, "HOME": str(home), "RAY_APP_STORAGE_ROOT": str(root), "WANDB_MODE": "disabled"}
    logs = []
    for command in block.strip().splitlines():
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        logs.append(proc.stdout)
    assert "the course's files from" in logs[0]
    assert json.loads((root / "course" / "manifest.json").read_text())["config"] == {"course_files": str(home / "a4-data")}
    assert "12 rows, 67% state a numeric result" in logs[1]
    manifest = json.loads((root / "sft" / "sft-tiny-gemma3-small" / "run_manifest.json").read_text())
    assert manifest["global_step"] == 2 and manifest["config"]["answer_format"] == "metamath"
    assert manifest["after_training_check"]["n"] == 3  # the first 3 questions of the course's gsm_symbolic_test file
