#!/usr/bin/env python
"""Batched, left-padded generation vs one question at a time: generated tokens per second.

Both runs use `ray_app.generation.generate` (the code the Ray Data actors run) on the same questions,
model and token budget, in one process; the ratio is what batching buys on this device.

    python bench/generation_batching.py [--model tiny-gemma3-small] [--questions 32] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-gemma3-small", help="preset name or Hugging Face folder")
    parser.add_argument("--data-dir", default=None, help=cli.DATA_DIR_HELP)
    parser.add_argument("--storage-root", default=None, help=cli.ROOT_HELP)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    import torch

    from ray_app.data.gsm import load_split
    from ray_app.generation import generate, load_policy
    from ray_app.models.registry import materialize_model

    torch.manual_seed(0)
    args.data_dir = cli.bench_data_dir(args.data_dir, args.storage_root, use_ray=False)
    path = materialize_model(args.model, corpus_file=storage.join(args.data_dir, "gsm_symbolic_train.jsonl"))
    tokenizer, model = load_policy(path)
    questions = [r["question"] for r in load_split(args.data_dir, "gsm_symbolic_test")[: args.questions]]
    generate(model, tokenizer, questions[:2], max_new_tokens=4, batch_size=2)  # warm-up

    results = {}
    for name, batch_size in (("one at a time", 1), (f"batched x{args.batch_size}", args.batch_size)):
        started = time.perf_counter()
        gens = generate(model, tokenizer, questions, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        seconds = time.perf_counter() - started
        tokens = sum(g.num_tokens for g in gens)
        results[name] = (tokens, seconds)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\nGeneration, {args.model} on {device}, {args.questions} questions, max_new_tokens={args.max_new_tokens}, greedy")
    print(f"{'mode':>16} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'vs one':>7}")
    base = None
    for name, (tokens, seconds) in results.items():
        rate = tokens / seconds
        base = base or rate
        print(f"{name:>16} {tokens:>8} {seconds:>8.2f} {rate:>9.0f} {rate / base:>6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
