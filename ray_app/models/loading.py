"""How SFT loads a policy, and what the memory plan counts: the same code for both.

`google/gemma-3-4b-it` ships as `Gemma3ForConditionalGeneration`: a 3.88B language model plus a
SigLIP vision tower and a projector (~0.42B). `AutoModelForCausalLM` loads the whole checkpoint (in
transformers 5 it maps `gemma3` to that class), which is also the class a user reloads the fine-tuned
model with. We keep it whole, so the export is a drop-in `gemma-3-4b-it`, and freeze everything that
is not the language model: the vision tower gets no gradient, no optimizer state, and is exported
unchanged. Text-only checkpoints (gemma-3-1b-it, the tiny small model) have nothing to freeze.
"""

from __future__ import annotations

# Submodules of multimodal checkpoints that text-only SFT never trains (Gemma 3, LLaVA-style names).
FROZEN_MODULES = ("vision_tower", "multi_modal_projector")


def freeze_non_language_modules(model) -> list[str]:
    """Turn off gradients of the vision tower and projector; returns the frozen modules' names."""
    frozen = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in FROZEN_MODULES and not any(name.startswith(f + ".") for f in frozen):
            module.requires_grad_(False)
            frozen.append(name)
    return frozen


def parameter_summary(model, frozen_modules: list[str]) -> dict:
    """Parameters by role. Under ZeRO-3 a parameter's `numel()` is 0 on a rank (it is partitioned);
    DeepSpeed keeps the full count in `ds_numel`."""
    trainable = frozen = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    return {"class": type(model).__name__, "trainable": trainable, "frozen": frozen, "total": trainable + frozen,
            "frozen_modules": frozen_modules}


def load_policy_for_training(path: str, dtype):
    """The checkpoint with the class `from_pretrained` picks for it, non-language modules frozen."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    frozen = freeze_non_language_modules(model)
    return model, parameter_summary(model, frozen)


def planning_config(preset):
    """The config the plan counts from: the checkpoint's own config.json when the Hub (or its cache)
    has it, else the registry's copy of the same architecture (`Architecture.hf_config`)."""
    if preset.hub_id and not preset.embedded:
        from transformers import AutoConfig

        # The local Hub cache first; the network only when it answers at once (a dry run must not sit
        # through the Hub client's retries on an offline machine).
        for local_only in (True, False):
            if not local_only and not _hub_reachable():
                break
            try:
                return AutoConfig.from_pretrained(preset.hub_id, local_files_only=local_only), f"config.json of {preset.hub_id}"
            except (OSError, ValueError):
                continue
    return preset.arch.hf_config(), "ray_app/models/registry.py; the Hub's config.json was not reachable"


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def count_loaded_parameters(config) -> dict:
    """Instantiate the class SFT would load on the meta device (no memory, no weights), freeze as SFT
    does, and count: what training actually holds, not what the text model alone would be."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return parameter_summary(model, freeze_non_language_modules(model))
