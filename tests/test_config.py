import pytest

from conftest import run_job
from ray_app.config import BatchPlan, ConfigError, SFTConfig, parse_job_config, resolve_section
from ray_app.models.registry import MODEL_PRESETS
from ray_app.trainer.memory import GiB, model_state_bytes


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
    n = MODEL_PRESETS["gemma-3-4b-it"].arch.parameter_count()
    z3 = model_state_bytes(n, 3, 8, mixed_precision=True)
    chosen = [line for line in out.splitlines() if line.rstrip().endswith("<- chosen")]
    assert len(chosen) == 1 and chosen[0].split()[0] == "3"
    assert f"{z3.total / GiB:.2f}GB" in chosen[0]
    assert "precision=bf16" in out
