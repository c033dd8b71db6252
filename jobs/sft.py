#!/usr/bin/env python
"""Supervised fine-tuning on GSM-Symbolic with Ray Train + Hugging Face Trainer + DeepSpeed ZeRO.

    python jobs/sft.py                                   # tiny Gemma 3 on 2 CPU workers, ZeRO-2
    python jobs/sft.py --zero-stage 3 --run-name z3      # ZeRO-3 (final model gathered on export)
    python jobs/sft.py --preset gemma3-1b --dry-run      # the plan for the real model, no GPUs needed
    ray job submit --working-dir . -- python jobs/sft.py --preset gemma3-4b
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.config import BatchPlan, ConfigError, SFTConfig, parse_job_config  # noqa: E402
from ray_app.models.registry import get_preset  # noqa: E402
from ray_app.trainer.memory import GiB, format_memory_table  # noqa: E402


def count_rows(path: str) -> int | None:
    p = Path(path)
    if not p.is_file():
        return None
    with p.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def print_plan(cfg: SFTConfig, plan: BatchPlan, num_examples: int, num_params: int | None, on_gpu: bool) -> str:
    import math

    examples_used = max(1, math.ceil(num_examples * cfg.train_pct / 100))
    steps = plan.steps_per_epoch(examples_used)
    total = plan.total_steps(examples_used, cfg.num_train_epochs, cfg.max_steps)
    mixed = cfg.bf16 if cfg.bf16 is not None else on_gpu
    lines = [
        f"[plan] model={cfg.model}  ZeRO-{cfg.zero_stage}  offload_optimizer={cfg.offload_optimizer}  "
        f"offload_param={cfg.offload_param}  precision={'bf16' if mixed else 'fp32'}",
        f"[plan] {plan.describe()}",
        f"[plan] training examples={examples_used}  steps/epoch={steps}  epochs={cfg.num_train_epochs}  "
        f"total optimizer steps={total}",
    ]
    if num_params:
        lines.append(f"[plan] parameters={num_params / 1e6:,.1f}M; model-state memory per GPU (no activations):")
        lines.append(format_memory_table(num_params, plan.world_size, mixed, cfg.offload_optimizer, cfg.offload_param, cfg.zero_stage))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


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

    from ray_app.models.registry import resolve_model_path
    from ray_app.trainer.sft import cluster_has_gpus, run_sft, save_run_manifest
    from ray_app.utils.ray_init import init_ray
    from ray_app.utils.run_info import plot_loss_curve

    init_ray()
    started = time.perf_counter()
    model_path = resolve_model_path(cfg.model, corpus_file=cfg.resolved_train_file)
    on_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster_has_gpus()
    plan_text = print_plan(cfg, plan, num_examples, num_params, on_gpu)
    summary = run_sft(cfg, model_path)
    summary["plan"] = plan_text

    log_history = summary.get("log_history", [])
    losses = [h["loss"] for h in log_history if "loss" in h]
    if losses:
        summary["first_logged_loss"], summary["final_logged_loss"] = losses[0], losses[-1]
        print(f"[sft] loss {losses[0]:.3f} -> {losses[-1]:.3f} over {summary.get('global_step')} optimizer steps")
    curve = plot_loss_curve(log_history, Path(cfg.run_dir) / "loss_curve.png", f"SFT {cfg.model} (ZeRO-{cfg.zero_stage})")
    summary["loss_curve"] = str(curve) if curve else None

    if cfg.eval_after and "://" not in summary["export_dir"]:
        summary["after_training_check"] = after_training_check(cfg, summary["export_dir"])
    summary["total_seconds"] = time.perf_counter() - started
    manifest = save_run_manifest(cfg, summary)
    print(f"[sft] final model: {summary['export_dir']}")
    print(f"[sft] manifest: {manifest}; loss curve: {summary['loss_curve']}")
    return 0


def after_training_check(cfg: SFTConfig, model_dir: str) -> dict:
    """Greedy answers on gsm_symbolic_test: how many end with 'Final answer: N.' and how many are right."""
    from ray_app.data.gsm import load_split
    from ray_app.generation import format_report, generate, load_policy

    test_file = Path(cfg.data_dir) / "gsm_symbolic_test.jsonl"
    if not test_file.is_file():
        print(f"[check] skipped: {test_file} not found")
        return {"skipped": f"{test_file} not found"}
    rows = load_split(cfg.data_dir, "gsm_symbolic_test")[: cfg.eval_limit]
    t = time.perf_counter()
    tokenizer, model = load_policy(model_dir)
    gens = generate(model, tokenizer, [r["question"] for r in rows], max_new_tokens=cfg.max_new_tokens, batch_size=32)
    report = format_report(gens, [r["gold"] for r in rows])
    report["seconds"] = time.perf_counter() - t
    out = Path(cfg.run_dir) / "after_training_check.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for r, g in zip(rows, gens):
            f.write(json.dumps({"id": r["id"], "gold": r["gold"], "completion": g.completion, "finish_reason": g.finish_reason}) + "\n")
    print(
        f"[check] greedy on {report['n']} gsm_symbolic_test questions: {report['final_answer_format']} end with "
        f"'Final answer: N.' ({100 * report['final_answer_format_rate']:.0f}%), {report['correct']} correct "
        f"({report['seconds']:.0f}s) -> {out}"
    )
    return report


if __name__ == "__main__":
    sys.exit(main())
