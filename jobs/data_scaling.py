#!/usr/bin/env python
"""Accuracy vs number of training examples: SFT on nested subsets of the training file, greedy
evaluation of each model (and the base) on the same held-out questions, and a power-law fit
accuracy ~ c * n^alpha (Revisiting the Superficial Alignment Hypothesis).

examples:
  python jobs/data_scaling.py                               # tiny preset: 100, 300, 1000 rows
  python jobs/data_scaling.py --sizes 50,200 --max-steps 20 --eval-limit 20
  ray job submit --working-dir . -- python jobs/data_scaling.py --preset gemma3-1b --storage-root s3://my-bucket/gsm

The subsets are nested (the first n rows of one seeded shuffle, so every larger set contains the
smaller ones) and every size trains for the sft section's epochs unless --max-steps is given. Writes
<root>/data_scaling/ (root: --storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm): train/,
sft/, eval/, data_scaling.csv/.md/.png, data_scaling_format.png, data_scaling_fit.json,
data_scaling_manifest.json and report.html.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.config import parse_job_config, resolve_paths, resolve_section, to_dict  # noqa: E402
from ray_app.utils.io import DataError  # noqa: E402


def main(argv=None) -> int:
    cfg, args = parse_job_config("data_scaling", __doc__, argv)
    return cli.run(lambda: _main(cfg, args))


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise DataError(f"--sizes {text!r}: expected comma-separated row counts such as 100,300,1000") from None
    if len(sizes) < 2 or sizes[0] < 1:
        raise DataError(f"--sizes {text!r}: give at least two sizes, each at least 1 (a fit needs two points)")
    return sizes


def nested_subsets(lines: list[str], sizes: list[int], seed: int) -> dict[int, list[str]]:
    """{size: the first `size` rows of one seeded shuffle, in file order}: every set holds the smaller ones."""
    order = random.Random(seed).sample(range(len(lines)), len(lines))
    return {size: [lines[i] for i in sorted(order[:size])] for size in sizes}


def _main(cfg, args) -> int:
    from ray_app.analysis.curves import fit_power_law, plot_power_law
    from ray_app.analysis.estimators import wilson_interval
    from ray_app.analysis.html_report import write_html_report
    from ray_app.analysis.report import to_markdown
    from ray_app.config import BatchPlan
    from ray_app.inference.evaluation import run_evaluation
    from ray_app.trainer.job import train_and_report
    from ray_app.utils.run_info import redacted, versions

    import pandas as pd

    started = time.perf_counter()
    sizes = parse_sizes(cfg.sizes)
    root = cli.start(args)
    out, timings = cfg.out_dir, {}
    cli.connect_ray()
    cli.ensure_data(cfg.data_dir, args)
    train_file = storage.join(cfg.data_dir, "gsm_symbolic_train.jsonl")
    lines = [line for line in storage.read_text(train_file).splitlines() if line.strip()]
    if sizes[-1] > len(lines):
        raise DataError(f"{train_file} has {len(lines)} rows; --sizes goes up to {sizes[-1]}. Build a bigger set first "
                        f"(python jobs/prepare_data.py --train-size {sizes[-1]} --out-dir data-{sizes[-1]}) and pass "
                        f"--data-dir data-{sizes[-1]}")
    subsets = nested_subsets(lines, sizes, cfg.subset_seed)
    for size, rows in subsets.items():
        storage.write_text(storage.join(out, "train", f"train_{size}.jsonl"), "\n".join(rows) + "\n")

    sft_section = resolve_paths(resolve_section("sft", args.preset, args.config, {}), root)
    base = dataclasses.replace(sft_section, model=cfg.model, data_dir=cfg.data_dir, storage_path=storage.join(out, "sft"),
                               export_dir=None, eval_after=False, max_steps=cfg.max_steps)
    models, steps = {"base": cfg.model}, {0: 0}
    for size in sizes:
        sft_cfg = dataclasses.replace(base, train_file=storage.join(out, "train", f"train_{size}.jsonl"),
                                      run_name=f"sft-{storage.basename(cfg.model)}-n{size}")
        t = time.perf_counter()
        print(f"\n=== [sft n={size}] ===", flush=True)
        models[f"n{size}"] = train_and_report(sft_cfg, root)["export_dir"]
        timings[f"sft_n{size}"] = round(time.perf_counter() - t, 1)
        steps[size] = BatchPlan.from_config(sft_cfg).total_steps(size, sft_cfg.num_train_epochs, sft_cfg.max_steps)

    eval_section = resolve_paths(resolve_section("eval", args.preset, args.config, {}), root)
    eval_cfg = dataclasses.replace(eval_section, models=",".join(f"{k}={v}" for k, v in models.items()), data_dir=cfg.data_dir,
                                   datasets=cfg.eval_dataset, limit=cfg.eval_limit, out_dir=storage.join(out, "eval"),
                                   max_new_tokens=cfg.max_new_tokens or eval_section.max_new_tokens)
    t = time.perf_counter()
    predictions = run_evaluation(eval_cfg)["predictions"]
    timings["evaluate"] = round(time.perf_counter() - t, 1)

    table = []
    for label, size in zip(models, [0] + sizes):
        part = predictions[predictions["model"] == label]
        k, n, formatted = int(part["correct"].sum()), len(part), int(part["final_answer_format"].sum())
        low, high = wilson_interval(k, n)
        table.append({"train_rows": size, "model": label, "optimizer_steps": steps[size], "accuracy": 100 * k / n,
                      "ci_low": 100 * low, "ci_high": 100 * high, "format": 100 * formatted / n, "questions": n})
    table = pd.DataFrame(table)
    trained = table[table["train_rows"] > 0]
    fits = {}
    for column in ("accuracy", "format"):
        try:
            fits[column] = fit_power_law(trained["train_rows"], trained[column])
        except ValueError as e:  # e.g. every accuracy 0 on a tiny model: say so instead of a made-up curve
            fits[column] = {"error": str(e)}

    # Assembled locally, then published beside train/, sft/, eval/ (storage.publish_dir keeps them).
    with tempfile.TemporaryDirectory(prefix="ray_app_scaling_") as tmp:
        local = Path(tmp)
        notes = [f"- {col}: " + (fit["error"] if "error" in fit else
                                 f"{col} = {fit['c']:.4g} * n^{fit['alpha']:.4g} (R^2 {fit['r2']:.3f}, {fit['points']} points)")
                 for col, fit in fits.items()]
        (local / "data_scaling.csv").write_text(table.to_csv(index=False, float_format="%.4f"))
        (local / "data_scaling.md").write_text(
            f"Greedy accuracy and answer-format share (%) on {cfg.eval_dataset} by training rows [95% Wilson CI]; "
            "nested seeded subsets, one SFT run each\n\n" + to_markdown(table) + "\nPower-law fits over the trained sizes:\n"
            + "\n".join(notes) + "\n")
        (local / "data_scaling_fit.json").write_text(json.dumps(fits, indent=2, sort_keys=True) + "\n")
        for column, name, label in (("accuracy", "data_scaling.png", "accuracy (%)"),
                                    ("format", "data_scaling_format.png", "answers in the trained format (%)")):
            plot_power_law(trained["train_rows"], trained[column], fits[column], local / name, "training examples",
                           label, f"{label} vs training examples ({cfg.model})")
        timings["total"] = round(time.perf_counter() - started, 1)
        (local / "data_scaling_manifest.json").write_text(json.dumps(redacted({
            "config": to_dict(cfg), "preset": args.preset, "sizes": sizes, "fits": fits, "models": models,
            "sft": to_dict(base), "timings_s": timings, "versions": versions(),
        }), indent=2, default=str) + "\n")
        write_html_report(local, f"Accuracy vs training examples ({cfg.model})", models)
        storage.publish_dir(local, out, root)
    print(to_markdown(table))
    for col, fit in fits.items():
        print(f"[data_scaling] {col}: " + (fit["error"] if "error" in fit else f"{fit['c']:.4g} * n^{fit['alpha']:.4g}"))
    print(f"[data_scaling] done: {storage.join(out, 'report.html')} (and data_scaling.csv/.md/.png, data_scaling_fit.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
