#!/usr/bin/env python
"""Supervised fine-tuning on GSM-Symbolic with Ray Train + Hugging Face Trainer + DeepSpeed ZeRO.

    python jobs/sft.py                                   # tiny Gemma 3 on 2 CPU workers, ZeRO-2
    python jobs/sft.py --zero-stage 3 --run-name z3      # ZeRO-3 (final model gathered on export)
    python jobs/sft.py --preset gemma3-1b --dry-run      # the plan for the real model, no GPUs needed
    ray job submit --working-dir . -- python jobs/sft.py --preset gemma3-4b
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.config import BatchPlan, ConfigError, parse_job_config  # noqa: E402
from ray_app.models.registry import get_preset  # noqa: E402
from ray_app.trainer.job import count_rows, print_plan  # noqa: E402
from ray_app.trainer.memory import GiB  # noqa: E402


def main(argv=None) -> int:
    cfg, _ = parse_job_config("sft", __doc__.split("\n\n")[0], argv)
    try:
        plan = BatchPlan.from_config(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.zero_stage not in (0, 1, 2, 3):
        print(f"error: --zero-stage must be 0, 1, 2 or 3, got {cfg.zero_stage}", file=sys.stderr)
        return 2

    preset = get_preset(cfg.model)
    num_params = preset.arch.parameter_count() if preset else None
    num_examples = count_rows(cfg.resolved_train_file)
    if cfg.dry_run:
        if num_examples is None:
            from ray_app.config import DataConfig

            num_examples = DataConfig().train_size  # the planned data size when the file is not built yet
        on_gpu = cfg.use_gpu if cfg.use_gpu is not None else bool(preset and not preset.embedded)
        print_plan(cfg, plan, num_examples, num_params, on_gpu)
        if num_params:
            print(f"[plan] estimated from the architecture in ray_app/models/registry.py; 1 GiB = {GiB} bytes")
        return 0
    if num_examples is None:
        print(
            f"error: training file {cfg.resolved_train_file} not found; run `python jobs/prepare_data.py` first "
            "or pass --train-file",
            file=sys.stderr,
        )
        return 2

    from ray_app.trainer.job import train_and_report
    from ray_app.utils.ray_init import init_ray

    init_ray()
    train_and_report(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
