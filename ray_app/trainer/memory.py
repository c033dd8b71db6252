"""Per-GPU memory of model states under ZeRO, from the parameter count alone (no weights loaded).

Model states per parameter (ZeRO paper, Adam): mixed precision keeps 2 B of 16-bit weights, 2 B of
16-bit gradients and 12 B of fp32 master weights + Adam m + v. Plain fp32 keeps 4 + 4 + 8 B.
ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3 also parameters, over N ranks.
Offload moves optimizer states (and, with offload_param at stage 3, parameters) to CPU memory.
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
) -> ModelStateMemory:
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {zero_stage}")
    p_bytes, g_bytes, o_bytes = (2, 2, 12) if mixed_precision else (4, 4, 8 if zero_stage == 0 else 12)
    n = num_params
    params = n * p_bytes / (world_size if zero_stage >= 3 else 1)
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


def format_memory_table(num_params: int, world_size: int, mixed_precision: bool, offload_optimizer: bool, offload_param: bool, chosen_stage: int) -> str:
    lines = [f"{'ZeRO':>5} {'params':>10} {'grads':>10} {'optim':>10} {'total/GPU':>10} {'CPU offload':>12}"]
    for stage in (0, 1, 2, 3):
        m = model_state_bytes(num_params, stage, world_size, mixed_precision, offload_optimizer, offload_param)
        mark = "  <- chosen" if stage == chosen_stage else ""
        lines.append(
            f"{stage:>5} {m.params / GiB:>8.2f}GB {m.grads / GiB:>8.2f}GB {m.optimizer / GiB:>8.2f}GB "
            f"{m.total / GiB:>8.2f}GB {m.cpu_offloaded / GiB:>10.2f}GB{mark}"
        )
    return "\n".join(lines)
