"""The generation layer that evaluation and sampling both call: question rows in, one row per
(question, sample) out, on a Ray Data pool of actors that hold one policy model each (Hugging Face
`generate`, the engine that runs anywhere). Evaluation (greedy) and sampling (N per question) differ
only in the actor arguments they pass."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from ray_app.config import GenerationConfig
from ray_app.data.gsm import load_split
from ray_app.data.prompts import extract_answer
from ray_app.utils.resources import gpus_reachable, wait_for_resources


def question_seed(seed: int, label: str, question_id: str) -> int:
    """The seed of one question's samples: a function of (seed, model label, question id) only, so
    re-batching, another actor count or a resumed run draws the same samples for a question."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}:{question_id}".encode()).digest()[:8], "big")


class GenerationActor:
    """`map_batches` callable class: one model per actor, loaded once, batched left-padded generation.

    Greedy (num_samples=1, do_sample=False) for evaluation; N samples per question for sampling.
    Output: one row per (question, sample) with the response, its parsed answer and correctness.
    """

    def __init__(self, label: str, model: str, corpus_file: str | None, max_new_tokens: int, batch_size: int = 32,
                 num_samples: int = 1, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0):
        from ray_app.generation import load_policy
        from ray_app.models.registry import materialize_model
        from ray_app.utils.devices import assigned_device

        from ray_app.utils.progress import quiet_progress_bars

        quiet_progress_bars()  # a worker's output is a log, not a terminal
        self.label, self.max_new_tokens, self.batch_size = label, max_new_tokens, batch_size
        self.num_samples, self.do_sample = num_samples, do_sample
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        # On this actor's node: build / download the model here, on the device Ray assigned (cpu with 0 GPUs).
        self.device = assigned_device()
        self.tokenizer, self.model = load_policy(materialize_model(model, corpus_file), device=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from ray_app.generation import generate
        from ray_app.utils import metrics

        started = time.time()
        questions = [str(q) for q in batch["question"]]
        if self.do_sample:
            # One generate() call per question, its N copies seeded by the question alone: the draws of
            # a question never depend on which other questions share its Ray Data batch. (HF sampling
            # uses one random stream per call; the N copies share a prompt, so no padding differs.)
            gens = []
            for qid, question in zip(batch["question_id"], questions):
                gens += generate(self.model, self.tokenizer, [question] * self.num_samples,
                                 max_new_tokens=self.max_new_tokens, batch_size=self.num_samples, do_sample=True,
                                 temperature=self.temperature, top_p=self.top_p,
                                 seed=question_seed(self.seed, self.label, str(qid)))
        else:
            gens = generate(self.model, self.tokenizer, questions, max_new_tokens=self.max_new_tokens,
                            batch_size=self.batch_size)
        finished = time.time()
        out: dict[str, list] = {k: [] for k in (
            "model", "dataset", "question_id", "sample_idx", "question", "response", "pred", "gold", "correct",
            "num_tokens", "finish_reason", "generation_started_at", "generated_at")}
        for i, g in enumerate(gens):
            q = i // self.num_samples
            pred = extract_answer(g.completion)
            gold = str(batch["gold"][q])
            out["model"].append(self.label)
            out["dataset"].append(str(batch["dataset"][q]))
            out["question_id"].append(str(batch["question_id"][q]))
            out["sample_idx"].append(i % self.num_samples)
            out["question"].append(questions[q])
            out["response"].append(g.completion)
            out["pred"].append(pred)
            out["gold"].append(gold)
            out["correct"].append(pred == gold)
            out["num_tokens"].append(g.num_tokens)
            out["finish_reason"].append(g.finish_reason)
            out["generation_started_at"].append(started)
            out["generated_at"].append(finished)
        metrics.samples_generated(len(gens), self.label, sampled=self.do_sample)
        return out


def question_rows(data_dir: str, splits: list[str], limit: int | None) -> list[dict]:
    rows = []
    for split in splits:
        for r in load_split(data_dir, split)[:limit]:
            rows.append({"dataset": split, "question_id": r["id"], "question": r["question"], "gold": r["gold"]})
    return rows


def generation_actor_gpus(cfg: GenerationConfig, log=print) -> float:
    """GPUs per generation actor (as asked, else one where the cluster has GPUs or its autoscaler can add
    them), once the cluster can hold `actors_per_model` such actors (or a clear error: resources.py)."""
    from ray_app.utils.ray_init import ensure_connected

    ensure_connected(log)
    num_gpus = cfg.num_gpus_per_actor if cfg.num_gpus_per_actor is not None else (1.0 if gpus_reachable() else 0.0)
    wait_for_resources([{"CPU": 1, "GPU": num_gpus}] * cfg.actors_per_model, cfg.resource_wait_s, "generation actors",
                       hint="--num-gpus-per-actor, --actors-per-model", log=log)
    return num_gpus


def generate_with_actors(rows: list[dict], label: str, model: str, corpus_file: str, cfg_actor: dict, batch_size: int,
                         actors: int, num_gpus: float):
    """A Ray Data pipeline: question rows -> GenerationActor pool -> streamed output batches.

    The actors get the model as named (preset, URI, shared path or Hub id) and resolve it on their node.
    """
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * actors)))
    ds = ds.map_batches(
        GenerationActor,
        fn_constructor_kwargs={"label": label, "model": model, "corpus_file": corpus_file, **cfg_actor},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=num_gpus,
    )
    # Ray 2.60's map_batches takes no stage name (the operator is named after the class:
    # MapBatches(GenerationActor)); the dataset's name is what the dashboard's Data view and the
    # ray_data_* metrics' `dataset` tag show: "sample-<label>" or "evaluate-<label>".
    ds.set_name(f"{'sample' if cfg_actor.get('do_sample') else 'evaluate'}-{label}")
    return ds
