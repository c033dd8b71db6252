"""SFT on Ray Train: each worker runs the Hugging Face Trainer with DeepSpeed ZeRO.

Driver (`run_sft`): resolve the model, print the batch plan, launch a `TorchTrainer` with explicit
`ScalingConfig` / `RunConfig` / `FailureConfig`, then plot the loss and save the run's context.
Workers (`train_func`): encode the data, build the HF `Trainer`, resume from Ray Train's latest
checkpoint if there is one, train, and export the final model (ZeRO-3 shards gathered).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from ray_app.config import BatchPlan, SFTConfig
from ray_app.utils.io import atomic_write_json
from ray_app.utils.run_info import versions

CHECKPOINT_SUBDIR = "checkpoint"


def _checkpointing_arg() -> str:
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing.
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def deepspeed_config(cfg: SFTConfig, on_gpu: bool) -> dict:
    """ZeRO config; batch sizes, lr and clipping are 'auto' so the HF Trainer fills them in from its args."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        # Bucket sizes scale with the model (HF fills 'auto' from hidden_size): DeepSpeed's fixed
        # defaults would allocate GBs of gradient buckets for a 3M-parameter model.
        zero.update(overlap_comm=on_gpu, contiguous_gradients=True, reduce_scatter=True, reduce_bucket_size="auto")
    if cfg.offload_optimizer and cfg.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if cfg.zero_stage == 3:
        # Gather the 16-bit shards into one state dict when the final model is saved.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto")
        if cfg.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    optimizer_params = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    if not on_gpu and not (cfg.offload_optimizer and cfg.zero_stage >= 1):
        optimizer_params["torch_adam"] = True  # FusedAdam is CUDA-only
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _wandb_env(cfg: SFTConfig) -> dict:
    if cfg.wandb_mode == "disabled":
        return {}
    mode = cfg.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return {"WANDB_MODE": mode, "WANDB_PROJECT": cfg.wandb_project, "WANDB_DIR": str(Path(cfg.run_dir).resolve()), "WANDB_SILENT": "true"}


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------


def _make_callbacks(cfg: SFTConfig):
    import ray.train
    import transformers
    from transformers import TrainerCallback

    class ReportCheckpointToRay(TrainerCallback):
        """After each HF save, hand the checkpoint to Ray Train (which copies it to storage_path).

        Ranks on one node share the local output dir, so its first rank reports the whole folder
        (every local rank's ZeRO shards); the others report metrics only. Ray merges the nodes'
        folders into one checkpoint.
        """

        def on_save(self, args, state, control, **kwargs):
            metrics = {}
            for log in state.log_history:
                metrics.update(log)
            metrics["global_step"] = state.global_step
            context = ray.train.get_context()
            source = transformers.trainer_utils.get_last_checkpoint(args.output_dir)
            if context.get_local_rank() == 0 and source is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    shutil.copytree(source, Path(tmp, CHECKPOINT_SUBDIR))
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics, checkpoint=None)

    class FaultDrill(TrainerCallback):
        """`--fail-at-step K`: the last rank kills itself with SIGKILL once at step K (a lost worker)."""

        def __init__(self, marker: Path):
            self.marker = marker

        def on_step_end(self, args, state, control, **kwargs):
            context = ray.train.get_context()
            last_rank = context.get_world_rank() == context.get_world_size() - 1
            if last_rank and state.global_step == cfg.fail_at_step and not self.marker.exists():
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                self.marker.write_text(f"killed rank {context.get_world_rank()} at step {state.global_step}\n")
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [ReportCheckpointToRay()]
    if cfg.fail_at_step:
        callbacks.append(FaultDrill(Path(cfg.run_dir) / "fault_drill.txt"))
    return callbacks


def train_func(config: dict) -> None:
    import ray.train
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ray_app.data.encoding import load_and_prepare_train_dataset

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    cfg = SFTConfig(**config["sft"])
    _CHECKPOINTING_ARG = _checkpointing_arg()
    model_path = config["model_path"]
    plan = BatchPlan.from_config(cfg)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    on_gpu = torch.cuda.is_available()
    bf16 = cfg.bf16 if cfg.bf16 is not None else on_gpu
    set_seed(cfg.seed)
    for key, value in config.get("env", {}).items():
        os.environ[key] = value

    # Ray Train already set up torch.distributed; DeepSpeed wraps that process group. It must know the
    # world size before ZeRO-3 partitions weights inside from_pretrained.
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Node-local scratch for HF checkpoints; Ray Train copies them to storage on every save.
    output_dir = Path(tempfile.gettempdir()) / "ray_app_sft" / cfg.run_name / f"attempt-{config['attempt_id']}"
    args = TrainingArguments(
        output_dir=str(output_dir),
        run_name=cfg.run_name,
        per_device_train_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # < 1: a fraction of the total steps (transformers 5)
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        save_only_model=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        deepspeed=deepspeed_config(cfg, on_gpu),
        **{_CHECKPOINTING_ARG: cfg.gradient_checkpointing},
        report_to=["wandb"] if "WANDB_MODE" in config.get("env", {}) else [],
        disable_tqdm=rank != 0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not on_gpu,
    )
    with args.main_process_first(desc="encode training data"):
        # Rank 0 encodes and fills the Arrow cache; the others then read it.
        train_dataset = load_and_prepare_train_dataset(cfg, tokenizer)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=8)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=_make_callbacks(cfg),
    )

    started = time.perf_counter()
    checkpoint = ray.train.get_checkpoint()
    resumed_from_step = None
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            resume_from = Path(ckpt_dir) / CHECKPOINT_SUBDIR
            resumed_from_step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
            if rank == 0:
                print(f"[sft] resuming at step {resumed_from_step} from Ray Train checkpoint {resume_from}", flush=True)
            result = trainer.train(resume_from_checkpoint=str(resume_from))
    else:
        result = trainer.train()
    train_seconds = time.perf_counter() - started

    # ZeRO-3: save_model gathers the 16-bit shards (a collective: every rank calls it).
    export_tmp = output_dir / "final_model"
    trainer.save_model(str(export_tmp))
    if rank == 0:
        tokenizer.save_pretrained(str(export_tmp))
        trainer.state.save_to_json(str(export_tmp / "trainer_state.json"))
        summary = {
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "train_seconds_this_attempt": train_seconds,
            "resumed_from_checkpoint": checkpoint is not None,
            "resumed_from_step": resumed_from_step,
            "log_history": trainer.state.log_history,
            "num_train_examples": len(train_dataset),
        }
        (export_tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _copy_to_storage(export_tmp, config["export_dir"])
    ray.train.report({"global_step": trainer.state.global_step, "train_loss": result.training_loss}, checkpoint=None)
    shutil.rmtree(output_dir, ignore_errors=True)


def _copy_to_storage(local_dir: Path, dest: str) -> None:
    """Local folder -> local path or cloud URI (s3://, gs://, ...) through pyarrow's filesystems."""
    if "://" in dest:
        import pyarrow.fs

        pyarrow.fs.copy_files(str(local_dir), dest)
        return
    dest_path = Path(dest)
    tmp = dest_path.with_name(f".{dest_path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(local_dir, tmp)
    shutil.rmtree(dest_path, ignore_errors=True)
    os.replace(tmp, dest_path)


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def run_sft(cfg: SFTConfig, model_path: str, log=print) -> dict:
    """Launch the Ray Train job; returns the run summary (also saved as RUN_DIR/run_manifest.json)."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    plan = BatchPlan.from_config(cfg)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster_has_gpus()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # The drill's marker makes the kill happen once per launch, not again after the restart.
    (run_dir / "fault_drill.txt").unlink(missing_ok=True)
    attempt_id = time.strftime("%Y%m%d-%H%M%S")

    resources = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    scaling = ray.train.ScalingConfig(
        num_workers=plan.world_size,
        use_gpu=use_gpu,
        resources_per_worker=resources,
        # One node: keep workers together. Several: spread so each node hosts nproc_per_node workers.
        placement_strategy="PACK" if cfg.nnodes == 1 else "SPREAD",
    )
    run_config = ray.train.RunConfig(
        name=cfg.run_name,
        storage_path=str(Path(cfg.storage_path).resolve()) if "://" not in cfg.storage_path else cfg.storage_path,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_checkpoints_to_keep),
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
    )
    export_dir = cfg.resolved_export_dir
    if "://" not in export_dir:
        export_dir = str(Path(export_dir).resolve())
    sft_dict = asdict(cfg)
    for key in ("data_dir", "storage_path"):
        if "://" not in sft_dict[key]:
            sft_dict[key] = str(Path(sft_dict[key]).resolve())
    sft_dict["train_file"] = str(Path(cfg.resolved_train_file).resolve())
    sft_dict["encode_cache_dir"] = str(Path(cfg.resolved_encode_cache_dir).resolve())
    worker_config = {
        "sft": sft_dict,
        "model_path": model_path,
        "export_dir": export_dir,
        "attempt_id": attempt_id,
        "env": _wandb_env(cfg),
    }
    trainer = TorchTrainer(
        train_func,
        train_loop_config=worker_config,
        scaling_config=scaling,
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )
    log(f"[sft] launching Ray Train: {plan.world_size} workers, use_gpu={use_gpu}, ZeRO-{cfg.zero_stage}, storage={run_config.storage_path}/{cfg.run_name}")
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    if result.error:
        raise RuntimeError(f"training failed: {result.error}") from result.error

    summary = json.loads((Path(export_dir) / "train_summary.json").read_text()) if "://" not in export_dir else {}
    return {
        "export_dir": export_dir,
        "model_path": model_path,
        "batch_plan": asdict(plan) | {"world_size": plan.world_size, "effective_batch_size": plan.effective_batch_size},
        "use_gpu": use_gpu,
        "fit_seconds": seconds,
        "ray_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "fault_drill": (run_dir / "fault_drill.txt").read_text().strip() if (run_dir / "fault_drill.txt").exists() else None,
        **{k: v for k, v in summary.items() if k != "log_history"},
        "log_history": summary.get("log_history", []),
        "versions": versions(),
    }


def save_run_manifest(cfg: SFTConfig, summary: dict, extra: dict | None = None) -> Path:
    path = Path(cfg.run_dir) / "run_manifest.json"
    atomic_write_json(path, {"config": asdict(cfg), **summary, **(extra or {})})
    return path
