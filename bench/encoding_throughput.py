#!/usr/bin/env python
"""SFT encoding throughput (examples/s) with the real Gemma 3 tokenizer at several `num_proc`.

Encodes the training rows through `load_and_prepare_train_dataset` (the path the SFT workers use)
with the Arrow cache disabled, best of `--repeats`, and prints ratios against num_proc=1 measured in
the same process.

    python bench/encoding_throughput.py [--train-file data/gsm_symbolic_train.jsonl]  # under the storage root [--num-proc 1,2]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ray_app import cli, storage  # noqa: E402


@dataclass
class EncodeSettings:
    train_file: str
    num_proc: int
    max_seq_length: int = 1024
    train_pct: float = 100.0
    shuffle: bool = False
    seed: int = 0
    load_from_cache_file: bool = False
    encode_cache_dir: str | None = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-file", default=None, help="training JSONL [default: STORAGE_ROOT/data/gsm_symbolic_train.jsonl, built when missing]")
    parser.add_argument("--storage-root", default=None, help=cli.ROOT_HELP)
    parser.add_argument("--tokenizer", default="google/gemma-3-1b-it",
                        help="tokenizer folder or Hub id (offline: a folder with tokenizer.json, e.g. a saved Gemma 3 "
                        "tokenizer) [default: google/gemma-3-1b-it]")
    parser.add_argument("--num-proc", default="1,2", help="comma-separated num_proc values; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import datasets
    from transformers import AutoTokenizer

    from ray_app.data.encoding import load_and_prepare_train_dataset

    if args.train_file is None:
        args.train_file = storage.join(cli.bench_data_dir(None, args.storage_root, use_ray=False), "gsm_symbolic_train.jsonl")
    else:  # relative paths are under the storage root, as in every job
        args.train_file = storage.under_root(storage.resolve_root(args.storage_root), args.train_file)
    args.train_file = str(storage.local_copy(args.train_file))
    datasets.disable_progress_bars()
    datasets.disable_caching()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except (OSError, ValueError) as e:
        parser.error(f"cannot load the tokenizer '{args.tokenizer}' ({type(e).__name__}); without Hub access pass "
                     "--tokenizer FOLDER with a saved Gemma 3 tokenizer (tokenizer.json + tokenizer_config.json)")
    results = {}
    for num_proc in [int(n) for n in args.num_proc.split(",")]:
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            ds = load_and_prepare_train_dataset(EncodeSettings(args.train_file, num_proc), tokenizer)
            best = min(best, time.perf_counter() - started)
        tokens = sum(len(x) for x in ds["input_ids"])
        results[num_proc] = (len(ds), best, tokens)
    base_rate = None
    print(f"\nSFT encoding, {Path(args.tokenizer).name} tokenizer, {args.train_file}")
    print(f"{'num_proc':>8} {'examples':>9} {'seconds':>8} {'examples/s':>11} {'tokens/ex':>9} {'vs first':>8}")
    for num_proc, (n, seconds, tokens) in results.items():
        rate = n / seconds
        base_rate = base_rate or rate
        print(f"{num_proc:>8} {n:>9} {seconds:>8.2f} {rate:>11.0f} {tokens / n:>9.1f} {rate / base_rate:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
