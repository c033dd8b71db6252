"""Per-GPU memory of model states under ZeRO, from the parameter count alone (no weights loaded).

Model states per parameter (ZeRO paper, Adam): mixed precision keeps 2 B of 16-bit weights, 2 B of
16-bit gradients and 12 B of fp32 master weights + Adam m + v. Plain fp32 keeps 4 + 4 + 8 B.
ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3 also parameters, over N ranks.
Offload moves optimizer states (and, with offload_param at stage 3, parameters) to CPU memory.
Frozen parameters (a multimodal checkpoint's vision tower) hold weights only: no gradient, no
optimizer state.

Activations are not sharded by ZeRO: every GPU holds those of its own micro-batch, and for a 262k
vocabulary the largest of them are the logits (see `activation_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class ModelStateMemory:
    params: float
    grads: float
    optimizer: float
    cpu_offloaded: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer


def model_state_bytes(
    num_params: int,
    zero_stage: int,
    world_size: int,
    mixed_precision: bool = True,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    frozen_params: int = 0,
    weight_bytes: int | None = None,
) -> ModelStateMemory:
    """`num_params`: all loaded parameters; `frozen_params` of them get no gradients or optimizer states.
    `weight_bytes` 2 without mixed precision is pure bf16 training: 16-bit weights, gradients and Adam
    moments, and (ZeRO >= 1) DeepSpeed's flat copy of the partition in the same dtype."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {zero_stage}")
    if mixed_precision:
        p_bytes, g_bytes, o_bytes = 2, 2, 12
    elif weight_bytes == 2:
        p_bytes, g_bytes, o_bytes = 2, 2, 4 if zero_stage == 0 else 6
    else:
        p_bytes, g_bytes, o_bytes = 4, 4, 8 if zero_stage == 0 else 12
    params = num_params * p_bytes / (world_size if zero_stage >= 3 else 1)
    n = num_params - frozen_params
    grads = n * g_bytes / (world_size if zero_stage >= 2 else 1)
    optim = n * o_bytes / (world_size if zero_stage >= 1 else 1)
    cpu = 0.0
    if offload_optimizer and zero_stage >= 1:
        cpu += optim
        optim = 0.0
    if offload_param and zero_stage == 3:
        cpu += params
        params = 0.0
    return ModelStateMemory(params, grads, optim, cpu)


@dataclass(frozen=True)
class ActivationMemory:
    layers: float  # what the decoder layers keep for the backward pass
    logits: float  # the LM head's output, its fp32 copy for the loss, and that copy's gradient

    @property
    def total(self) -> float:
        return self.layers + self.logits


def activation_bytes(text_config, batch_size: int, seq_len: int, mixed_precision: bool, checkpointing: bool) -> ActivationMemory:
    """Activations of one micro-batch on one GPU (an estimate: what autograd keeps, SDPA attention).

    Per token and layer a Gemma/Llama block keeps about 8h (norm inputs/outputs, residuals) + 2q
    (queries, attention output) + 2kv (keys, values) + 4i (gate, up, activation, product) values.
    With activation checkpointing only each layer's input is kept, plus one layer recomputed at a time.
    Logits: batch x seq x vocab values in 16-bit (fp32 without mixed precision), then the loss upcasts
    them to fp32 and backward makes an fp32 gradient of the same shape: 2 + 4 + 4 bytes each.
    """
    c = text_config
    h, i, layers, vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    value = 2 if mixed_precision else 4
    tokens = batch_size * seq_len
    per_layer = tokens * (8 * h + 2 * q + 2 * kv + 4 * i) * value
    kept = layers * tokens * h * value + per_layer if checkpointing else layers * per_layer
    logits = tokens * vocab * (value + 4 + 4)
    return ActivationMemory(kept, logits)


def format_memory_table(num_params: int, world_size: int, mixed_precision: bool, offload_optimizer: bool, offload_param: bool,
                        chosen_stage: int, frozen_params: int = 0, weight_bytes: int | None = None) -> str:
    lines = [f"{'ZeRO':>5} {'params':>10} {'grads':>10} {'optim':>10} {'total/GPU':>10} {'CPU offload':>12}"]
    for stage in (0, 1, 2, 3):
        m = model_state_bytes(num_params, stage, world_size, mixed_precision, offload_optimizer, offload_param, frozen_params,
                              weight_bytes)
        mark = "  <- chosen" if stage == chosen_stage else ""
        lines.append(
            f"{stage:>5} {m.params / GiB:>8.2f}GB {m.grads / GiB:>8.2f}GB {m.optimizer / GiB:>8.2f}GB "
            f"{m.total / GiB:>8.2f}GB {m.cpu_offloaded / GiB:>10.2f}GB{mark}"
        )
    return "\n".join(lines)
