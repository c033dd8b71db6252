"""SFT on Ray Train: each worker runs the Hugging Face Trainer with DeepSpeed ZeRO.

Driver (`run_sft`): resolve the model, print the batch plan, launch a `TorchTrainer` with explicit
`ScalingConfig` / `RunConfig` / `FailureConfig`, then plot the loss and save the run's context.
Workers (`train_func`): encode the data, build the HF `Trainer`, resume from Ray Train's latest
checkpoint if there is one, train, and export the final model (ZeRO-3 shards gathered).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from ray_app import storage
from ray_app.config import BatchPlan, SFTConfig
from ray_app.utils.fingerprint import check_or_record
from ray_app.utils.run_info import redacted, versions

CHECKPOINT_SUBDIR = "checkpoint"
# HF checkpoints kept in a node's scratch folder (older ones are in storage through Ray Train).
SAVE_TOTAL_LIMIT = 1
# Ray's default label naming the node (public since label selectors; `ray._raylet.RAY_NODE_ID_KEY`).
NODE_ID_LABEL = "ray.io/node-id"


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


def init_deepspeed_comm(on_gpu: bool) -> None:
    """DeepSpeed's communication backend over the process group Ray Train set up.

    On CPU, DeepSpeed JIT-compiles its shared-memory all-reduce op when the backend starts: 27-35 s of
    C++ build on a fresh machine or node (cached per HOME after that). Only `inference_all_reduce`
    (tensor-parallel inference) uses that op; training's all-reduce and reduce-scatter go through the
    gloo group either way. So we mark the op unavailable in DeepSpeed's op table (the cached dict that
    `build_shm_op` consults) and it falls back as on a platform without it.
    """
    import deepspeed

    if not on_gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")


def _wandb_env(cfg: SFTConfig) -> dict:
    if cfg.wandb_mode == "disabled":
        return {}
    mode = cfg.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    # W&B writes its offline run to a local folder: the run folder when it is one, else the worker's temp dir.
    wandb_dir = cfg.run_dir if not storage.is_uri(cfg.run_dir) else str(Path(tempfile.gettempdir()) / "ray_app_wandb" / cfg.resolved_run_name)
    return {"WANDB_MODE": mode, "WANDB_PROJECT": cfg.wandb_project, "WANDB_DIR": wandb_dir, "WANDB_SILENT": "true"}


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------


def _make_callbacks(cfg: SFTConfig):
    import ray.train
    import transformers
    from transformers import TrainerCallback

    from ray_app.utils.progress import interactive

    class ReportCheckpointToRay(TrainerCallback):
        """After each HF save, hand the checkpoint to Ray Train (which copies it to storage_path).

        Ranks on one node share the local output dir, so its first rank reports the whole folder
        (every local rank's ZeRO shards); the others report metrics only. Ray merges the nodes'
        folders into one checkpoint. Then the node's first rank removes older checkpoint folders from
        the scratch folder: HF's `save_total_limit` rotates only on world rank 0's node, and every
        other node would keep every checkpoint's shards until the end.
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
            if context.get_local_rank() == 0:
                rotate_local_checkpoints(args.output_dir, SAVE_TOTAL_LIMIT)

    class FaultDrill(TrainerCallback):
        """`--fail-at-step K`: the last rank kills itself with SIGKILL once at step K (a lost worker)."""

        def __init__(self, marker: str):
            self.marker = marker  # in storage: the restarted group (maybe on other nodes) sees it

        def on_step_end(self, args, state, control, **kwargs):
            context = ray.train.get_context()
            last_rank = context.get_world_rank() == context.get_world_size() - 1
            if last_rank and state.global_step == cfg.fail_at_step and not storage.exists(self.marker):
                if args.save_steps and state.global_step >= args.save_steps:
                    # The drill is "a worker lost after a checkpoint": Ray Train's controller registers a reported
                    # checkpoint when it next polls the workers, so a kill right after the report could beat it
                    # (seen on a fast machine: the group restarted from step 0). Wait until it is registered.
                    snapshot = storage.join(cfg.run_dir, "checkpoint_manager_snapshot.json")
                    deadline = time.time() + 60
                    while time.time() < deadline and not (storage.exists(snapshot)
                                                          and "checkpoint_" in storage.read_text(snapshot)):
                        time.sleep(0.5)
                storage.write_text(self.marker, f"killed rank {context.get_world_rank()} at step {state.global_step}\n")
                os.kill(os.getpid(), signal.SIGKILL)

    class ProgressLines(TrainerCallback):
        """Outside a terminal (`ray job logs`) the tqdm bar is off: rank 0 prints a line per logged step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if ray.train.get_context().get_world_rank() == 0 and logs and "loss" in logs:
                print(f"[sft] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                      f"lr {logs.get('learning_rate', 0):.2e}", flush=True)

    class TrainThroughputMetrics(TrainerCallback):
        """gsm_train_tokens_per_second and gsm_train_tokens (ray_app/utils/metrics.py), from world rank 0
        after each optimizer step: non-padding input tokens of that step, all ranks summed, over its time.

        The count is the HF Trainer's own (`state.num_input_tokens_seen`, each micro-batch's attention
        mask summed and gathered over ranks), on with `include_num_input_tokens_seen="non_padding"`.
        """

        def on_train_begin(self, args, state, control, **kwargs):
            self.seen, self.at = state.num_input_tokens_seen, time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            from ray_app.utils import metrics

            now, seen = time.perf_counter(), state.num_input_tokens_seen
            if ray.train.get_context().get_world_rank() == 0:
                metrics.train_tokens(seen - self.seen, now - self.at, cfg.resolved_run_name)
            self.seen, self.at = seen, now

    callbacks = [ReportCheckpointToRay(), TrainThroughputMetrics()]
    if not interactive():
        callbacks.append(ProgressLines())
    if cfg.fail_at_step:
        callbacks.append(FaultDrill(storage.join(cfg.run_dir, "fault_drill.txt")))
    return callbacks


def rotate_local_checkpoints(output_dir: str | Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` HF checkpoint folders (checkpoint-<step>) of a node's scratch
    folder; returns the names deleted."""
    folders = [(int(d.name.split("-", 1)[1]), d) for d in Path(output_dir).glob("checkpoint-*")
               if d.is_dir() and d.name.split("-", 1)[1].isdigit()]
    old = [d for _, d in sorted(folders)][:-keep] if keep > 0 else [d for _, d in folders]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)
    return [d.name for d in old]


def scratch_dir(run_name: str, run_dir: str, attempt_id: str) -> Path:
    """This node's scratch folder for one launch of a run (HF checkpoints, the export before upload).

    Named by the run folder too: runs of one name into other storage roots (other users, tests) on the
    same node never share or clean each other's folders; one run folder has one run at a time (run_lock)."""
    import hashlib

    where = hashlib.sha256(run_dir.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / "ray_app_sft" / f"{run_name}-{where}" / f"attempt-{attempt_id}"


def train_func(config: dict) -> None:
    """One Ray Train worker. The node's scratch folder goes when the worker ends, failed or not; a
    worker killed outright (SIGKILL, a lost node) leaves it, and the node's next worker of the run
    removes the earlier launches' folders (a run folder is locked to one run at a time)."""
    import ray.train

    cfg = SFTConfig(**config["sft"])
    output_dir = scratch_dir(cfg.resolved_run_name, cfg.run_dir, config["attempt_id"])
    if ray.train.get_context().get_local_rank() == 0:
        for stale in output_dir.parent.glob("attempt-*"):
            if stale != output_dir:
                shutil.rmtree(stale, ignore_errors=True)
    try:
        _train_on_worker(config, output_dir)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)  # this worker's node-local scratch (run name: a plain name)


def _train_on_worker(config: dict, output_dir: Path) -> None:
    import ray.train
    import torch
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ray.train.torch import get_device

    from ray_app.data.encoding import load_and_prepare_train_dataset
    from ray_app.models.loading import load_policy_for_training
    from ray_app.models.registry import materialize_model
    from ray_app.utils.progress import interactive, quiet_progress_bars

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    quiet_progress_bars()  # a worker's output is a log, not a terminal
    cfg = SFTConfig(**config["sft"])
    _CHECKPOINTING_ARG = _checkpointing_arg()
    plan = BatchPlan.from_config(cfg)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    check_placement(context, cfg)
    # A GPU Ray assigned that torch cannot see stops here, naming the node and the ids (utils/devices.py).
    from ray_app.utils.devices import assigned_device

    assigned_device()
    # The device Ray assigned to this worker (cuda:<local index> with use_gpu, else cpu).
    on_gpu = get_device().type == "cuda"
    bf16, weights_dtype = cfg.precision(on_gpu)
    set_seed(cfg.seed)
    for key, value in config.get("env", {}).items():
        os.environ[key] = value
    # Data and model reach this node through storage (or are rebuilt here, deterministically).
    train_file = str(storage.local_copy(cfg.resolved_train_file))
    # An embedded model's tokenizer is learned from the full training file of the data dir, also when
    # training on a subset of it (jobs/data_scaling.py): every subset fine-tunes the same base model.
    corpus = storage.join(cfg.data_dir, "gsm_symbolic_train.jsonl")
    model_path = materialize_model(cfg.model, corpus_file=corpus if storage.exists(corpus) else cfg.resolved_train_file)

    # Ray Train already set up torch.distributed; DeepSpeed wraps that process group. It must know the
    # world size before ZeRO-3 partitions weights inside from_pretrained.
    init_deepspeed_comm(on_gpu)
    # Where each rank runs, recorded in the run summary (the multi-node tests read it).
    import torch.distributed as dist

    me = {"rank": rank, "node_rank": context.get_node_rank(), "local_rank": context.get_local_rank(),
          "node_ip": ray.util.get_node_ip_address(), "device": str(get_device())}
    placement = [None] * context.get_world_size()
    dist.all_gather_object(placement, me)
    config["placement"] = placement
    if rank == 0:
        print(f"[sft] placement: " + ", ".join(f"rank {p['rank']} on {p['node_ip']} ({p['device']})" for p in placement), flush=True)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Node-local scratch (`output_dir`) for HF checkpoints; Ray Train copies them to storage on every save.
    args = TrainingArguments(
        output_dir=str(output_dir),
        run_name=cfg.resolved_run_name,
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
        save_total_limit=SAVE_TOTAL_LIMIT,
        save_only_model=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        deepspeed=deepspeed_config(cfg, on_gpu),
        **{_CHECKPOINTING_ARG: cfg.gradient_checkpointing},
        report_to=["wandb"] if "WANDB_MODE" in config.get("env", {}) else [],
        disable_tqdm=rank != 0 or not interactive(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",  # tokens/s on the dashboard (TrainThroughputMetrics)
        use_cpu=not on_gpu,
    )
    with args.main_process_first(desc="encode training data"):
        # Rank 0 encodes and fills the Arrow cache; the others then read it.
        train_dataset = load_and_prepare_train_dataset(
            dataclasses.replace(cfg, train_file=train_file, encode_cache_dir=cfg.resolved_encode_cache_dir), tokenizer)

    # The checkpoint's own class (Gemma3ForConditionalGeneration for gemma-3-4b-it), vision tower frozen:
    # the export is the same kind of model the user started from (see ray_app/models/loading.py).
    model, parameters = load_policy_for_training(model_path, dtype=getattr(torch, weights_dtype))
    if rank == 0:
        frozen = f"; frozen {parameters['frozen']:,} in {', '.join(parameters['frozen_modules'])}" if parameters["frozen"] else ""
        print(f"[sft] loaded {parameters['class']}: {parameters['trainable']:,} trainable parameters{frozen}", flush=True)
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
            "model_path": model_path,
            "config_fingerprint": config["fingerprint"],
            "placement": config.get("placement"),
            "parameters": parameters,
        }
        (export_tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        # Readers (model resolution) take the folder only once its _COMPLETE.json is there, written last.
        storage.publish_dir(export_tmp, config["export_dir"], config["storage_root"])
    ray.train.report({"global_step": trainer.state.global_step, "train_loss": result.training_loss}, checkpoint=None)


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------


def placement_strategy(cfg: SFTConfig) -> str:
    """Workers per node as torchrun would place them: nproc_per_node on each of nnodes nodes.

    One node: all workers on it (STRICT_PACK). One worker per node: each on its own (STRICT_SPREAD).
    Otherwise no strategy alone does it (PACK may put 8 workers on one 8-GPU node, SPREAD spreads
    them over every node there is): `place_workers` reserves the nodes and pins the workers to them.
    """
    if cfg.nnodes == 1:
        return "STRICT_PACK"
    if cfg.nproc_per_node == 1:
        return "STRICT_SPREAD"
    return "PACK"


def place_workers(cfg: SFTConfig, resources: dict, log=print, capacity=None) -> tuple[str, list[dict] | None]:
    """Driver side, before Ray Train starts: reserve what the workers need, as laid out, or stop.

    Returns Ray Train's placement strategy and, for nnodes > 1 with nproc_per_node > 1, one label
    selector per worker. The whole need is one placement group (utils/resources.py: it waits, with a
    message every ~10 s, for free resources, or stops after --resource-wait-s / at once when no node
    could ever hold it): on one node, nproc_per_node worker bundles STRICT_PACK; across nodes, one
    bundle per node holding that node's nproc_per_node workers, STRICT_SPREAD (so a node with 8 GPUs
    counts once for --nproc-per-node 4, and 3 nodes are never asked of 2).

    Why pins: Ray Train 2.60 creates its own placement group with one bundle per worker and takes no
    existing one, and no strategy over per-worker bundles gives "4 on each of 2 nodes" on 8-GPU nodes
    (PACK may put all 8 on one; SPREAD spreads them over every node). Its ScalingConfig does take a label selector per
    worker, so worker i is pinned to the node of bundle i // nproc_per_node (Ray's `ray.io/node-id`
    label), and the reservation is released right before `fit` so that Train's group takes its place.
    The layout is thus checked here, once, before any worker starts; it is never a worker failure
    retried --max-failures times. The price: a restart inside Ray Train cannot move a pinned worker to
    another node, so `_run_sft` lets Ray Train fail fast when the pinned nodes are gone (or taken in
    the moment between release and start) and places the workers again, resuming from the latest
    checkpoint. One worker per node needs no pins (STRICT_SPREAD), and Ray Train's own restarts go to
    any node (a replacement node included).
    """
    from ray_app.utils.resources import ResourcesUnavailable, cluster_capacity, reserve

    nproc, nnodes = cfg.nproc_per_node, cfg.nnodes
    if nnodes == 1:
        bundles, strategy = [resources] * nproc, "STRICT_PACK"
    else:
        bundles, strategy = [{k: v * nproc for k, v in resources.items()}] * nnodes, "STRICT_SPREAD"
    what = f"SFT workers ({nproc} per node x {nnodes} node{'s' if nnodes != 1 else ''})"
    with reserve(bundles, cfg.resource_wait_s, what, hint="--nproc-per-node, --nnodes, --cpus-per-worker, --no-use-gpu",
                 strategy=strategy, log=log, capacity=capacity or cluster_capacity) as held:
        if nnodes == 1 or nproc == 1:
            return placement_strategy(cfg), None
        nodes = held.node_ids()
    if len(set(nodes)) != nnodes:  # STRICT_SPREAD guarantees it; a wrong layout must never reach the workers
        raise ResourcesUnavailable(f"{what}: Ray placed the per-node bundles on {len(set(nodes))} nodes, not {nnodes}")
    log(f"[sft] reserved nodes: {nproc} workers on each of " + ", ".join(n[:12] for n in nodes))
    return "PACK", [{NODE_ID_LABEL: nodes[i // nproc]} for i in range(nproc * nnodes)]


def check_placement(context, cfg: SFTConfig) -> None:
    """Worker side: refuse a layout other than nproc_per_node workers on each of nnodes nodes.

    `place_workers` settles the layout on the driver before any worker starts, so this is a guard
    against a bug there, not the check a user meets."""
    local, node_rank = context.get_local_world_size(), context.get_node_rank()
    if local != cfg.nproc_per_node or node_rank >= cfg.nnodes:
        raise RuntimeError(
            f"placement: worker {context.get_world_rank()} shares its node with {local - 1} others (node rank "
            f"{node_rank}); --nproc-per-node {cfg.nproc_per_node} x --nnodes {cfg.nnodes} needs exactly "
            f"{cfg.nproc_per_node} per node. Give each node {cfg.nproc_per_node} GPUs (or CPUs) for training, "
            "or change the two flags to match the cluster"
        )


def training_settings(cfg: SFTConfig, plan: BatchPlan, train_sha256: str) -> dict:
    """What decides the trained weights: a checkpoint made with other values must not be resumed.

    Left out: how long to train (--max-steps / --num-train-epochs extend a run), and what only changes
    speed, memory or bookkeeping (offload, checkpointing, logging, retries, the after-training check).
    """
    return {
        "model": cfg.model, "train_file_sha256": train_sha256, "train_pct": cfg.train_pct, "shuffle": cfg.shuffle,
        "max_seq_length": cfg.max_seq_length, "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler_type, "warmup_ratio": cfg.warmup_ratio, "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm, "per_device_batch_size": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps, "world_size": plan.world_size,
        "zero_stage": cfg.zero_stage, "bf16": cfg.bf16, "seed": cfg.seed,
        # The weights' dtype apart from --bf16, when given (runs that left it to --bf16 keep their fingerprint).
        **({"torch_dtype": cfg.torch_dtype} if cfg.torch_dtype else {}),
        # How rows are read and what the model learns from them; recorded only when not GSM8K's (so
        # earlier runs keep their fingerprint).
        **({"question_field": cfg.question_field, "answer_field": cfg.answer_field, "answer_format": cfg.answer_format}
           if (cfg.question_field, cfg.answer_field, cfg.answer_format) != ("question", "answer", "gsm8k") else {}),
    }


def sha256_of(path: str) -> str:
    from ray_app.utils.io import sha256_file

    return sha256_file(storage.local_copy(path))


def run_sft(cfg: SFTConfig, root: str, log=print) -> dict:
    """Launch the Ray Train job; returns the run summary (also saved as RUN_DIR/run_manifest.json).

    Every location in `cfg` is absolute or a URI (config.resolve_paths); the driver only plans,
    checks and reads summaries: data, model and device work happen in the workers. `root` is the
    storage root: --fresh-run deletes the run folder only inside it. The run folder is locked for the
    run (utils/run_lock.py): a second run into it stops with an error naming this one.
    """
    from ray_app.config import ConfigError
    from ray_app.utils.run_lock import run_lock

    if not storage.is_plain_name(cfg.resolved_run_name):
        raise ConfigError(f"run name {cfg.resolved_run_name!r} is not a plain name ({storage.PLAIN_NAME_RULE}); "
                          "give --run-name one folder name")
    with run_lock(cfg.run_dir, f"SFT run '{cfg.resolved_run_name}'", log=log):
        return _run_sft(cfg, root, log)


def _run_sft(cfg: SFTConfig, root: str, log) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    plan = BatchPlan.from_config(cfg)
    from ray_app.utils.resources import gpus_reachable

    # Not told: GPUs when a node has them or a node type the autoscaler can add does (GPU workers from 0).
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus_reachable()
    run_dir = cfg.run_dir
    if cfg.fresh_run and storage.exists(run_dir):
        log(f"[sft] --fresh-run: deleting the earlier run in {run_dir}")
        storage.delete(run_dir, root)
    settings = training_settings(cfg, plan, sha256_of(cfg.resolved_train_file))
    fingerprint = check_or_record(storage.join(run_dir, "run_config.json"), settings, f"SFT run '{cfg.resolved_run_name}'", "--fresh-run")
    # The drill's marker makes the kill happen once per launch, not again after the restart. A file in
    # the run's own folder: the delete is bounded by that folder (which may be outside the root).
    storage.delete(storage.join(run_dir, "fault_drill.txt"), run_dir)
    attempt_id = time.strftime("%Y%m%d-%H%M%S")

    resources = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    export_dir = cfg.resolved_export_dir
    worker_config = {
        "sft": asdict(cfg),
        "export_dir": export_dir,
        "storage_root": root,
        "attempt_id": attempt_id,
        "fingerprint": fingerprint,
        "env": _wandb_env(cfg),
    }
    started = None
    relaunches = 0
    while True:
        strategy, pins = place_workers(cfg, resources, log=log)
        scaling = ray.train.ScalingConfig(
            num_workers=plan.world_size,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=strategy,
            label_selector=pins,
        )
        # Pinned workers: a worker group that cannot start (its nodes gone) fails at once, and is placed
        # again below, instead of Ray Train waiting for those nodes for ever.
        failure = ray.train.FailureConfig(max_failures=cfg.max_failures, **({"controller_failure_limit": 0} if pins else {}))
        run_config = ray.train.RunConfig(
            name=cfg.resolved_run_name,
            storage_path=cfg.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_checkpoints_to_keep),
            failure_config=failure,
        )
        trainer = TorchTrainer(
            train_func,
            train_loop_config=worker_config,
            scaling_config=scaling,
            run_config=run_config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        )
        log(f"[sft] launching Ray Train: {plan.world_size} workers ({cfg.nproc_per_node} per node x {cfg.nnodes} nodes, "
            f"{strategy}{', pinned to the reserved nodes' if pins else ''}), use_gpu={use_gpu}, ZeRO-{cfg.zero_stage}, "
            f"checkpoints -> {run_dir}")
        started = started or time.perf_counter()
        try:
            result = trainer.fit()
            break
        except ray.train.ControllerError as e:
            # Only a worker group that could not start (Ray Train's WorkerGroupStartup* errors) is placed again.
            cannot_start = type(e.controller_failure).__name__.startswith("WorkerGroupStartup")
            if not pins or not cannot_start or (0 <= cfg.max_failures <= relaunches):
                raise
            relaunches += 1
            log(f"[sft] the workers could not start on their reserved nodes ({e.controller_failure}); placing them "
                f"again and resuming from the latest checkpoint (relaunch {relaunches}, --max-failures {cfg.max_failures})")
    seconds = time.perf_counter() - started
    if result.error:
        raise RuntimeError(f"training failed: {result.error}") from result.error

    summary = storage.read_json(storage.join(export_dir, "train_summary.json"))
    return {
        "export_dir": export_dir,
        "batch_plan": asdict(plan) | {"world_size": plan.world_size, "effective_batch_size": plan.effective_batch_size},
        "use_gpu": use_gpu,
        "fit_seconds": seconds,
        "ray_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "fault_drill": storage.read_text(storage.join(run_dir, "fault_drill.txt")).strip()
        if storage.exists(storage.join(run_dir, "fault_drill.txt")) else None,
        "training_settings": settings,
        **{k: v for k, v in summary.items() if k != "log_history"},
        "log_history": summary.get("log_history", []),
        "versions": versions(),
    }


def save_run_manifest(cfg: SFTConfig, summary: dict, extra: dict | None = None) -> str:
    path = storage.join(cfg.run_dir, "run_manifest.json")
    storage.write_json(path, redacted({"config": asdict(cfg), **summary, **(extra or {})}))
    return path
