import pytest

from conftest import ROOT, run_job
from ray_app.config import BatchPlan, ConfigError, SFTConfig, parse_job_config, resolve_section
from ray_app.models.registry import MODEL_PRESETS
from ray_app.trainer.memory import GiB, activation_bytes, model_state_bytes


def test_effective_batch_size_derives_accumulation():
    plan = BatchPlan.from_config(SFTConfig(per_device_batch_size=4, nproc_per_node=4, nnodes=2, effective_batch_size=64))
    assert (plan.world_size, plan.gradient_accumulation_steps, plan.effective_batch_size) == (8, 2, 64)
    plain = BatchPlan.from_config(SFTConfig(per_device_batch_size=8, nproc_per_node=2, gradient_accumulation_steps=3))
    assert plain.effective_batch_size == 48


@pytest.mark.parametrize("effective", [20, 8, 0])
def test_effective_batch_size_that_does_not_divide_is_refused(effective):
    with pytest.raises(ConfigError, match=f"--effective-batch-size {effective} is not a multiple of .* = 16"):
        BatchPlan.from_config(SFTConfig(per_device_batch_size=8, nproc_per_node=2, nnodes=1, effective_batch_size=effective))


def test_effective_batch_size_error_from_the_cli():
    proc = run_job("sft.py", "--effective-batch-size", "20", "--dry-run", check=False)
    assert proc.returncode == 2
    assert "--effective-batch-size 20 is not a multiple of per-device batch 8 x nproc_per_node 2 x nnodes 1 = 16" in proc.stderr


def test_pipeline_batch_that_does_not_divide_stops_before_any_work(tmp_path):
    proc = run_job("pipeline.py", "--storage-root", str(tmp_path), "--per-device-batch-size", "3", check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--effective-batch-size 8 is not a multiple of per-device batch 3 x nproc_per_node 2 x nnodes 1 = 6" in proc.stderr
    assert not (tmp_path / "pipeline").exists() and "[ray]" not in proc.stdout  # no data, no Ray


def test_steps_match_the_hf_trainer_count():
    plan = BatchPlan(per_device_batch_size=8, gradient_accumulation_steps=2, nproc_per_node=2, nnodes=1)
    # 4500 rows / 2 ranks = 2250 per rank -> 282 micro-batches -> ceil(282 / 2) = 141 optimizer steps.
    assert plan.micro_batches_per_epoch(4500) == 282
    assert plan.steps_per_epoch(4500) == 141
    assert plan.total_steps(4500, 2.0) == 282
    assert plan.total_steps(4500, 2.0, max_steps=10) == 10


def test_precedence_defaults_preset_file_cli(tmp_path):
    override = tmp_path / "mine.yaml"
    override.write_text("sft:\n  learning_rate: 0.5\n  zero_stage: 3\n")
    cfg = resolve_section("sft", "tiny", str(override), {"zero_stage": 1})
    assert cfg.learning_rate == 0.5  # file beats preset
    assert cfg.zero_stage == 1  # CLI beats file
    assert cfg.effective_batch_size == 16  # from the preset
    assert cfg.warmup_ratio == SFTConfig().warmup_ratio  # default
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  learnin_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) learnin_rate"):
        resolve_section("sft", "tiny", str(bad), {})
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve_section("sft", "nope", None, {})


def test_cli_flags_cover_every_field():
    cfg, _ = parse_job_config("sft", "x", ["--preset", "gemma3-4b", "--no-shuffle", "--max-steps", "7", "--model", "/m"])
    assert (cfg.shuffle, cfg.max_steps, cfg.model, cfg.zero_stage, cfg.nnodes) == (False, 7, "/m", 3, 2)


def test_help_lists_flags_and_presets():
    out = run_job("sft.py", "--help").stdout
    for flag in ("--effective-batch-size", "--zero-stage", "--nproc-per-node", "--nnodes", "--storage-path", "--dry-run", "gemma3-1b"):
        assert flag in out
    assert "--train-size" in run_job("prepare_data.py", "--help").stdout


def test_zero_memory_estimate():
    n = 1_000_000_000
    z0 = model_state_bytes(n, 0, 8)
    assert (z0.params, z0.grads, z0.optimizer) == (2 * n, 2 * n, 12 * n)
    z2 = model_state_bytes(n, 2, 8)
    assert (z2.params, z2.grads, z2.optimizer) == (2 * n, 2 * n / 8, 12 * n / 8)
    z3 = model_state_bytes(n, 3, 8)
    assert z3.total == 16 * n / 8
    off = model_state_bytes(n, 3, 8, offload_optimizer=True, offload_param=True)
    assert off.total == 2 * n / 8 and off.cpu_offloaded == 14 * n / 8


def test_dry_run_plans_the_real_presets():
    """`--dry-run` prints the plan for gemma-3-4b-it without loading weights or starting Ray."""
    out = run_job("sft.py", "--preset", "gemma3-4b", "--dry-run", "--data-dir", "/nonexistent").stdout
    assert "world_size=8 (nproc_per_node=4 x nnodes=2), per_device_batch=4, gradient_accumulation=2, effective_batch=64" in out
    # 4500 rows / 8 ranks -> 563 per rank -> 141 micro-batches -> 71 steps per epoch, 3 epochs.
    assert "training examples=4500  steps/epoch=71  epochs=3.0  total optimizer steps=213" in out
    # gemma-3-4b-it is loaded whole (Gemma3ForConditionalGeneration), its vision tower frozen: all
    # parameters hold weights, only the language model's get gradients and optimizer states.
    arch = MODEL_PRESETS["gemma-3-4b-it"].arch
    text, vision = arch.parameter_count(), arch.vision_parameter_count()
    assert f"parameters={(text + vision) / 1e6:,.1f}M loaded as Gemma3ForConditionalGeneration" in out
    assert f"trainable {text / 1e6:,.1f}M (the language model); frozen {vision / 1e6:,.1f}M (model.vision_tower, model.multi_modal_projector)" in out
    z3 = model_state_bytes(text + vision, 3, 8, mixed_precision=True, frozen_params=vision)
    assert z3.params == 2 * (text + vision) / 8 and z3.grads == 2 * text / 8 and z3.optimizer == 12 * text / 8
    chosen = [line for line in out.splitlines() if line.rstrip().endswith("<- chosen")]
    assert len(chosen) == 1 and chosen[0].split()[0] == "3"
    assert f"{z3.total / GiB:.2f}GB" in chosen[0]
    assert "precision=bf16" in out
    # Activations are per GPU and not sharded: micro-batch 4 x 1024 tokens; the logits alone are
    # 4096 x 262,208 values x (2 bytes bf16 + 4 fp32 copy + 4 its gradient) = 10.00 GiB.
    logits = 4 * 1024 * 262208 * 10 / GiB
    assert f"logits {logits:.2f}GB (4,096 tokens x 262,208 vocab" in out and f"{logits:.2f}" == "10.00"
    acts = activation_bytes(arch.hf_config().get_text_config(), 4, 1024, True, True)
    assert f"peak estimate per GPU: model states {z3.total / GiB:.2f}GB + activations {acts.total / GiB:.2f}GB" in out


def test_activation_estimate_scales_as_documented():
    """Checkpointing keeps one hidden state per layer (+ one layer's activations); logits grow with the vocabulary."""
    config = MODEL_PRESETS["gemma-3-1b-it"].arch.hf_config()
    full = activation_bytes(config, 2, 512, mixed_precision=True, checkpointing=False)
    ckpt = activation_bytes(config, 2, 512, mixed_precision=True, checkpointing=True)
    per_layer = full.layers / config.num_hidden_layers
    assert ckpt.layers == config.num_hidden_layers * 2 * 512 * config.hidden_size * 2 + per_layer
    assert ckpt.logits == full.logits == 2 * 512 * 262144 * 10
    assert activation_bytes(config, 4, 512, True, True).total == 2 * ckpt.total


def test_readme_dry_run_is_what_the_command_prints():
    """README shows `python jobs/sft.py --preset gemma3-4b --dry-run` and its output: run it as typed, compare."""
    import re
    import shlex

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("`--dry-run` prints the plan for any preset"):]
    command = " ".join(re.search(r"e\.g\. `(python jobs/sft\.py\s+--preset gemma3-4b --dry-run)`", section).group(1).split())
    shown = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "jobs/sft.py"]
    out = run_job("sft.py", *argv[2:]).stdout
    assert out.strip() == shown.strip()


def test_dtype_apart_from_mixed_precision_in_the_plan_and_the_readme():
    """README's dry run for pure bf16, as typed: its model states, against the mixed-precision default."""
    import re
    import subprocess

    readme = (ROOT / "README.md").read_text()
    command, pure, mixed = re.search(r"\(`(python jobs/sft.py\s+--preset gemma3-1b --dry-run --no-bf16 --torch-dtype bfloat16)`: "
                                     r"model states ([\d.]+) GB per GPU at ZeRO-2\s+against ([\d.]+) GB mixed\)", readme).groups()
    out = subprocess.run(["bash", "-c", " ".join(command.split())], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert "precision=pure bf16 (no fp32 master weights)  weights loaded as bfloat16" in out
    assert re.search(rf"\n\s+2\s+1.86GB\s+0.47GB\s+[\d.]+GB\s+{pure}GB\s+0.00GB  <- chosen", out), out
    default = subprocess.run(["bash", "-c", "python jobs/sft.py --preset gemma3-1b --dry-run"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120).stdout
    assert f"{mixed}GB       0.00GB  <- chosen" in default and "weights loaded as bfloat16" in default

    from ray_app.config import SFTConfig

    assert SFTConfig().precision(on_gpu=True) == (True, "bfloat16") and SFTConfig().precision(on_gpu=False) == (False, "float32")
    assert SFTConfig(bf16=False, torch_dtype="bfloat16").precision(on_gpu=True) == (False, "bfloat16")
    assert SFTConfig(bf16=True, torch_dtype="float32").precision(on_gpu=False) == (True, "float32")
