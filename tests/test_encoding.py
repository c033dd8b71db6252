"""Golden tests of the SFT encoding with the real Gemma 3 tokenizer (../shared/tokenizers/gemma-3)."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

from conftest import real_tokenizer, shared_path

from ray_app.data.encoding import encode_function, load_and_prepare_train_dataset
from ray_app.utils.io import DataError

QUESTION = "Janet has 3 apples and buys 2 more. How many apples does she have?"
ANSWER = "She has 3+2=<<3+2=5>>5 apples.\n#### 5"

EXPECTED_PROMPT = (
    "<bos><start_of_turn>user\n"
    "Solve the following math problem step by step, and provide the final numeric answer.\n\n"
    f"Problem: {QUESTION}<end_of_turn>\n"
    "<start_of_turn>model\n"
    "Answer: Let's think step by step."
)
EXPECTED_COMPLETION = " She has 3+2=5 apples.\nFinal answer: 5.<end_of_turn>\n<eos>"


@pytest.fixture(scope="module")
def gemma_tokenizer():
    return real_tokenizer("tokenizers/gemma-3")


def _one(tokenizer, max_seq_length=None, question=QUESTION, answer=ANSWER):
    out = encode_function({"question": [question], "answer": [answer]}, tokenizer, max_seq_length)
    return {k: v[0] for k, v in out.items()}


def test_prompt_and_completion_text_are_exact(gemma_tokenizer):
    enc = _one(gemma_tokenizer)
    n_prompt = sum(1 for label in enc["labels"] if label == -100)
    assert gemma_tokenizer.decode(enc["input_ids"][:n_prompt]) == EXPECTED_PROMPT
    assert gemma_tokenizer.decode(enc["input_ids"][n_prompt:]) == EXPECTED_COMPLETION
    assert enc["input_ids"][0] == gemma_tokenizer.bos_token_id  # exactly one <bos>, from the chat template
    assert enc["input_ids"].count(gemma_tokenizer.bos_token_id) == 1
    assert enc["input_ids"][-2:] == gemma_tokenizer.convert_tokens_to_ids(["\n", "<eos>"]) or gemma_tokenizer.decode(enc["input_ids"][-2:]) == "\n<eos>"


def test_mask_boundary_is_exact(gemma_tokenizer):
    enc = _one(gemma_tokenizer)
    prompt_ids = gemma_tokenizer(EXPECTED_PROMPT, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids
    assert enc["labels"][:n] == [-100] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["labels"][n] != -100 and enc["labels"][n - 1] == -100
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    # The end-of-turn and eos tokens are learned: the model must learn to stop.
    end_of_turn, eos = gemma_tokenizer.convert_tokens_to_ids(["<end_of_turn>", "<eos>"])
    assert end_of_turn in enc["labels"][n:] and enc["labels"][-1] == eos


def test_truncation_keeps_prompt_and_cuts_completion(gemma_tokenizer):
    full = _one(gemma_tokenizer)
    n_prompt = full["labels"].count(-100)
    cut = _one(gemma_tokenizer, max_seq_length=n_prompt + 3)
    assert len(cut["input_ids"]) == n_prompt + 3
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 3]
    assert sum(1 for label in cut["labels"] if label != -100) == 3
    assert len(cut["attention_mask"]) == n_prompt + 3


def test_prompt_over_max_seq_length_is_refused(gemma_tokenizer):
    n_prompt = _one(gemma_tokenizer)["labels"].count(-100)
    with pytest.raises(ValueError, match=r"max_seq_length=\d+"):
        _one(gemma_tokenizer, max_seq_length=n_prompt)
    with pytest.raises(ValueError, match="leaves no room"):
        _one(gemma_tokenizer, max_seq_length=16, question="word " * 200)


def test_prompt_tokens_must_prefix_full_tokens():
    """A tokenizer with a merge across the prompt/answer boundary ('.' + ' She') is refused."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))  # no pre-tokenizer: merges may cross spaces
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"])
    backend.train_from_iterator(["step. She has step. She has"] * 200 + [EXPECTED_PROMPT, EXPECTED_COMPLETION], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = "{{ bos_token }}{% for m in messages %}<start_of_turn>user\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
    with pytest.raises(ValueError, match="not a prefix"):
        _one(tok)


def test_real_gemma_encoding_matches_on_gsm8k_rows(gemma_tokenizer):
    """The prefix property holds for real GSM8K rows with the real tokenizer (no boundary merges)."""
    rows = [json.loads(line) for line in shared_path("data/gsm8k/train.jsonl").read_text().splitlines()[:64]]
    out = encode_function({"question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows]}, gemma_tokenizer, 1024)
    assert len(out["input_ids"]) == 64
    for ids, labels in zip(out["input_ids"], out["labels"]):
        assert len(ids) == len(labels) and labels.count(-100) < len(ids)


@dataclass
class _Cfg:
    train_file: str
    max_seq_length: Optional[int] = 512
    train_pct: float = 100.0
    shuffle: bool = True
    seed: int = 7
    num_proc: int = 1
    load_from_cache_file: bool = True
    encode_cache_dir: Optional[str] = None


def _write_rows(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"Tom has {i} pens and gets 2. How many?", "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"}) + "\n")
    return path


def test_load_and_prepare_train_dataset(tmp_path, gemma_tokenizer):
    train = _write_rows(tmp_path / "train.jsonl", 40)
    ds = load_and_prepare_train_dataset(_Cfg(str(train), train_pct=25.0, encode_cache_dir=str(tmp_path / "cache")), gemma_tokenizer)
    assert len(ds) == 10
    assert ds.column_names == ["input_ids", "labels", "attention_mask"]
    assert isinstance(ds[0]["input_ids"], torch.Tensor)
    # Shuffling is seeded: same seed -> same rows; another seed -> other rows.
    again = load_and_prepare_train_dataset(_Cfg(str(train), train_pct=25.0), gemma_tokenizer)
    other = load_and_prepare_train_dataset(_Cfg(str(train), train_pct=25.0, seed=8), gemma_tokenizer)
    assert [x.tolist() for x in again["input_ids"]] == [x.tolist() for x in ds["input_ids"]]
    assert [x.tolist() for x in other["input_ids"]] != [x.tolist() for x in ds["input_ids"]]
    assert list((tmp_path / "cache").glob("encoded-*.arrow")), "the encoded Arrow cache was not written"
    # num_proc=2 gives the same encoding.
    two = load_and_prepare_train_dataset(_Cfg(str(train), train_pct=25.0, num_proc=2), gemma_tokenizer)
    assert [x.tolist() for x in two["labels"]] == [x.tolist() for x in ds["labels"]]


def test_bad_training_files_name_file_and_line(tmp_path, gemma_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1\\n#### 1"}\n{"question": "q2", "answer": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        load_and_prepare_train_dataset(_Cfg(str(bad)), gemma_tokenizer)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question": "q", "answer": "1\\n#### 1"}\n{"question": "only a question"}\n')
    with pytest.raises(DataError, match=r"missing.jsonl:2: missing field\(s\) answer"):
        load_and_prepare_train_dataset(_Cfg(str(missing)), gemma_tokenizer)
    with pytest.raises(DataError, match="file not found"):
        load_and_prepare_train_dataset(_Cfg(str(tmp_path / "nope.jsonl")), gemma_tokenizer)
