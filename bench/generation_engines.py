#!/usr/bin/env python
"""The two generation engines on the same workload: questions x N samples x max new tokens, tokens/s.

Both go through the generation layer the jobs use (`ray_app.inference.actors.generate_rows`) on one
local Ray instance started here: hf (Hugging Face `generate`, static batches, on Ray Data actors) and
vllm (`ray.data.llm`, continuous batching, prefix caching). Each engine's time includes starting it
(loading the model; for vLLM also its engine process and KV cache, ~30 s on 2 CPU cores), as a job
pays it, so small workloads favour hf; "first batch s" says when each engine's first batch came out.
The ratio is vllm / hf tokens per second.

    python bench/generation_engines.py [--model tiny-gemma3-small] [--questions 32] [--num-samples 8] [--max-new-tokens 64]

vLLM must be importable (on CPU: `source .venv-vllm/bin/activate`, built by `bash scripts/setup.sh --vllm`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-gemma3-small", help="preset name, Hugging Face folder or Hub id")
    parser.add_argument("--data-dir", default=None, help=cli.DATA_DIR_HELP)
    parser.add_argument("--storage-root", default=None, help=cli.ROOT_HELP)
    parser.add_argument("--questions", type=int, default=32, help="questions of gsm_symbolic_test (default 32)")
    parser.add_argument("--num-samples", type=int, default=8, help="samples per question, N (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="budget per sample (default 64)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per HF generate call / per vLLM batch (default 64)")
    parser.add_argument("--num-gpus", type=float, default=None, help="GPUs per engine replica (default: 1 where Ray sees a GPU, else 0)")
    args = parser.parse_args(argv)
    for name in ("questions", "num_samples", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    from ray_app.inference.actors import generate_rows, question_rows
    from ray_app.utils.engines import engine_settings
    from ray_app.utils.ray_init import ensure_connected

    vllm = engine_settings("vllm", do_sample=True)["engine"]  # a clear error when vLLM is missing, before any work
    args.data_dir = cli.bench_data_dir(args.data_dir, args.storage_root, use_ray=False)
    ensure_connected(print)
    import ray

    num_gpus = args.num_gpus if args.num_gpus is not None else (1.0 if ray.cluster_resources().get("GPU") else 0.0)
    rows = question_rows(args.data_dir, ["gsm_symbolic_test"], args.questions)
    corpus = storage.join(args.data_dir, "gsm_symbolic_train.jsonl")
    sampling = {"max_new_tokens": args.max_new_tokens, "num_samples": args.num_samples, "do_sample": True,
                "temperature": args.temperature, "top_p": 1.0, "seed": 0}
    results = {}
    for engine in ("hf", "vllm"):
        # hf batches whole questions (N copies each); vllm batches requests (one per sample).
        batch_size = max(1, args.batch_size // args.num_samples) if engine == "hf" else args.batch_size
        started = time.perf_counter()
        first = None
        tokens = rows_out = 0
        ds = generate_rows(engine, rows, "bench", args.model, corpus, {**sampling, "batch_size": batch_size},
                           batch_size, 1, num_gpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
            tokens += int(batch["num_tokens"].sum())
            rows_out += len(batch)
            if first is None:  # the first batch carries the engine's start-up
                first = time.perf_counter() - started
        seconds = time.perf_counter() - started
        results[engine] = (rows_out, tokens, seconds, first)
        print(f"[bench] {engine}: {rows_out} samples, {tokens} tokens in {seconds:.1f}s", flush=True)

    device = f"{num_gpus:g} GPU" if num_gpus else "CPU"
    print(f"\nGeneration engines, {args.model} on {device}: {args.questions} questions x N={args.num_samples} x "
          f"max_new_tokens={args.max_new_tokens}, temperature {args.temperature} (hf = transformers generate, vllm = {vllm})")
    print(f"{'engine':>7} {'samples':>8} {'tokens':>8} {'seconds':>8} {'first batch s':>14} {'tokens/s':>9} {'vs hf':>6}")
    base = results["hf"][1] / results["hf"][2]
    for engine, (samples, tokens, seconds, first) in results.items():
        rate = tokens / seconds
        print(f"{engine:>7} {samples:>8} {tokens:>8} {seconds:>8.1f} {first or 0:>14.1f} {rate:>9.0f} {rate / base:>5.2f}x")
    # Not a steady-state rate: vLLM runs all its batches at once, so its first batch holds most of the work.
    print(f"ratio vllm/hf: {(results['vllm'][1] / results['vllm'][2]) / base:.2f}x tokens/s, each engine's start-up included "
          "(raise --questions/--num-samples to see the rate a long run gets)")
    return 0


if __name__ == "__main__":  # vLLM spawns its engine core: the entry point must be guarded
    sys.exit(main())
