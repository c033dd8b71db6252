#!/usr/bin/env python
"""Build the four GSM data sets (and the embedded tiny models) reproducibly.

    python jobs/prepare_data.py                         # embedded default (tiny preset)
    python jobs/prepare_data.py --train-size 1000       # data scaling: 100 / 1000 / 4500 / 20000
    ray job submit --working-dir . -- python jobs/prepare_data.py --preset gemma3-1b
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.config import parse_job_config, to_dict  # noqa: E402
from ray_app.data.gsm import build_from_config  # noqa: E402
from ray_app.models.registry import MODEL_PRESETS, resolve_model_path  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402
from ray_app.utils.run_info import versions  # noqa: E402

EMBEDDED = [name for name, p in MODEL_PRESETS.items() if p.embedded]


def _extra(parser):
    parser.add_argument(
        "--build-models",
        default=",".join(EMBEDDED),
        help=f"comma-separated embedded models to build from the new training data ('' for none) [default: {','.join(EMBEDDED)}]",
    )


def main(argv=None) -> int:
    cfg, args = parse_job_config("data", __doc__.split("\n\n")[0], argv, extra=_extra)
    if cfg.use_ray:
        from ray_app.utils.ray_init import init_ray

        init_ray()
    started = time.perf_counter()
    try:
        report = build_from_config(cfg, extra_manifest={"config_full": to_dict(cfg), "versions": versions()})
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[data] wrote {report.out_dir} in {time.perf_counter() - started:.1f}s:")
    for split, info in report.files.items():
        print(f"  {split:24s} {info['rows']:6d} rows  sha256 {info['sha256'][:16]}")
    train_file = str(Path(cfg.out_dir) / "gsm_symbolic_train.jsonl")
    for name in [m for m in args.build_models.split(",") if m]:
        if name not in EMBEDDED:
            print(f"error: --build-models: '{name}' is not an embedded model ({', '.join(EMBEDDED)})", file=sys.stderr)
            return 2
        t = time.perf_counter()
        path = resolve_model_path(name, corpus_file=train_file)
        print(f"[models] {name:20s} -> {path} ({time.perf_counter() - t:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
