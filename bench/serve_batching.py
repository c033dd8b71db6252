#!/usr/bin/env python
"""Ray Serve reward scoring with @serve.batch vs max_batch_size=1: scores per second.

Deploys the reward deployment of `ray_app.reward.serve_app` twice on a local Ray cluster (one
replica each time) and sends the same Best-of-N workload through a Serve handle, the way
jobs/sample.py does: N responses per question, one request per generated batch of questions,
several requests in flight. Prints scores/s, the ratio measured in this one run, the mean Serve
batch, and how many tokens the batched replica ran compared with scoring pair by pair.

The workload is either a samples file written by jobs/sample.py (`--samples`, real policy
responses) or, by default, built from the data: for every gsm_symbolic_test question, N worked
answers of other instances of the same template stand in for the N sampled responses.

    python bench/serve_batching.py [--questions 64] [--n 8] [--samples FILE] [--max-batch-size 32]
    python bench/serve_batching.py --in-process   # the scorer alone, no Ray (e.g. on a GPU machine)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402


def workload_from_data(data_dir: str, questions: int, n: int) -> tuple[list[str], list[str]]:
    from ray_app.data.gsm import load_split

    by_template = defaultdict(list)
    for row in load_split(data_dir, "gsm_symbolic_train"):
        by_template[row["template_id"]].append(row["answer"].split("####")[0].strip())
    qs, rs = [], []
    for row in load_split(data_dir, "gsm_symbolic_test")[:questions]:
        answers = by_template[row["template_id"]]
        for k in range(n):
            qs.append(row["question"])
            rs.append(answers[k % len(answers)])
    return qs, rs


def workload_from_samples(path: str, questions: int, n: int) -> tuple[list[str], list[str]]:
    from ray_app.analysis.report import read_samples

    df = read_samples(path)
    df = df[df["sample_idx"] < n].sort_values(["model", "question_id", "sample_idx"])
    keys = set(list(dict.fromkeys(zip(df["model"], df["question_id"])))[:questions])
    df = df[[k in keys for k in zip(df["model"], df["question_id"])]]
    return df["question"].tolist(), df["response"].tolist()


def in_process(path: str, questions: list[str], responses: list[str], args, source: str) -> int:
    from ray_app.reward.scorer import RewardScorer, ScoringStats

    rows = []
    for name, scorer, batch in (("pair by pair", RewardScorer(path, share_prefixes=False), 1),
                                (f"batched x{args.max_batch_size}", RewardScorer(path), args.max_batch_size)):
        scorer.score(questions[:2], responses[:2])  # warm-up
        scorer.stats = ScoringStats()  # count the timed run only
        started = time.perf_counter()
        scores = scorer.score(questions, responses, batch_size=batch)
        rows.append((name, time.perf_counter() - started, scorer.stats.as_dict()["token_saving"], scores, scorer.device))
    print(f"\nReward scoring in one process on {rows[0][4]}, {args.reward_model}, {len(questions) // args.n} questions x "
          f"{args.n} responses ({source})")
    print(f"{'setting':>14} {'scores':>7} {'seconds':>8} {'scores/s':>9} {'token saving':>12} {'vs 1':>6}")
    base = len(questions) / rows[0][1]
    for name, seconds, saving, _, _ in rows:
        rate = len(questions) / seconds
        print(f"{name:>14} {len(questions):>7} {seconds:>8.2f} {rate:>9.0f} {saving:>11.2f}x {rate / base:>5.1f}x")
    print(f"largest |score difference|: {max(abs(a - b) for a, b in zip(rows[0][3], rows[1][3])):.2e}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward-model", default="tiny-llama-reward")
    parser.add_argument("--data-dir", default=None, help=cli.DATA_DIR_HELP)
    parser.add_argument("--storage-root", default=None, help=cli.ROOT_HELP)
    parser.add_argument("--samples", default=None, help="samples.parquet/.jsonl from jobs/sample.py (real responses)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--n", type=int, default=8, help="responses per question (Best-of-N's N)")
    parser.add_argument("--questions-per-request", type=int, default=4, help="the sampler's generation batch")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--port", type=int, default=8401)
    parser.add_argument("--in-process", action="store_true",
                        help="no Ray: the scorer alone, pair by pair vs batched (runs where Ray is not installed, e.g. a GPU box)")
    args = parser.parse_args(argv)

    from ray_app.models.registry import materialize_model

    if not args.in_process:
        from ray_app.utils.ray_init import init_ray

        init_ray()
    args.data_dir = cli.bench_data_dir(args.data_dir, args.storage_root, use_ray=not args.in_process)
    if args.samples:
        questions, responses = workload_from_samples(args.samples, args.questions, args.n)
        source = f"responses from {args.samples}"
    else:
        questions, responses = workload_from_data(args.data_dir, args.questions, args.n)
        source = "same-template worked answers as responses"
    corpus = storage.join(args.data_dir, "gsm_symbolic_train.jsonl")
    path = materialize_model(args.reward_model, corpus_file=corpus)
    if args.in_process:
        return in_process(path, questions, responses, args, source)

    from ray import serve

    from ray_app.reward.serve_app import ServeSettings, deploy_reward_model
    from ray_app.utils.ray_init import init_ray

    init_ray()
    chunk = args.questions_per_request * args.n

    results = {}
    for name, max_batch in (("max_batch_size=1", 1), (f"max_batch_size={args.max_batch_size}", args.max_batch_size)):
        app_name = "reward-bench-batch-1" if max_batch == 1 else "reward-bench-batched"
        handle = deploy_reward_model(ServeSettings(model_path=args.reward_model, corpus_file=corpus, port=args.port, max_batch_size=max_batch,
                                                   max_ongoing_requests=256, batch_wait_timeout_s=0.005), app_name)
        handle.score.remote(questions[:2], responses[:2]).result()  # warm-up
        before = handle.stats.remote().result()
        started = time.perf_counter()
        futures = [handle.score.remote(questions[i : i + chunk], responses[i : i + chunk]) for i in range(0, len(questions), chunk)]
        scores = [s for f in futures for s in f.result()["scores"]]
        seconds = time.perf_counter() - started
        after = handle.stats.remote().result()
        ran = after["scoring"]["tokens_run"] - before["scoring"]["tokens_run"]
        full = after["scoring"]["tokens_in_pairs"] - before["scoring"]["tokens_in_pairs"]
        busy = (after["compute_seconds"] - before["compute_seconds"]) / seconds
        results[name] = (len(scores), seconds, after["mean_batch_size"], full / max(1, ran), busy, scores)
        serve.delete(app_name)

    print(f"\nReward scoring through Ray Serve, {args.reward_model}, {len(questions) // args.n} questions x {args.n} "
          f"responses ({source}), {len(futures)} concurrent requests, 1 replica")
    print(f"{'setting':>20} {'scores':>7} {'seconds':>8} {'scores/s':>9} {'mean batch':>10} {'token saving':>12} "
          f"{'in scorer':>9} {'vs 1':>6}")
    base = None
    for name, (n, seconds, mean_batch, saving, busy, _) in results.items():
        rate = n / seconds
        base = base or rate
        print(f"{name:>20} {n:>7} {seconds:>8.2f} {rate:>9.0f} {mean_batch:>10.1f} {saving:>11.2f}x {busy:>8.0%} {rate / base:>5.1f}x")
    one, batched = (r[-1] for r in results.values())
    print(f"largest |score difference| between the two settings: {max(abs(a - b) for a, b in zip(one, batched)):.2e}")
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
