#!/usr/bin/env python
"""N samples per question, scored by a Ray Serve reward model while generation goes on.

    python jobs/sample.py --models base=tiny-gemma3-small --num-samples 8
    python jobs/sample.py --keep-serving        # leave POST /score up on 127.0.0.1:8000 afterwards
    ray job submit --working-dir . -- python jobs/sample.py --preset gemma3-1b --models google/gemma-3-1b-it

Rerunning with the same --out-dir resumes: questions already scored are not generated again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.config import parse_job_config  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402


def main(argv=None) -> int:
    cfg, _ = parse_job_config("sample", __doc__.split("\n\n")[0], argv)
    if cfg.num_samples < 1:
        print("error: --num-samples must be >= 1", file=sys.stderr)
        return 2
    from ray_app.inference.sampling import run_sampling
    from ray_app.utils.ray_init import init_ray

    init_ray()
    try:
        run_sampling(cfg)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.keep_serving:
        print(f"[sample] serving POST http://{cfg.serve_host}:{cfg.serve_port}/score until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
