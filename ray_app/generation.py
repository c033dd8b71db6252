"""Batched, left-padded generation with the training prompt. Plain torch + transformers (no Ray),
so the same code runs inside Ray Data actors, in tests and on a bare GPU box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ray_app.data.encoding import build_prompt_text
from ray_app.data.prompts import extract_answer, has_final_answer_line
from ray_app.errors import ConfigError


@dataclass
class Generation:
    prompt: str
    completion: str
    num_tokens: int
    finish_reason: str  # "stop" (hit an end token) or "length" (ran out of max_new_tokens)


def load_policy(path: str, device: str | None = None, dtype=None):
    """Tokenizer + causal LM from a Hugging Face folder or Hub id, ready for left-padded generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return tokenizer, model


def stop_token_ids(model, tokenizer) -> list[int]:
    """What ends a completion: the eos ids of the model's own generation config (gemma-3-*-it: <eos>
    and <end_of_turn>; Llama 3 instruct: <|eot_id|> and <|end_of_text|>), else its config's, plus the
    tokenizer's eos token (the end of a chat turn)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
            break
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("the model names no end-of-sequence token (generation_config.eos_token_id) and the tokenizer "
                         "has no eos_token: set one of them, or generation would only stop at max_new_tokens")
    return sorted(ids)


def stop_token_ids_of(path: str) -> list[int]:
    """`stop_token_ids` read from a model folder's files (generation_config.json, else config.json, and the
    tokenizer) without loading its weights: what the vLLM engine is told to stop at, so both engines
    end a completion at the same tokens."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json
        generation_config = None
    model = SimpleNamespace(generation_config=generation_config, config=AutoConfig.from_pretrained(path))
    return stop_token_ids(model, AutoTokenizer.from_pretrained(path))


def generate(
    model,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[Generation]:
    """One completion per question; greedy unless `do_sample`."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    results: list[Generation] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [build_prompt_text(tokenizer, q) for q in chunk]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        if seed is not None:
            torch.manual_seed(seed + start)
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                **kwargs,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        for prompt, row in zip(prompts, new_tokens.tolist()):
            n, finish = len(row), "length"
            for i, tok in enumerate(row):
                if tok in stops:
                    n, finish = i, "stop"
                    break
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append(Generation(prompt, text, n, finish))
    return results


def format_report(generations: Sequence[Generation], golds: Sequence[str]) -> dict:
    """How many completions end with 'Final answer: N.', and how many are right."""
    formatted = sum(has_final_answer_line(g.completion) for g in generations)
    correct = sum(extract_answer(g.completion) == gold for g, gold in zip(generations, golds))
    n = len(generations)
    return {
        "n": n,
        "final_answer_format": formatted,
        "final_answer_format_rate": formatted / n if n else 0.0,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "stopped": sum(g.finish_reason == "stop" for g in generations),
    }
