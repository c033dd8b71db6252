#!/usr/bin/env python
"""Coverage and selection to large N: sample N per question, then pass@k for every k <= N with the
exponentiated power-law fit of Large Language Monkeys, every selection strategy, and the reward model
as a verifier (AUC, false positives, the Best-of-N ceiling of Inference Scaling fLaws).

examples:
  python jobs/coverage.py                                   # tiny preset: 10 questions x 64 samples
  python jobs/coverage.py --models sft=sft/sft-tiny-gemma3-small/final_model --num-samples 128 --limit 30
  ray job submit --working-dir . -- python jobs/coverage.py --preset gemma3-1b --storage-root s3://my-bucket/gsm

Writes <root>/coverage/ (root: --storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm): samples/ (as
jobs/sample.py, resumable), coverage.csv/.md/.png, coverage_strategies.csv, coverage_fit.json,
verifier.csv/.md/.png, coverage_manifest.json and report.html.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.config import parse_job_config, to_dict  # noqa: E402


def main(argv=None) -> int:
    cfg, args = parse_job_config("coverage", __doc__, argv)
    return cli.run(lambda: _main(cfg, args))


def _main(cfg, args) -> int:
    from ray_app.analysis.curves import describe_verifier, write_coverage_report, write_verifier_report
    from ray_app.analysis.html_report import write_html_report
    from ray_app.analysis.report import read_samples
    from ray_app.inference.sampling import run_sampling
    from ray_app.models.registry import parse_model_specs, resolve_model_spec, resolve_model_specs
    from ray_app.utils.run_info import redacted, versions

    started = time.perf_counter()
    cli.check_engines(cfg.engine)
    root = cli.start(args)
    out = cfg.out_dir
    sample_cfg = dataclasses.replace(cfg, out_dir=storage.join(out, "samples"), models=resolve_model_specs(cfg.models, root),
                                     reward_model=resolve_model_spec(cfg.reward_model, root))
    cli.connect_ray()
    cli.ensure_data(cfg.data_dir, args)
    t = time.perf_counter()
    sampled = run_sampling(sample_cfg, root)
    timings = {"sample_and_score": time.perf_counter() - t}

    df = read_samples(storage.join(sample_cfg.out_dir, "samples.parquet"))
    # Assembled locally, then published beside samples/ (storage.publish_dir keeps it): never half a report.
    with tempfile.TemporaryDirectory(prefix="ray_app_coverage_") as tmp:
        local = Path(tmp)
        t = time.perf_counter()
        coverage = write_coverage_report(df, local, seed=cfg.seed)
        verifier = write_verifier_report(df, local, seed=cfg.seed)
        timings["analyze"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        models = dict(parse_model_specs(sample_cfg.models)) | {"reward model": sample_cfg.reward_model}
        storage.write_json(str(local / "coverage_manifest.json"), redacted({
            "config": to_dict(cfg), "preset": args.preset, "samples_fingerprint": sampled["config_fingerprint"],
            "num_samples": coverage["num_samples"], "questions": int(df["question_id"].nunique()),
            "coverage_fits": {f"{m}/{d}": fit for (m, d), fit in coverage["fits"].items()},
            "verifier": {f"{m}/{d}": s for (m, d), s in verifier["stats"].items()},
            "models": models, "timings_s": {k: round(v, 1) for k, v in timings.items()}, "versions": versions(),
        }))
        write_html_report(local, f"Coverage and selection to N = {coverage['num_samples']}", models)
        storage.publish_dir(local, out, root)
    for (model, dataset), fit in coverage["fits"].items():
        said = fit.get("error") or f"coverage(k) = exp({fit['a']:.3g} k^{fit['b']:.3g}), R^2 {fit['r2']:.3f}"
        print(f"[coverage] {model} / {dataset}: {said}")
    for line in describe_verifier(verifier["stats"]):
        print(f"[coverage] verifier {line}")
    print(f"[coverage] done: {storage.join(out, 'report.html')} (and coverage.*, verifier.*, coverage_manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
