#!/usr/bin/env python
"""Ray Serve reward scoring with @serve.batch vs max_batch_size=1: scores per second.

Deploys the reward deployment of `ray_app.reward.serve_app` twice on a local Ray cluster (one
replica each time), sends the same (question, response) pairs as concurrent requests through a
Serve handle, and prints scores/s and the ratio measured in this one run.

    python bench/serve_batching.py [--pairs 512] [--requests 32] [--max-batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward-model", default="tiny-llama-reward")
    parser.add_argument("--data-dir", default="outputs/data")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--requests", type=int, default=32, help="concurrent requests the pairs are split into")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--port", type=int, default=8401)
    args = parser.parse_args(argv)

    from ray import serve

    from ray_app.data.gsm import load_split
    from ray_app.models.registry import resolve_model_path
    from ray_app.reward.serve_app import APP_NAME, ServeSettings, deploy_reward_model
    from ray_app.utils.ray_init import init_ray

    init_ray()
    path = resolve_model_path(args.reward_model, corpus_file=str(Path(args.data_dir) / "gsm_symbolic_train.jsonl"))
    rows = load_split(args.data_dir, "gsm_symbolic_train")[: args.pairs]
    questions = [r["question"] for r in rows]
    responses = [r["answer"].split("####")[0] for r in rows]
    chunk = max(1, len(rows) // args.requests)

    results = {}
    for name, max_batch in (("max_batch_size=1", 1), (f"max_batch_size={args.max_batch_size}", args.max_batch_size)):
        handle = deploy_reward_model(ServeSettings(model_path=path, port=args.port, max_batch_size=max_batch,
                                                   max_ongoing_requests=max(64, args.requests), batch_wait_timeout_s=0.005))
        handle.score.remote(questions[:2], responses[:2]).result()  # warm-up
        started = time.perf_counter()
        futures = [handle.score.remote(questions[i : i + chunk], responses[i : i + chunk]) for i in range(0, len(rows), chunk)]
        scores = [s for f in futures for s in f.result()["scores"]]
        seconds = time.perf_counter() - started
        stats = handle.stats.remote().result()
        results[name] = (len(scores), seconds, stats["mean_batch_size"])
        serve.delete(APP_NAME)
    print(f"\nReward scoring through Ray Serve, {args.reward_model}, {len(rows)} pairs in {len(futures)} concurrent requests, 1 replica")
    print(f"{'setting':>20} {'scores':>7} {'seconds':>8} {'scores/s':>9} {'mean batch':>10} {'vs 1':>6}")
    base = None
    for name, (n, seconds, mean_batch) in results.items():
        rate = n / seconds
        base = base or rate
        print(f"{name:>20} {n:>7} {seconds:>8.2f} {rate:>9.0f} {mean_batch:>10.1f} {rate / base:>5.1f}x")
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
