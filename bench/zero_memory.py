#!/usr/bin/env python
"""Per-rank bytes of parameters, gradients and optimizer states under ZeRO 0, 2 and 3.

Two Ray Train workers (gloo on CPU, NCCL on GPUs) each build the embedded Gemma 3 model, wrap it
with `deepspeed.initialize` using the SFT job's ZeRO config, and take one optimizer step. Bytes are
counted from the tensors the rank actually holds, found by walking the live tensor objects and
deduplicating their storages at four moments:

    A  model built            B  after deepspeed.initialize
    C  after forward+backward D  after optimizer step

    parameters  = storages of the module's parameters as held (ZeRO-3: the rank's partition)
    gradients   = storages alive at C but not at B (gradient buffers and partitions)
    optimizer   = (storages new at B, minus parameters: fp32 master partitions) + (new at D: Adam m, v)

Prints a table per rank, ratios against ZeRO-0 measured in the same run, and the estimate of
`ray_app.trainer.memory` for comparison.

    python bench/zero_memory.py [--model tiny-gemma3-large] [--stages 0,2,3] [--group-per-stage]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.models.registry import materialize_model  # noqa: E402


def _live_storages(device_type: str, keep_alive: list) -> dict[int, int]:
    """Bytes of each live storage by address. The storages themselves go into `keep_alive`: storages are
    told apart by address, and one freed between two snapshots could hand its address to a new one
    (Adam's m landing where a gradient was), which would then not count as new."""
    import gc

    import torch

    gc.collect()
    found: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if not torch.is_tensor(obj) or obj.device.type != device_type:
                continue
            storage = obj.untyped_storage()
        except Exception:  # noqa: BLE001 - some tensor subclasses have no storage
            continue
        if storage.nbytes():
            found[storage.data_ptr()] = storage.nbytes()
            keep_alive.append(storage)
    return found


def _param_storages(module) -> dict[int, int]:
    held = {}
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)  # ZeRO-3 keeps only this rank's partition
        t = t if t is not None else p.data
        if t.numel():
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return held


def measure_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch
    from ray_app.config import SFTConfig
    from ray_app.models.loading import load_policy_for_training
    from ray_app.trainer.sft import deepspeed_config, init_deepspeed_comm

    ctx = ray.train.get_context()
    on_gpu = torch.cuda.is_available()
    device_type = "cuda" if on_gpu else "cpu"
    results = {}
    init_deepspeed_comm(on_gpu)  # as SFT starts it (no CPU build of an inference-only op)
    for stage in config["stages"]:
        torch.manual_seed(0)
        held: list = []  # every storage seen at A-D stays allocated until this stage is counted
        a = _live_storages(device_type, held)
        bf16 = config["precision"] == "bf16"
        # Loaded as SFT loads it: a multimodal checkpoint's vision tower is frozen (weights only).
        model, counted = load_policy_for_training(materialize_model(config["model"], config["corpus"]),
                                                  dtype=torch.bfloat16 if bf16 else torch.float32)
        num_params, frozen_params = counted["total"], counted["frozen"]
        text_config = model.config.get_text_config()
        hidden = text_config.hidden_size
        ds = deepspeed_config(SFTConfig(zero_stage=stage), on_gpu=on_gpu)
        ds.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1, train_batch_size=2 * ctx.get_world_size(), gradient_clipping=1.0)
        ds["bf16"] = {"enabled": bf16}
        ds["optimizer"]["params"] = {k: v for k, v in ds["optimizer"]["params"].items() if v != "auto"} | {"lr": 1e-4}
        zero = ds["zero_optimization"]
        # The values the HF Trainer derives from hidden_size when it fills 'auto'.
        for key, value in {
            "reduce_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden,
        }.items():
            if zero.get(key) == "auto":
                zero[key] = value
        trainable = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds)
        b = _live_storages(device_type, held)
        params = _param_storages(engine.module)
        batch = torch.randint(0, text_config.vocab_size, (2, 64), device=engine.device)
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        c = _live_storages(device_type, held)
        engine.step()
        d = _live_storages(device_type, held)
        grads = {k: v for k, v in c.items() if k not in b}
        # Gradient buffers DeepSpeed allocates up front (ZeRO-3) or keeps across steps (ZeRO-1/2).
        for name in ("grad_partitions_flat_buffer", "grads_in_partition"):
            buf = getattr(engine.optimizer, name, None)
            if torch.is_tensor(buf):
                grads[buf.untyped_storage().data_ptr()] = buf.untyped_storage().nbytes()
        new_at_b = {k: v for k, v in b.items() if k not in a}
        optim = {k: v for k, v in (new_at_b | {k: v for k, v in d.items() if k not in c}).items() if k not in params and k not in grads}
        results[stage] = {
            "num_params": num_params,
            "frozen_params": frozen_params,
            "parameters": sum(params.values()),
            "gradients": sum(grads.values()),
            "optimizer": sum(optim.values()),
        }
        del held, engine, model
    out = Path(config["out_dir"]) / f"rank{ctx.get_world_rank()}.json"
    out.write_text(json.dumps(results))
    ray.train.report({"done": 1})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="tiny-gemma3-large", help="embedded model preset or local HF folder")
    parser.add_argument("--data-dir", default=None, help=cli.DATA_DIR_HELP + " (the embedded tokenizer's corpus)")
    parser.add_argument("--storage-root", default=None, help=cli.ROOT_HELP)
    parser.add_argument("--stages", default="0,2,3", help="ZeRO stages to measure")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16 mixed precision (the GPU configuration) or plain fp32 (the CPU training default)")
    parser.add_argument("--group-per-stage", action="store_true",
                        help="a fresh Ray Train worker group per stage (slower: ~30 s of start-up each); by default one group "
                             "measures every stage in turn, each from its own snapshots, so what an earlier stage's engine "
                             "leaves alive is in every snapshot of the next and never counted")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_app.trainer.memory import model_state_bytes
    from ray_app.utils.ray_init import init_ray

    init_ray()
    corpus = storage.join(cli.bench_data_dir(args.data_dir, args.storage_root, use_ray=True), "gsm_symbolic_train.jsonl")
    stages = [int(s) for s in args.stages.split(",")]
    use_gpu = ray.cluster_resources().get("GPU", 0) >= args.workers
    per_rank: list[dict] = [{} for _ in range(args.workers)]
    for group in ([[s] for s in stages] if args.group_per_stage else [stages]):
        with tempfile.TemporaryDirectory() as out_dir:
            trainer = TorchTrainer(
                measure_worker,
                train_loop_config={"model": args.model, "corpus": corpus, "stages": group, "out_dir": out_dir, "precision": args.precision},
                scaling_config=ray.train.ScalingConfig(num_workers=args.workers, use_gpu=use_gpu),
                run_config=ray.train.RunConfig(name=f"bench-zero-{'-'.join(map(str, group))}",
                                               storage_path=str(Path(out_dir, "ray").resolve())),
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            )
            trainer.fit()
            for r in range(args.workers):
                per_rank[r].update(json.loads((Path(out_dir) / f"rank{r}.json").read_text()))

    kib = 1024
    print(f"\nZeRO model-state memory per rank, {args.workers} workers, {args.precision}, model {args.model} "
          f"({per_rank[0][str(stages[0])]['num_params'] / 1e6:.2f}M parameters); KiB counted from live tensors")
    print(f"{'stage':>5} {'rank':>4} {'params':>10} {'grads':>10} {'optim':>10} {'total':>10} {'vs ZeRO-0':>9} {'estimate':>10}")
    figures = {}
    for stage in stages:
        for rank, res in enumerate(per_rank):
            r = res[str(stage)]
            total = r["parameters"] + r["gradients"] + r["optimizer"]
            base = res[str(stages[0])]
            base_total = base["parameters"] + base["gradients"] + base["optimizer"]
            est = model_state_bytes(r["num_params"], stage, args.workers, mixed_precision=args.precision == "bf16",
                                    frozen_params=r.get("frozen_params", 0)).total
            ratio = total / base_total
            figures.setdefault(stage, []).append({**r, "total": total, "ratio_vs_first_stage": ratio, "estimate": est})
            print(f"{stage:>5} {rank:>4} {r['parameters'] / kib:>10.0f} {r['gradients'] / kib:>10.0f} {r['optimizer'] / kib:>10.0f} "
                  f"{total / kib:>10.0f} {ratio:>8.2f}x {est / kib:>10.0f}")
    if 0 in figures and 3 in figures:
        worst = max(x["ratio_vs_first_stage"] for x in figures[3])
        print(f"\nZeRO-3 / ZeRO-0 per-rank model-state bytes (worst rank): {worst:.2f}x (goal <= 0.60x)")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in figures.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
