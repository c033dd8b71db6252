#!/usr/bin/env python
"""N samples per question, scored by a Ray Serve reward model while generation goes on.

examples:
  python jobs/sample.py --models base=tiny-gemma3-small --num-samples 8
  python jobs/sample.py --models sft=sft/sft-tiny-gemma3-small/final_model --limit 20
  python jobs/sample.py --keep-serving        # leave POST /<app>/score up on 127.0.0.1:8000 afterwards (Ctrl-C deletes it)
  ray job submit --working-dir . -- python jobs/sample.py --preset gemma3-1b --models google/gemma-3-1b-it

Writes <root>/samples/ (root: --storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm): part files,
samples.parquet/.jsonl and sample_manifest.json. Rerunning with the same --out-dir resumes:
questions already scored are not generated again. A rerun with other generation settings
(models, N, temperature, top_p, seed, budget, reward model) stops and names them; --fresh-run
starts over. The reward model is this run's own Serve app, reward-<folder>-<hash> at route /<app>
(in the log and in sample_manifest.json's reward_serving), deleted when the run ends.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli  # noqa: E402
from ray_app.config import parse_job_config  # noqa: E402


def main(argv=None) -> int:
    cfg, args = parse_job_config("sample", __doc__, argv)
    return cli.run(lambda: _main(cfg, args))


def _main(cfg, args) -> int:
    from ray_app.inference.sampling import run_sampling
    from ray_app.models.registry import resolve_model_spec, resolve_model_specs

    cli.check_engines(cfg.engine)
    root = cli.start(args)
    cfg = dataclasses.replace(cfg, models=resolve_model_specs(cfg.models, root),
                              reward_model=resolve_model_spec(cfg.reward_model, root))
    cli.connect_ray()
    cli.ensure_data(cfg.data_dir, args)
    serving = run_sampling(cfg, root)["reward_serving"]
    if cfg.keep_serving:
        from ray_app.reward.serve_app import delete_reward_app

        print(f"[sample] serving POST {serving['url']} (Serve app {serving['app']}) until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            # Serve apps outlive this driver: Ctrl-C deletes this run's app (and only it).
            print(f"[sample] Ctrl-C: deleting Serve app {serving['app']}")
            delete_reward_app(serving["app"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
