"""The course's SFT encoding: prompt tokens are masked out, completion tokens are learned.

    prompt     = chat_template([user: build_gsm_prompt(q)], add_generation_prompt=True) + ANSWER_PREFIX
    completion = " " + reasoning (no <<calc>> annotations) + "\\nFinal answer: N." + "<end_of_turn>\\n<eos>"

Both texts already contain their special tokens as text, so they are tokenised without adding any.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray_app.data.prompts import ANSWER_PREFIX, build_gsm_prompt, gold_from_gsm_answer, stated_answer, target_answer
from ray_app.utils.io import DataError, read_jsonl, sha256_file, sha256_text

COMPLETION_SUFFIX = "<end_of_turn>\n<eos>"
IGNORE_INDEX = -100
ENCODED_COLUMNS = ["input_ids", "labels", "attention_mask"]


def build_prompt_text(tokenizer, question: str) -> str:
    """What the model sees before it starts answering (also used verbatim at inference)."""
    messages = [{"role": "user", "content": build_gsm_prompt(question)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX


def build_completion_text(answer: str, answer_format: str = "gsm8k") -> str:
    return target_answer(answer, answer_format) + COMPLETION_SUFFIX


def encode_function(batch: dict[str, list], tokenizer, max_seq_length: int | None = None,
                    answer_format: str = "gsm8k") -> dict[str, list]:
    """Batched `Dataset.map` function: columns `question`, `answer` -> input_ids, labels, attention_mask."""
    out: dict[str, list] = {name: [] for name in ENCODED_COLUMNS}
    for i, (question, answer) in enumerate(zip(batch["question"], batch["answer"])):
        prompt_text = build_prompt_text(tokenizer, question)
        full_text = prompt_text + build_completion_text(answer, answer_format)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(
            full_text,
            add_special_tokens=False,
            truncation=max_seq_length is not None,
            max_length=max_seq_length,
        )["input_ids"]
        if max_seq_length is not None and len(prompt_ids) >= max_seq_length:
            raise ValueError(
                f"prompt of example {i} ({question[:60]!r}...) has {len(prompt_ids)} tokens, which leaves no room "
                f"for the answer within max_seq_length={max_seq_length}; raise max_seq_length or drop the example"
            )
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"example {i}: the prompt's tokens are not a prefix of prompt+completion tokens; the tokenizer merges "
                "across the prompt/answer boundary, so the label mask would be wrong"
            )
        n_prompt = len(prompt_ids)
        out["input_ids"].append(full_ids)
        out["labels"].append([IGNORE_INDEX] * n_prompt + full_ids[n_prompt:])
        out["attention_mask"].append([1] * len(full_ids))
    return out


def _tokenizer_fingerprint(tokenizer) -> str:
    # The backend's JSON (vocab + merges + normalisers) plus the chat template determine the encoding.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items()))
    return sha256_text(body, str(getattr(tokenizer, "chat_template", "")))


def subsample_rows(rows: list[dict], train_pct: float, shuffle: bool, seed: int) -> list[dict]:
    """Keep `train_pct` percent of rows (at least one), optionally shuffled with `seed`."""
    import random

    if not 0 < train_pct <= 100:
        raise ValueError(f"train_pct must be in (0, 100], got {train_pct}")
    rows = list(rows)
    if shuffle:
        random.Random(seed).shuffle(rows)
    keep = max(1, math.ceil(len(rows) * train_pct / 100))
    return rows[:keep]


def read_training_rows(path: str | Path, question_field: str = "question", answer_field: str = "answer",
                       answer_format: str = "gsm8k") -> list[dict]:
    """The training rows of a JSONL file as {question, answer}, every one checked: a JSON object whose
    `question_field` is a non-empty string and whose `answer_field` is a string; in the 'gsm8k' format it
    must end with '#### N' (what SFT learns to state as 'Final answer: N.'), in 'metamath' any text is
    taken (see prompts.target_answer). The first bad row is a DataError naming file and line. The SFT
    job calls this on the driver before Ray starts, so a bad file never reaches (and restarts) Train workers."""
    path = Path(path)
    fields = (question_field, answer_field)
    rows = read_jsonl(path, required=fields)
    if not rows:
        raise DataError(f"{path}: no training rows; expected JSONL rows with '{question_field}' and '{answer_field}'")
    # read_jsonl skips blank lines, so line numbers are counted again here for the messages.
    lines = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
    out = []
    for lineno, row in zip(lines, rows):
        question, answer = row[question_field], row[answer_field]
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{path}:{lineno}: '{question_field}' must be a non-empty string, got {question!r:.80}")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{path}:{lineno}: '{answer_field}' must be a non-empty string, got {answer!r:.80}")
        if answer_format == "gsm8k" and gold_from_gsm_answer(answer) is None:
            hint = (" (it states 'The answer is: ...': MetaMathQA-style data trains with --answer-format metamath)"
                    if stated_answer(answer) else "")
            raise DataError(f"{path}:{lineno}: '{answer_field}' has no numeric '#### N' line at its end ({answer[-60:]!r}); "
                            f"SFT teaches the model to end with 'Final answer: N.' taken from it{hint}")
        out.append({"question": question, "answer": answer})
    return out


def stated_share(rows: list[dict], answer_format: str) -> float:
    """The fraction of training answers whose result becomes a 'Final answer: N.' line."""
    if answer_format == "gsm8k":
        return 1.0
    stated = sum(gold_from_gsm_answer(r["answer"]) is not None or stated_answer(r["answer"]) is not None for r in rows)
    return stated / max(1, len(rows))


def load_and_prepare_train_dataset(cfg: Any, tokenizer):
    """Read `cfg.train_file`, subsample/shuffle as configured, encode with `Dataset.map(batched=True)`.

    Uses: cfg.train_file, cfg.train_pct, cfg.shuffle, cfg.seed, cfg.max_seq_length, cfg.num_proc,
    cfg.load_from_cache_file and (optional) cfg.encode_cache_dir, where the encoded Arrow file is kept
    under a name derived from the data file, tokenizer and settings.
    """
    from datasets import Dataset

    path = Path(cfg.train_file)
    answer_format = getattr(cfg, "answer_format", "gsm8k")
    rows = read_training_rows(path, getattr(cfg, "question_field", "question"), getattr(cfg, "answer_field", "answer"), answer_format)
    rows = subsample_rows(rows, cfg.train_pct, cfg.shuffle, cfg.seed)
    dataset = Dataset.from_list([{"question": r["question"], "answer": r["answer"]} for r in rows])

    # Our own fingerprint of everything the encoding depends on: it names the Arrow cache file and
    # spares `datasets` from hashing the function and tokenizer by pickling them.
    key = sha256_text(
        sha256_file(path),
        _tokenizer_fingerprint(tokenizer),
        str(cfg.max_seq_length),
        str(cfg.train_pct),
        str(cfg.shuffle),
        str(cfg.seed),
        *([answer_format] if answer_format != "gsm8k" else []),  # default builds keep their cache names
    )[:20]
    cache_file_name = None
    cache_dir = getattr(cfg, "encode_cache_dir", None)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file_name = str(Path(cache_dir) / f"encoded-{key}.arrow")

    encoded = dataset.map(
        encode_function,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_seq_length": cfg.max_seq_length, "answer_format": answer_format},
        num_proc=cfg.num_proc if cfg.num_proc and cfg.num_proc > 1 else None,
        load_from_cache_file=cfg.load_from_cache_file,
        cache_file_name=cache_file_name,
        new_fingerprint=key,
        remove_columns=dataset.column_names,
        desc="encoding SFT examples",
    )
    encoded = encoded.select_columns(ENCODED_COLUMNS)
    encoded.set_format(type="torch", columns=ENCODED_COLUMNS)
    return encoded
