"""The course's prompt, answer format and answer extraction.

Training, evaluation and sampling all go through these functions, so the model is always asked the
same question the same way and graded by the same parser.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

PROMPT_TEMPLATE = (
    "Solve the following math problem step by step, and provide the final numeric answer.\n\n"
    "Problem: {question}\n"
)
# Opens the model turn both in training (part of the prompt, so not learned) and at inference.
ANSWER_PREFIX = "Answer: Let's think step by step."
FINAL_ANSWER_MARKER = "Final answer:"

_CALCULATOR = re.compile(r"<<[^<>]*>>")
# A number as people write it in GSM answers: optional sign and $, thousands commas, decimals, %.
_NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|-?\$?\.\d+%?")
_FINAL = re.compile(re.escape(FINAL_ANSWER_MARKER), re.IGNORECASE)
_GSM_GOLD = re.compile(r"####\s*(?P<gold>.+?)\s*$", re.DOTALL)
# A completion that ends the way the model is trained to end.
FINAL_ANSWER_LINE = re.compile(re.escape(FINAL_ANSWER_MARKER) + r"\s*(?:" + _NUMBER.pattern + r")\.")


def build_gsm_prompt(question: str) -> str:
    """The user turn of every prompt (the chat template wraps it)."""
    return PROMPT_TEMPLATE.format(question=question.strip())


def normalize_number(text: str) -> str | None:
    """'$1,200.50' -> '1200.5', '12.0' -> '12', '45%' -> '45', '-3' -> '-3'; None if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace("%", "").replace(" ", "")
    cleaned = cleaned.rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The number on the last 'Final answer:' line that has one, else the last number in the text.

    Only the rest of the marker's own line is read: 'Final answer:\n\nStep 2: 7 apples' has no number on
    its line, so the fallback (the text's last number, 7) applies, never the step number 2. On the line,
    the first number is the answer ('Final answer: 18 apples for 3 days' -> 18), unless the line is a
    computation, where the result after the last '=' is ('Final answer: 5 + 3 = 8' -> 8).
    """
    if text is None:
        return None
    # From the last marker back: models sometimes restate a 'Final answer:' line, or leave one empty.
    for match in reversed(list(_FINAL.finditer(text))):
        line = text[match.end():].split("\n", 1)[0]
        if "=" in line:
            line = line.rsplit("=", 1)[1]
        for candidate in _NUMBER.findall(line):
            normalized = normalize_number(candidate)
            if normalized is not None:
                return normalized
    for candidate in reversed(_NUMBER.findall(text)):
        normalized = normalize_number(candidate)
        if normalized is not None:
            return normalized
    return None


def gold_from_gsm_answer(answer: str) -> str | None:
    """GSM8K's gold: the normalised number after '#### '; None when absent or not numeric."""
    match = _GSM_GOLD.search(answer or "")
    if not match:
        return None
    return normalize_number(match.group("gold"))


def strip_calculator_annotations(text: str) -> str:
    return _CALCULATOR.sub("", text)


def reasoning_from_gsm_answer(answer: str) -> str:
    """The worked solution without the '#### N' line and without '<<a*b=c>>' annotations."""
    body = answer.split("####")[0]
    return strip_calculator_annotations(body).strip()


def format_target_answer(answer: str) -> str:
    """The text the model learns to produce after the answer prefix (before the end-of-turn tokens)."""
    gold = gold_from_gsm_answer(answer)
    if gold is None:
        raise ValueError(f"answer has no numeric '#### N' line: {answer[-80:]!r}")
    return f" {reasoning_from_gsm_answer(answer)}\n{FINAL_ANSWER_MARKER} {gold}."


# How training answers state their result. 'gsm8k': every answer ends with '#### N' (GSM8K, GSM-Symbolic,
# the course's files). 'metamath': MetaMathQA-style data, where answers end 'The answer is: N' (or '#### N');
# both become the trained 'Final answer: N.', and an answer with neither is learned as written.
ANSWER_FORMATS = ("gsm8k", "metamath")
_STATED_ANSWER = re.compile(r"The answer is:?\s*(?P<gold>[^\n]+?)\s*\.?\s*$", re.IGNORECASE)


def stated_answer(answer: str) -> tuple[str, str] | None:
    """(reasoning, normalised number) of an answer ending 'The answer is: N' (MetaMathQA), else None."""
    match = _STATED_ANSWER.search(answer or "")
    gold = normalize_number(match.group("gold")) if match else None
    if gold is None:
        return None
    return strip_calculator_annotations(answer[: match.start()]).strip(), gold


def target_answer(answer: str, answer_format: str = "gsm8k") -> str:
    """The completion SFT learns for a training answer in `answer_format` (see ANSWER_FORMATS)."""
    if answer_format == "gsm8k" or gold_from_gsm_answer(answer) is not None:
        return format_target_answer(answer)
    stated = stated_answer(answer)
    if stated is not None:
        return f" {stated[0]}\n{FINAL_ANSWER_MARKER} {stated[1]}."
    return " " + answer.strip()


def has_final_answer_line(completion: str) -> bool:
    """Does a generated completion state its result as 'Final answer: <number>.'?"""
    return FINAL_ANSWER_LINE.search(completion) is not None
