"""The SFT job as a library call: plan, train on Ray Train, plot, check, save the run's context.

`jobs/sft.py` (CLI) and `jobs/pipeline.py` (the whole study) both call `train_and_report`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from ray_app import storage
from ray_app.config import BatchPlan, SFTConfig
from ray_app.models.registry import get_preset
from ray_app.trainer.memory import format_memory_table
from ray_app.trainer.sft import cluster_has_gpus, run_sft, save_run_manifest
from ray_app.utils.run_info import plot_loss_curve


def count_rows(path: str) -> int | None:
    if not storage.exists(path):
        return None
    with storage.local_copy(path).open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def print_plan(cfg: SFTConfig, plan: BatchPlan, num_examples: int, num_params: int | None, on_gpu: bool) -> str:
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


def train_and_report(cfg: SFTConfig) -> dict:
    """Train `cfg.model` on Ray Train (Ray must be initialised, the data built), export it, check it
    on the test split in a Ray task, and save the run manifest and loss curve next to the checkpoints."""
    plan = BatchPlan.from_config(cfg)
    preset = get_preset(cfg.model)
    num_params = preset.arch.parameter_count() if preset else None
    num_examples = count_rows(cfg.resolved_train_file)
    started = time.perf_counter()
    on_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster_has_gpus()
    plan_text = print_plan(cfg, plan, num_examples, num_params, on_gpu)
    summary = run_sft(cfg)
    summary["plan"] = plan_text

    log_history = summary.get("log_history", [])
    losses = [h["loss"] for h in log_history if "loss" in h]
    if losses:
        summary["first_logged_loss"], summary["final_logged_loss"] = losses[0], losses[-1]
        print(f"[sft] loss {losses[0]:.3f} -> {losses[-1]:.3f} over {summary.get('global_step')} optimizer steps")
    with tempfile.TemporaryDirectory() as tmp:
        curve = plot_loss_curve(log_history, Path(tmp) / "loss_curve.png", f"SFT {cfg.model} (ZeRO-{cfg.zero_stage})")
        summary["loss_curve"] = None
        if curve:
            summary["loss_curve"] = storage.join(cfg.run_dir, "loss_curve.png")
            storage.upload_file(curve, summary["loss_curve"])

    if cfg.eval_after:
        summary["after_training_check"] = after_training_check(cfg, summary["export_dir"], on_gpu)
    summary["total_seconds"] = time.perf_counter() - started
    manifest = save_run_manifest(cfg, summary)
    print(f"[sft] done in {summary['total_seconds']:.0f}s: final model -> {summary['export_dir']}; "
          f"manifest -> {manifest}; loss curve -> {summary['loss_curve']}", flush=True)
    summary["manifest"] = manifest
    return summary


def _check_task(data_dir: str, model_dir: str, limit: int, max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Runs as a Ray task (a GPU one on GPU clusters), never in the driver."""
    from ray_app.data.gsm import load_split
    from ray_app.generation import format_report, generate, load_policy
    from ray_app.utils.devices import assigned_device

    from ray_app.utils.progress import quiet_progress_bars

    quiet_progress_bars()
    rows = load_split(data_dir, "gsm_symbolic_test")[:limit]
    t = time.perf_counter()
    tokenizer, model = load_policy(str(storage.local_copy(model_dir)), device=assigned_device())
    gens = generate(model, tokenizer, [r["question"] for r in rows], max_new_tokens=max_new_tokens, batch_size=32)
    report = format_report(gens, [r["gold"] for r in rows])
    report["seconds"] = time.perf_counter() - t
    report["device"] = str(model.device)
    answers = [{"id": r["id"], "gold": r["gold"], "completion": g.completion, "finish_reason": g.finish_reason}
               for r, g in zip(rows, gens)]
    return report, answers


def after_training_check(cfg: SFTConfig, model_dir: str, on_gpu: bool) -> dict:
    """Greedy answers on gsm_symbolic_test: how many end with 'Final answer: N.' and how many are right."""
    import ray

    test_file = storage.join(cfg.data_dir, "gsm_symbolic_test.jsonl")
    if not storage.exists(test_file):
        print(f"[check] skipped: {test_file} not found")
        return {"skipped": f"{test_file} not found"}
    task = ray.remote(num_cpus=1, num_gpus=1 if on_gpu else 0)(_check_task)
    report, answers = ray.get(task.remote(cfg.data_dir, model_dir, cfg.eval_limit, cfg.max_new_tokens))
    out = storage.join(cfg.run_dir, "after_training_check.jsonl")
    storage.write_text(out, "".join(json.dumps(a) + "\n" for a in answers))
    print(
        f"[check] greedy on {report['n']} gsm_symbolic_test questions ({report['device']}): {report['final_answer_format']} end with "
        f"'Final answer: N.' ({100 * report['final_answer_format_rate']:.0f}%), {report['correct']} correct "
        f"({report['seconds']:.0f}s) -> {out}"
    )
    return report
