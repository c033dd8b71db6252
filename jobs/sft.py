#!/usr/bin/env python
"""Supervised fine-tuning on GSM-Symbolic with Ray Train + Hugging Face Trainer + DeepSpeed ZeRO.

examples:
  python jobs/sft.py                                   # tiny Gemma 3 on 2 CPU workers, ZeRO-2
  python jobs/sft.py --zero-stage 3 --run-name z3      # ZeRO-3 (final model gathered on export)
  python jobs/sft.py --preset gemma3-1b --dry-run      # the plan for the real model, no GPUs needed
  python jobs/sft.py --storage-root s3://my-bucket/gsm --max-steps 100
  ray job submit --working-dir . -- python jobs/sft.py --preset gemma3-4b

Outputs go under the storage root (--storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm):
sft/<run>/checkpoint_*, sft/<run>/final_model, run_manifest.json, loss_curve.png. The training
data is read from <root>/data and built there first when missing. Rerunning a run resumes it from
its latest checkpoint; a rerun with other training settings stops and names them (--fresh-run
starts over).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.config import BatchPlan, DataConfig, parse_job_config  # noqa: E402
from ray_app.data.encoding import read_training_rows, stated_share  # noqa: E402
from ray_app.models.registry import get_preset, resolve_model_spec  # noqa: E402
from ray_app.trainer.job import count_rows, print_plan  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402


def main(argv=None) -> int:
    cfg, args = parse_job_config("sft", __doc__, argv)
    return cli.run(lambda: _main(cfg, args))


def _main(cfg, args) -> int:
    plan = BatchPlan.from_config(cfg)

    if cfg.dry_run:
        preset = get_preset(cfg.model)
        num_examples = count_rows(cfg.resolved_train_file) or DataConfig().train_size  # planned size if not built yet
        on_gpu = cfg.use_gpu if cfg.use_gpu is not None else bool(preset and not preset.embedded)
        print_plan(cfg, plan, num_examples, on_gpu)
        return 0

    from ray_app.trainer.job import train_and_report

    root = cli.start(args)
    cfg = dataclasses.replace(cfg, model=resolve_model_spec(cfg.model, root))
    # Every training row is checked here, on the driver and before Ray starts: a bad row stops the job
    # naming file and line instead of failing inside Train workers after a restart is spent.
    train_file = cfg.resolved_train_file
    if cfg.train_file is not None and not storage.exists(train_file):
        raise DataError(f"training file {train_file} not found; check --train-file (relative paths are under the storage root)")
    if storage.exists(train_file):
        rows = read_training_rows(storage.local_copy(train_file), cfg.question_field, cfg.answer_field, cfg.answer_format)
        if cfg.answer_format != "gsm8k":
            print(f"[sft] {train_file}: {len(rows)} rows, {100 * stated_share(rows, cfg.answer_format):.0f}% state a "
                  "numeric result (trained as 'Final answer: N.'), the rest are learned as written")
    cli.connect_ray()
    if cfg.train_file is None:
        cli.ensure_data(cfg.data_dir, args)
    train_and_report(cfg, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
