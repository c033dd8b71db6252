#!/usr/bin/env python
"""Greedy evaluation of models on the three test sets: per-example predictions and Table 1.

    python jobs/evaluate.py --models base=tiny-gemma3-small,sft=outputs/sft/sft-tiny-gemma3-small/final_model
    ray job submit --working-dir . -- python jobs/evaluate.py --preset gemma3-1b --models google/gemma-3-1b-it
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.config import parse_job_config  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402


def main(argv=None) -> int:
    cfg, _ = parse_job_config("eval", __doc__.split("\n\n")[0], argv)
    from ray_app.inference.evaluation import run_evaluation
    from ray_app.utils.ray_init import init_ray

    init_ray()
    try:
        run_evaluation(cfg)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[eval] wrote {cfg.out_dir}/table1_accuracy.csv, table1_accuracy.md, predictions.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
