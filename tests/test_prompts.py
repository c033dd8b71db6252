import json
from pathlib import Path

import pytest

from conftest import GSM8K_TEST

from ray_app.data.prompts import (
    ANSWER_PREFIX,
    build_gsm_prompt,
    extract_answer,
    format_target_answer,
    gold_from_gsm_answer,
    has_final_answer_line,
    normalize_number,
    reasoning_from_gsm_answer,
)



def test_prompt_is_the_course_text():
    assert build_gsm_prompt("What is 2+2?") == (
        "Solve the following math problem step by step, and provide the final numeric answer.\n\n"
        "Problem: What is 2+2?\n"
    )
    assert ANSWER_PREFIX == "Answer: Let's think step by step."


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So she has 5 apples.\nFinal answer: 18.", "18"),
        ("Final answer: $1,234.", "1234"),
        ("Final answer: 12.50", "12.5"),
        ("Final answer: 12.0.", "12"),
        ("Final answer: 45%.", "45"),
        ("Final answer: -7.", "-7"),
        ("final answer:   3", "3"),
        # The number after the marker wins over later numbers.
        ("Final answer: 42. (checked with 6 * 7)", "42"),
        # A restated final answer: the last marker counts.
        ("Final answer: 1.\nWait, recompute. Final answer: 2.", "2"),
        # No marker: the last number in the text.
        ("She pays 3 * $4 = $12 and keeps 8 dollars.", "8"),
        ("Total is $1,000,000.", "1000000"),
        ("0.5 of 10 is 5.0", "5"),
        ("no digits here", None),
        ("", None),
        # Marker with no number falls back to the last number before it.
        ("He had 9 cats. Final answer: unknown", "9"),
        # Only the marker's own line is read; an empty one falls back to the text's last number.
        ("Final answer:\n\nStep 2: 7 apples", "7"),
        ("Step 1: 3 + 4 = 7\nFinal answer:\nShe has 7 apples in 2 bags", "2"),
        ("Final answer: 12.\nStep 3: check 4 * 3 = 12, so 99 is wrong", "12"),
        # Units, words and markdown around the number.
        ("Final answer: 18 apples for 3 days.", "18"),
        ("Final answer: **$1,200.50**", "1200.5"),
        ("Final answer: 3.75 hours", "3.75"),
        ("Final answer: -15 degrees.", "-15"),
        ("Final answer: 0.25", "0.25"),
        ("Final answer: .5 liters", "0.5"),
        ("FINAL ANSWER: 1,000 dollars.", "1000"),
        ("Final answer: The answer is 64.", "64"),
        # A computation on the line: its result.
        ("Final answer: 5 + 3 = 8.", "8"),
        ("Final answer: $2 * 3 = $6", "6"),
        # Restated with an empty last marker: the last line that has a number.
        ("Final answer: 40.\nFinal answer:", "40"),
        # Windows line ends.
        ("Total 9.\r\nFinal answer: 10.\r\n", "10"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("1,200", "1200"), ("$3.50", "3.5"), ("7.000", "7"), ("-0.0", "0"), ("50%", "50"), ("abc", None), ("2.5e3", "2500")],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_gsm8k_golds_from_the_bundled_test_split():
    """Every GSM8K test answer yields its '#### N' gold, and extract_answer agrees with it."""
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()]
    assert len(rows) == 1319
    for row in rows:
        raw = row["answer"].split("####")[-1].strip()
        gold = gold_from_gsm_answer(row["answer"])
        assert gold == normalize_number(raw), row["answer"][-40:]
        assert extract_answer(row["answer"]) == gold
    # Spot values: first rows of the split.
    assert [gold_from_gsm_answer(r["answer"]) for r in rows[:3]] == ["18", "3", "70000"]


def test_target_answer_strips_calculator_annotations_and_ends_with_final_answer():
    answer = "He buys 3*2=<<3*2=6>>6 apples.\nThen 6+1=<<6+1=7>>7.\n#### 7"
    assert reasoning_from_gsm_answer(answer) == "He buys 3*2=6 apples.\nThen 6+1=7."
    target = format_target_answer(answer)
    assert target == " He buys 3*2=6 apples.\nThen 6+1=7.\nFinal answer: 7."
    assert has_final_answer_line(target)
    assert extract_answer(target) == "7"


@pytest.mark.parametrize("answer", ["no gold line", "#### seven", "####"])
def test_target_answer_rejects_non_numeric_gold(answer):
    with pytest.raises(ValueError, match="#### N"):
        format_target_answer(answer)


@pytest.mark.parametrize(
    "completion, ok",
    [("x\nFinal answer: 12.", True), ("Final answer: 1,200.", True), ("Final answer: 12", False), ("Final answer: ?.", False)],
)
def test_final_answer_line(completion, ok):
    assert has_final_answer_line(completion) is ok
