#!/usr/bin/env python
"""Greedy evaluation of models on the three test sets: per-example predictions and Table 1.

examples:
  python jobs/evaluate.py --models base=tiny-gemma3-small,sft=sft/sft-tiny-gemma3-small/final_model
  python jobs/evaluate.py --storage-root s3://my-bucket/gsm --models sft=sft/sft-tiny-gemma3-small/final_model
  ray job submit --working-dir . -- python jobs/evaluate.py --preset gemma3-1b --models google/gemma-3-1b-it

MODEL is a preset name, a Hub id, a URI, or a folder; relative folders are under the storage root
(--storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm), where jobs/sft.py exports its models.
Writes <root>/eval/predictions.jsonl, table1_accuracy.csv/.md (95% Wilson intervals),
table1_differences.csv/.md (SFT - base per test set for labels like small-sft / small-base, paired
bootstrap interval) and eval_manifest.json.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli  # noqa: E402
from ray_app.config import parse_job_config  # noqa: E402


def main(argv=None) -> int:
    cfg, args = parse_job_config("eval", __doc__, argv)
    return cli.run(lambda: _main(cfg, args))


def _main(cfg, args) -> int:
    from ray_app.inference.evaluation import run_evaluation
    from ray_app.models.registry import resolve_model_specs

    cli.check_engines(cfg.engine)
    root = cli.start(args)
    cfg = dataclasses.replace(cfg, models=resolve_model_specs(cfg.models, root))
    cli.connect_ray()
    cli.ensure_data(cfg.data_dir, args)
    run_evaluation(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
