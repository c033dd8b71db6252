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
from ray_app.models.loading import count_loaded_parameters, planning_config
from ray_app.trainer.memory import GiB, activation_bytes, format_memory_table, model_state_bytes
from ray_app.trainer.sft import run_sft, save_run_manifest, sha256_of, training_settings
from ray_app.utils.fingerprint import fingerprint
from ray_app.utils.resources import gpus_reachable
from ray_app.utils.run_info import plot_loss_curve


def count_rows(path: str) -> int | None:
    if not storage.exists(path):
        return None
    with storage.local_copy(path).open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def model_config_for_plan(model: str):
    """(transformers config, where it came from) for a preset, a local Hugging Face folder or a Hub
    id in the local cache; (None, why) when there is none to count from."""
    preset = get_preset(model)
    if preset is not None:
        return planning_config(preset)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, local_files_only=True), f"config.json of {model}"
    except (OSError, ValueError):
        return None, f"no config.json found for {model}"


def print_plan(cfg: SFTConfig, plan: BatchPlan, num_examples: int, on_gpu: bool) -> str:
    """The plan a run prints first (and `--dry-run` prints alone): batches, steps, and memory per GPU
    from the parameters SFT will actually load (counted on the meta device) and the activations of
    one micro-batch, logits included."""
    examples_used = max(1, math.ceil(num_examples * cfg.train_pct / 100))
    steps = plan.steps_per_epoch(examples_used)
    total = plan.total_steps(examples_used, cfg.num_train_epochs, cfg.max_steps)
    mixed, weights = cfg.precision(on_gpu)
    weight_bytes = 2 if weights == "bfloat16" else 4
    sixteen_bit = mixed or weight_bytes == 2  # what the activations and logits are computed in
    precision = ("bf16 mixed (fp32 master weights)" if mixed else "pure bf16 (no fp32 master weights)"
                 if weight_bytes == 2 else "fp32")
    lines = [
        f"[plan] model={cfg.model}  ZeRO-{cfg.zero_stage}  offload_optimizer={cfg.offload_optimizer}  "
        f"offload_param={cfg.offload_param}  precision={precision}  weights loaded as {weights}",
        f"[plan] {plan.describe()}",
        f"[plan] training examples={examples_used}  steps/epoch={steps}  epochs={cfg.num_train_epochs}  "
        f"total optimizer steps={total}",
    ]
    config, source = model_config_for_plan(cfg.model)
    if config is None:
        lines.append(f"[plan] memory: not planned ({source})")
    else:
        counted = count_loaded_parameters(config)
        n, frozen = counted["total"], counted["frozen"]
        lines.append(f"[plan] parameters={n / 1e6:,.1f}M loaded as {counted['class']} (counted from {source})")
        if frozen:
            lines.append(f"[plan]   trainable {counted['trainable'] / 1e6:,.1f}M (the language model); frozen "
                         f"{frozen / 1e6:,.1f}M ({', '.join(counted['frozen_modules'])}): loaded, no gradients, no "
                         "optimizer state, exported unchanged")
        lines.append("[plan] model-state memory per GPU:")
        lines.append(format_memory_table(n, plan.world_size, mixed, cfg.offload_optimizer, cfg.offload_param, cfg.zero_stage, frozen,
                                         weight_bytes))
        states = model_state_bytes(n, cfg.zero_stage, plan.world_size, mixed, cfg.offload_optimizer, cfg.offload_param, frozen,
                                   weight_bytes)
        text_config = config.get_text_config()
        acts = activation_bytes(text_config, plan.per_device_batch_size, cfg.max_seq_length, sixteen_bit, cfg.gradient_checkpointing)
        vocab = text_config.vocab_size
        lines.append(
            f"[plan] activations per GPU (micro-batch {plan.per_device_batch_size} x {cfg.max_seq_length} tokens, activation "
            f"checkpointing {'on' if cfg.gradient_checkpointing else 'off'}): layers {acts.layers / GiB:.2f}GB + logits "
            f"{acts.logits / GiB:.2f}GB ({plan.per_device_batch_size * cfg.max_seq_length:,} tokens x {vocab:,} vocab: "
            f"{'bf16' if sixteen_bit else 'fp32'} logits, their fp32 copy for the loss and its gradient)")
        lines.append(f"[plan] peak estimate per GPU: model states {states.total / GiB:.2f}GB + activations "
                     f"{acts.total / GiB:.2f}GB = {(states.total + acts.total) / GiB:.2f}GB (1 GiB = {GiB} bytes)")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def finished_run(cfg: SFTConfig, plan: BatchPlan, num_examples: int) -> dict | None:
    """The saved manifest of this run when it already finished with these training settings and this
    many optimizer steps (its export complete); None when training has anything left to do."""
    manifest_path = storage.join(cfg.run_dir, "run_manifest.json")
    export = cfg.resolved_export_dir
    trained_path = storage.join(export, "train_summary.json")
    if cfg.fresh_run or not (storage.exists(manifest_path) and storage.exists(trained_path) and storage.is_complete(export)):
        return None
    examples_used = max(1, math.ceil(num_examples * cfg.train_pct / 100))
    target_steps = plan.total_steps(examples_used, cfg.num_train_epochs, cfg.max_steps)
    trained = storage.read_json(trained_path)
    settings = training_settings(cfg, plan, sha256_of(cfg.resolved_train_file))
    if trained.get("config_fingerprint") != fingerprint(settings) or trained.get("global_step") != target_steps:
        return None
    return storage.read_json(manifest_path)


def train_and_report(cfg: SFTConfig, root: str) -> dict:
    """Train `cfg.model` on Ray Train (Ray must be initialised, the data built), export it, check it
    on the test split in a Ray task, and save the run manifest and loss curve next to the checkpoints.

    A run that already finished with the same settings and steps is reused, not relaunched."""
    plan = BatchPlan.from_config(cfg)
    num_examples = count_rows(cfg.resolved_train_file)
    done = finished_run(cfg, plan, num_examples)
    if done is not None:
        print(f"[sft] reusing the finished run {cfg.run_dir}: step {done.get('global_step')}, settings fingerprint "
              f"{done.get('config_fingerprint')} (same settings and steps; --fresh-run retrains)", flush=True)
        return {**done, "reused": True}
    started = time.perf_counter()
    from ray_app.utils.ray_init import ensure_connected

    ensure_connected()
    on_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus_reachable()
    plan_text = print_plan(cfg, plan, num_examples, on_gpu)
    summary = run_sft(cfg, root)  # root: the storage root (--fresh-run deletes only inside it)
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
