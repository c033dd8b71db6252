"""Reward model scoring of (question, response) pairs, in plain torch + transformers.

The reward model reads the conversation through its *own* tokenizer and chat template (Llama 3 for
Skywork-Reward-V2): the user turn is the course prompt, the assistant turn the policy's answer
including the answer prefix. Policy token ids never reach it.
"""

from __future__ import annotations

from typing import Sequence

from ray_app.data.prompts import ANSWER_PREFIX, build_gsm_prompt


def conversation(question: str, response: str) -> list[dict]:
    return [
        {"role": "user", "content": build_gsm_prompt(question)},
        {"role": "assistant", "content": f"{ANSWER_PREFIX} {response.strip()}"},
    ]


class RewardScorer:
    def __init__(self, model_path: str, device: str | None = None, max_length: int = 2048):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # sequence classification reads the last real token
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length

    def texts(self, questions: Sequence[str], responses: Sequence[str]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template(conversation(q, r), tokenize=False)
            for q, r in zip(questions, responses)
        ]

    def score(self, questions: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        import torch

        if len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
        texts = self.texts(questions, responses)
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,  # the chat template already wrote <|begin_of_text|>
            ).to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits
            scores.extend(float(x) for x in logits[:, 0].float().cpu())
        return scores
