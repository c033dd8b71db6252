"""Reward model scoring of (question, response) pairs, in plain torch + transformers.

The reward model reads the conversation through its *own* tokenizer and chat template (Llama 3 for
Skywork-Reward-V2): the user turn is the course prompt, the assistant turn the policy's answer
including the answer prefix. Policy token ids never reach it.

Why batching pays even when one forward pass already saturates the hardware: Best-of-N sends the
N responses to one question together, and their token ids share the whole prompt. A batch is
therefore scored as groups: the shared prefix runs once, its key/value cache is repeated across
the group, and only the N response suffixes run. Causal attention makes this exact (the prefix
positions never see what follows them). Rows are batched by length so that padding stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ray_app.data.prompts import ANSWER_PREFIX, build_gsm_prompt
from ray_app.errors import ConfigError

# A shared prefix shorter than this is not worth a separate forward pass.
MIN_SHARED_PREFIX_TOKENS = 16


def conversation(question: str, response: str) -> list[dict]:
    return [
        {"role": "user", "content": build_gsm_prompt(question)},
        {"role": "assistant", "content": f"{ANSWER_PREFIX} {response.strip()}"},
    ]


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id lists."""
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in sequences[1:]):
            return i
    return n


def length_chunks(indices: Sequence[int], lengths: Sequence[int], max_batch: int, max_padding: float = 0.25) -> list[list[int]]:
    """Split `indices` (with their sequence lengths) into batches of similar length.

    Sorted by length, a batch grows while it holds at most `max_batch` rows and padding adds at most
    `max_padding` to the tokens it really contains.
    """
    order = sorted(range(len(indices)), key=lambda j: lengths[j])
    chunks: list[list[int]] = []
    chunk: list[int] = []
    real = 0
    for j in order:
        width = lengths[j]  # ascending: the newcomer sets the padded width
        if chunk and (len(chunk) >= max_batch or (len(chunk) + 1) * width > (1 + max_padding) * (real + width)):
            chunks.append(chunk)
            chunk, real = [], 0
        chunk.append(indices[j])
        real += width
    if chunk:
        chunks.append(chunk)
    return chunks


@dataclass
class ScoringStats:
    """What the scorer computed, to show that prefix sharing happened (and how much it saved)."""

    pairs: int = 0
    shared_groups: int = 0
    tokens_in_pairs: int = 0  # what scoring every pair separately would run
    tokens_run: int = 0  # what was actually run

    def as_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "shared_groups": self.shared_groups,
            "tokens_in_pairs": self.tokens_in_pairs,
            "tokens_run": self.tokens_run,
            "token_saving": round(self.tokens_in_pairs / self.tokens_run, 3) if self.tokens_run else 1.0,
        }


class RewardScorer:
    def __init__(self, model_path: str, device: str | None = None, max_length: int = 2048, share_prefixes: bool = True):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        # Padding and pooling follow the model's config: its pad_token_id is what its own pooling skips
        # to find the last real token (Skywork-Reward-V2 names one); only a config without it falls back
        # to the tokenizer's pad (or eos) token, written into the config so pooling uses the same id.
        self.pad_token_id = self.model.config.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            self.model.config.pad_token_id = self.pad_token_id
        if self.pad_token_id is None:
            raise ConfigError(f"reward model {model_path} has no pad_token_id in its config and its tokenizer has no pad or "
                             "eos token: set config.pad_token_id")
        # Right padding whatever the tokenizer says: pads after the last real token change neither its
        # position nor (causal attention) its hidden state, so a padded row scores as it would alone.
        self.tokenizer.padding_side = "right"
        self.max_length = max_length
        # Prefix sharing needs the decoder and the score head separately (Llama/Gemma/Qwen
        # *ForSequenceClassification all have `.model` + `.score`); other heads use plain batches.
        self.share_prefixes = share_prefixes and hasattr(self.model, "score") and self.model.base_model is not self.model
        self.stats = ScoringStats()

    def texts(self, questions: Sequence[str], responses: Sequence[str]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template(conversation(q, r), tokenize=False)
            for q, r in zip(questions, responses)
        ]

    def token_ids(self, questions: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(
            self.texts(questions, responses),
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,  # the chat template already wrote <|begin_of_text|>
        )
        return [list(ids) for ids in enc["input_ids"]]

    def score(self, questions: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """One reward per (question, response) pair, in input order."""
        if len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
        if not questions:
            return []
        ids = self.token_ids(questions, responses)
        scores: list[float | None] = [None] * len(ids)
        self.stats.pairs += len(ids)
        self.stats.tokens_in_pairs += sum(len(x) for x in ids)

        singles: list[int] = []
        for members in self._groups(questions):
            if self.share_prefixes and len(members) > 1:
                shared = min(common_prefix_length([ids[i] for i in members]), min(len(ids[i]) for i in members) - 1)
                if shared >= MIN_SHARED_PREFIX_TOKENS:
                    chunks = length_chunks(members, [len(ids[i]) for i in members], batch_size)
                    suffixes = [[ids[i][shared:] for i in chunk] for chunk in chunks]
                    for chunk, chunk_scores in zip(chunks, self._score_shared(ids[members[0]][:shared], suffixes)):
                        for i, s in zip(chunk, chunk_scores):
                            scores[i] = s
                    continue
            singles.extend(members)

        for chunk in length_chunks(singles, [len(ids[i]) for i in singles], batch_size):
            for i, s in zip(chunk, self._score_padded([ids[i] for i in chunk])):
                scores[i] = s
        return scores  # type: ignore[return-value]

    @staticmethod
    def _groups(questions: Sequence[str]) -> list[list[int]]:
        by_question: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            by_question.setdefault(q, []).append(i)
        return list(by_question.values())

    def _padded(self, rows: Sequence[Sequence[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, : len(r)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _score_padded(self, rows: Sequence[Sequence[int]]) -> list[float]:
        import torch

        input_ids, mask = self._padded(rows)
        self.stats.tokens_run += int(input_ids.numel())
        with torch.no_grad():
            if self.share_prefixes:
                hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                return self._head(hidden, mask)
            # The model's own pooling finds the last non-pad token (pad ids must not occur inside).
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return [float(x) for x in logits[:, 0].float().cpu()]

    def _score_shared(self, prefix: Sequence[int], chunks: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """Run `prefix` once, then each chunk of suffixes on a copy of its key/value cache."""
        import copy

        import torch

        base = self.model.base_model
        self.stats.shared_groups += 1
        self.stats.tokens_run += len(prefix)
        results = []
        with torch.no_grad():
            prefix_cache = base(input_ids=torch.tensor([list(prefix)], device=self.device), use_cache=True).past_key_values
            for i, suffixes in enumerate(chunks):
                suffix_ids, suffix_mask = self._padded(suffixes)
                self.stats.tokens_run += int(suffix_ids.numel())
                cache = prefix_cache if i == len(chunks) - 1 else copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(suffixes))
                ones = torch.ones((len(suffixes), len(prefix)), dtype=torch.long, device=self.device)
                mask = torch.cat([ones, suffix_mask], dim=1)
                hidden = base(input_ids=suffix_ids, attention_mask=mask, past_key_values=cache, use_cache=False).last_hidden_state
                results.append(self._head(hidden, suffix_mask))
        return results

    def _head(self, hidden, mask) -> list[float]:
        import torch

        # The model's own pooling (`*ForSequenceClassification`): the last token that is not padding.
        # Rows are right-padded, so row j's sits at mask[j].sum() - 1.
        last = mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        with torch.no_grad():
            logits = self.model.score(pooled)
        return [float(x) for x in logits[:, 0].float().cpu()]
