#!/usr/bin/env python
"""Build the four GSM data sets (and the embedded tiny models) reproducibly.

examples:
  python jobs/prepare_data.py                         # embedded default (tiny preset) -> ~/ray-app-gsm/data
  python jobs/prepare_data.py --train-size 1000 --out-dir data-1000   # data scaling: 100 / 1000 / 4500 / 20000
  python jobs/prepare_data.py --storage-root s3://my-bucket/gsm        # built here, uploaded to the bucket
  ray job submit --working-dir . -- python jobs/prepare_data.py --preset gemma3-1b
  python jobs/prepare_data.py --course-files ~/a4-data --out-dir course   # the course's four files as the splits
  python jobs/prepare_data.py --symbolic-source apple/GSM-Symbolic --symbolic-config p1 --out-dir p1   # the course's P1 (Hub)

Writes <root>/data/ (root: --storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm). The other jobs
build the data themselves when it is missing; this job builds it on purpose (other sizes, seeds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.config import ConfigError, parse_job_config, to_dict  # noqa: E402
from ray_app.data.gsm import build_from_config  # noqa: E402
from ray_app.models.registry import MODEL_PRESETS, materialize_model  # noqa: E402
from ray_app.utils.run_info import versions  # noqa: E402

EMBEDDED = [name for name, p in MODEL_PRESETS.items() if p.embedded]


def _extra(parser):
    parser.add_argument(
        "--build-models",
        default=",".join(EMBEDDED),
        help=f"comma-separated embedded models to build from the new training data ('' for none) [default: {','.join(EMBEDDED)}]",
    )


def main(argv=None) -> int:
    cfg, args = parse_job_config("data", __doc__, argv, extra=_extra)
    return cli.run(lambda: _main(cfg, args))


def _main(cfg, args) -> int:
    models = [m for m in args.build_models.split(",") if m]
    unknown = [m for m in models if m not in EMBEDDED]
    if unknown:  # before anything is built
        raise ConfigError(f"--build-models: {', '.join(repr(m) for m in unknown)} is not an embedded model; "
                          f"choose from {', '.join(EMBEDDED)} (or '' for none)")
    cli.start(args)
    if cfg.use_ray:
        cli.connect_ray()
    started = time.perf_counter()
    report = build_from_config(cfg, extra_manifest={"versions": versions()}, run_info={"config_full": to_dict(cfg)})
    print(f"[data] wrote {report.out_dir} in {time.perf_counter() - started:.1f}s:")
    for split, info in report.files.items():
        print(f"  {split:24s} {info['rows']:6d} rows  sha256 {info['sha256'][:16]}")
    sep = report.separation
    if cfg.course_files:
        print(f"  the course's files from {cfg.course_files}, every row checked; test rows also in training: 0")
    else:
        avoided = ", ".join(f"{split} {n}" for split, n in sep["near_duplicates_avoided"].items())
        print(f"  kept out of training as test questions with other names: {avoided}; "
              f"training rows repeating another's numbers: {sep['train_rows_repeating_train_numbers']}")
    if not cfg.course_files and sep["train_rows"] < cfg.train_size:
        print(f"  --dedupe-train-numbers left {sep['train_rows']} training rows, fewer than --train-size {cfg.train_size}")
    train_file = storage.join(cfg.out_dir, "gsm_symbolic_train.jsonl")
    for name in models:
        t = time.perf_counter()
        path = materialize_model(name, corpus_file=train_file)
        print(f"[models] {name:20s} -> {path} ({time.perf_counter() - t:.1f}s; node-local cache, rebuilt identically on each node)")
    print(f"[data] done: data sets -> {report.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
