"""N samples per question on Ray Data actors, streamed into the Ray Serve reward model.

Generation runs in a Ray Data pipeline (one model per actor). The driver consumes its output batch
by batch as it is produced and hands each batch to a small thread pool that sends it to the reward
deployment through a Serve handle, so scoring overlaps generation. A scored batch is written as one
part file (atomically, whole questions only); a rerun skips questions already in part files, so a
run that died halfway resumes without regenerating finished questions, and no sample is scored twice
or lost. At the end the parts are gathered into `samples.parquet` and `samples.jsonl`.

Output schema (one row per sample): model, dataset, question_id, sample_idx, question, response,
pred, gold, correct, reward, num_tokens, finish_reason. The same command gives the same bytes: each
question's N samples are drawn from a seed of (seed, model label, question_id) alone. Beside them,
`sample_timings.jsonl` has generation_started_at, generated_at, scored_at (Unix seconds) and
reward_replica_pid per sample, which show the overlap and where scores came from.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from ray_app.analysis.report import SAMPLE_COLUMNS
from ray_app.config import SampleConfig
from ray_app.data.gsm import manifest_sha256
from ray_app.inference.evaluation import generate_with_actors, generation_actor_gpus, question_rows
from ray_app import storage
from ray_app.models.registry import model_identity, parse_model_specs
from ray_app.utils.fingerprint import check_or_record
from ray_app.utils.io import DataError
from ray_app.utils.run_info import versions

TIMING_COLUMNS = ["generation_started_at", "generated_at", "scored_at", "reward_replica_pid"]


def _parts(parts_dir: str, fp: str) -> list[str]:
    """Part files made with the settings fingerprinted `fp` (the name starts with it)."""
    return [p for p in storage.list_files(parts_dir, suffix=".jsonl") if storage.basename(p).startswith(f"{fp}-")]


def _read_part(path: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def finished_questions(parts_dir: str, num_samples: int, fp: str) -> set[tuple[str, str]]:
    """(model, question_id) pairs whose N scored samples are already in storage."""
    counts: dict[tuple[str, str], int] = {}
    for part in _parts(parts_dir, fp):
        for row in _read_part(part):
            key = (row["model"], row["question_id"])
            counts[key] = counts.get(key, 0) + 1
    return {k for k, c in counts.items() if c == num_samples}


def _score_and_write(handle, batch, parts_dir: str, fp: str, retries: int, log) -> tuple[int, int]:
    """Score one generated batch (retrying if its replica dies) and write it as one part file."""
    questions, responses = list(batch["question"]), list(batch["response"])
    for attempt in range(retries + 1):
        try:
            result = handle.score.remote(questions, responses).result(timeout_s=900)
            break
        except Exception as e:  # a replica died mid-request: Serve routes the retry to a live one
            if attempt == retries:
                raise
            log(f"[sample] scoring attempt {attempt + 1} failed ({type(e).__name__}: {str(e)[:120]}); retrying")
            time.sleep(min(30, 2**attempt))
    if len(result["scores"]) != len(batch):
        raise RuntimeError(f"reward model returned {len(result['scores'])} scores for {len(batch)} samples")
    batch = batch.copy()
    batch["reward"] = result["scores"]
    batch["scored_at"] = result["scored_at"]
    batch["reward_replica_pid"] = result["replica_pid"]
    key = hashlib.sha256(",".join(sorted(set(batch["question_id"]))).encode()).hexdigest()[:16]
    label = str(batch["model"].iloc[0])
    rows = batch[SAMPLE_COLUMNS + TIMING_COLUMNS].to_dict(orient="records")
    storage.write_jsonl(storage.join(parts_dir, f"{fp}-{label}-{key}.jsonl"), rows)
    return len(batch), attempt


def gather_parts(parts_dir: str, num_samples: int, expected: dict[str, set[str]], model_fps: dict[str, str]):
    """This run's part files (each model's, by its fingerprint) as one frame, checked: exactly N scored
    samples per expected question."""
    import pandas as pd

    rows = [row for label, fp in model_fps.items() for part in _parts(parts_dir, fp) for row in _read_part(part)
            if row["model"] == label]
    df = pd.DataFrame(rows)
    dup = df.duplicated(["model", "question_id", "sample_idx"])
    if dup.any():
        raise DataError(f"{int(dup.sum())} samples appear twice in {parts_dir}")
    for label, qids in expected.items():
        got = df[df["model"] == label].groupby("question_id").size()
        missing = sorted(qids - set(got.index))
        short = sorted(q for q, n in got.items() if n != num_samples)
        if missing or short:
            raise DataError(f"{label}: {len(missing)} questions without samples, {len(short)} without exactly {num_samples}")
    if df["reward"].isna().any():
        raise DataError("some samples have no reward")
    return df.sort_values(["model", "dataset", "question_id", "sample_idx"], kind="stable").reset_index(drop=True)


def run_sampling(cfg: SampleConfig, root: str | None = None, log=print) -> dict:
    """Sample and score into cfg.out_dir (see the module docstring), holding that folder's run lock
    (utils/run_lock.py) so a second run into it stops naming this one. `root` is the storage root,
    the only place --fresh-run deletes in: without it, --fresh-run is refused."""
    from ray_app.utils.run_lock import run_lock

    with run_lock(cfg.out_dir, "samples folder", log=log):
        return _run_sampling(cfg, root, log)


def _run_sampling(cfg: SampleConfig, root: str | None, log) -> dict:
    from ray_app.reward.serve_app import ServeSettings, autoscaling_config, serving_reward_model

    started, started_at = time.perf_counter(), time.time()
    out = cfg.out_dir
    parts_dir = storage.join(out, "parts")
    rows = question_rows(cfg.data_dir, [cfg.dataset], cfg.limit)
    if not rows:
        raise DataError(f"no questions in {cfg.data_dir}/{cfg.dataset}.jsonl")
    specs = parse_model_specs(cfg.models)
    corpus = storage.join(cfg.data_dir, "gsm_symbolic_train.jsonl")
    if cfg.fresh_run and storage.exists(out):
        log(f"[sample] --fresh-run: deleting earlier samples in {out}")
        if root is None:
            raise storage.StorageError(f"--fresh-run would delete {out}, but no storage root was given to keep the "
                                       "delete inside: pass run_sampling(cfg, root)")
        storage.delete(out, root)
    generation = sampling_settings(cfg)
    fp = check_or_record(storage.join(out, "sampling_config.json"), sampling_config_settings(cfg), "Sampling output", "--fresh-run")
    # Each model's parts carry its own fingerprint (these settings + its identity): a model that changed
    # (retrained, trained longer) is sampled again; the others' samples are reused.
    model_fps = {label: model_fingerprint(fp, label, identity) for label, identity in generation["models"].items()}
    done = {pair for label, mfp in model_fps.items() for pair in finished_questions(parts_dir, cfg.num_samples, mfp) if pair[0] == label}
    expected = {label: {r["question_id"] for r in rows} for label, _ in specs}
    all_done = all((label, q) in done for label, qids in expected.items() for q in qids)
    # (--keep-serving asks for the endpoint itself, so it deploys even then.)
    reused = _reusable_manifest(out, generation, expected, cfg.num_samples) if all_done and not cfg.keep_serving else None
    if reused is not None:
        log(f"[sample] every (model, question) pair is already scored with these settings: reusing the "
            f"{reused['rows']} samples in {storage.join(out, 'samples.parquet')} (no reward model deployed)")
        import pandas as pd

        return {"samples": pd.read_parquet(storage.local_copy(storage.join(out, "samples.parquet"))), **reused, "reused": True}
    if done:
        log(f"[sample] resuming: {len(done)} (model, question) pairs already scored in {parts_dir}")

    from ray_app.utils.ray_init import ensure_connected

    ensure_connected(log)
    t = time.perf_counter()
    settings = ServeSettings(
        model_path=cfg.reward_model, corpus_file=corpus, num_replicas=cfg.reward_replicas,
        num_cpus=cfg.reward_num_cpus, num_gpus=cfg.reward_num_gpus, max_batch_size=cfg.reward_max_batch_size,
        batch_wait_timeout_s=cfg.reward_batch_wait_timeout_s, autoscaling=cfg.reward_autoscaling,
        max_replicas=cfg.reward_max_replicas, host=cfg.serve_host, port=cfg.serve_port,
        target_ongoing_requests=reward_target_ongoing_requests(cfg),
        upscale_delay_s=cfg.reward_upscale_delay_s, downscale_delay_s=cfg.reward_downscale_delay_s,
    )
    from ray_app.utils.resources import wait_for_resources

    wait_for_resources([{"CPU": cfg.reward_num_cpus, "GPU": cfg.reward_num_gpus}] * cfg.reward_replicas, cfg.resource_wait_s,
                       "reward replicas", hint="--reward-num-cpus, --reward-num-gpus, --reward-replicas", log=log)
    # This run's own Serve app and route (named after its folder and settings): a concurrent run on the
    # same cluster deploys its own, and the app is deleted when sampling ends, however it ends.
    app_name = run_app_name(cfg)
    seconds: dict[str, float] = {}
    with serving_reward_model(settings, app_name, keep=cfg.keep_serving, log=log) as reward:
        seconds["deploy_reward_model"] = time.perf_counter() - t
        log(f"[sample] reward model {cfg.reward_model} serving as Serve app {reward.name} on "
            f"{reward.url or '(Serve runs without an HTTP proxy)'}")
        scored, retried = _generate_and_score(cfg, reward.handle, rows, specs, done, corpus, parts_dir, model_fps, seconds, log)
        stats = reward.handle.stats.remote().result()

    df = gather_parts(parts_dir, cfg.num_samples, expected, model_fps)
    import io

    # The samples files hold what the settings decide, so the same command gives the same bytes;
    # when and where each sample was made (which differs run to run) goes beside them.
    samples = df[SAMPLE_COLUMNS]
    buffer = io.BytesIO()
    samples.to_parquet(buffer, index=False)
    storage.write_bytes(storage.join(out, "samples.parquet"), buffer.getvalue())
    storage.write_jsonl(storage.join(out, "samples.jsonl"), samples.to_dict(orient="records"))
    storage.write_jsonl(storage.join(out, "sample_timings.jsonl"),
                        df[["model", "question_id", "sample_idx"] + TIMING_COLUMNS].to_dict(orient="records"))
    new = df[df["scored_at"] >= started_at]  # rows scored by this run (a resumed run keeps older ones)
    overlap = None
    if len(new):
        overlap = {
            "generation_began_at": float(new["generation_started_at"].min()),
            "first_score_at": float(new["scored_at"].min()),
            "last_generation_finished_at": float(new["generated_at"].max()),
        }
        overlap["first_score_before_last_generation"] = overlap["first_score_at"] < overlap["last_generation_finished_at"]
    seconds["total"] = time.perf_counter() - started
    manifest = {"config": asdict(cfg), "settings": generation, "config_fingerprint": fp, "model_fingerprints": model_fps,
                "rows": len(df), "scored_this_run": scored, "score_retries_used": retried, "resumed_pairs": len(done),
                "overlap": overlap, "reward_batching": stats,
                "reward_serving": {**reward.manifest(), "reward_model": cfg.reward_model,
                                   "reward_model_identity": model_identity(cfg.reward_model), "kept": cfg.keep_serving,
                                   "max_in_flight": cfg.reward_max_in_flight, "num_replicas": settings.num_replicas,
                                   "autoscaling_config": autoscaling_config(settings)},
                "seconds": seconds, "versions": versions(),
                "questions": {label: sorted(q) for label, q in expected.items()},
                "schema": {"samples": SAMPLE_COLUMNS, "sample_timings": ["model", "question_id", "sample_idx"] + TIMING_COLUMNS}}
    storage.write_json(storage.join(out, "sample_manifest.json"), manifest)
    log(f"[sample] done: {len(df)} samples ({scored} scored now) -> {storage.join(out, 'samples.parquet')} (and samples.jsonl, sample_timings.jsonl, sample_manifest.json)")
    if overlap:
        t0 = overlap["generation_began_at"]
        log(f"[sample] overlap: first score {overlap['first_score_at'] - t0:.1f}s after generation began; "
            f"last generation finished at {overlap['last_generation_finished_at'] - t0:.1f}s")
    return {"samples": df, **manifest}


def _generate_and_score(cfg: SampleConfig, handle, rows: list[dict], specs: list[tuple[str, str]], done: set,
                        corpus: str, parts_dir: str, model_fps: dict[str, str], seconds: dict, log) -> tuple[int, int]:
    """Generate the questions not yet done and score each batch through `handle` as it comes out;
    returns (samples scored, scoring retries used). On an error or Ctrl-C, batches not yet sent are
    dropped (they are not in a part file, so a rerun does them) instead of being scored first."""
    num_gpus = generation_actor_gpus(cfg, log)
    actor_args = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.questions_per_batch, "num_samples": cfg.num_samples,
                  "do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    scored = retried = 0
    # At most reward_max_in_flight scoring requests at once: the load the autoscaling target is set for.
    with ThreadPoolExecutor(max_workers=cfg.reward_max_in_flight, thread_name_prefix="score") as pool:
        futures = []
        try:
            for label, model in specs:
                todo = [r for r in rows if (label, r["question_id"]) not in done]
                if not todo:
                    continue
                t = time.perf_counter()
                ds = generate_with_actors(todo, label, model, corpus, actor_args,
                                          cfg.questions_per_batch, cfg.actors_per_model, num_gpus)
                for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                    futures.append(pool.submit(_score_and_write, handle, batch, parts_dir, model_fps[label], cfg.score_retries, log))
                seconds[f"generate_{label}"] = time.perf_counter() - t
                log(f"[sample] {label}: {len(todo)} questions x {cfg.num_samples} samples generated in {seconds[f'generate_{label}']:.0f}s")
            for f in futures:
                n, retries_used = f.result()
                scored, retried = scored + n, retried + retries_used
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return scored, retried


def reward_target_ongoing_requests(cfg: SampleConfig) -> int:
    """The reward deployment's autoscaling target: given, or derived from the sampler's in-flight load so
    that load asks for reward_max_replicas replicas (the arithmetic: serve_app.target_ongoing_requests_for)."""
    from ray_app.reward.serve_app import target_ongoing_requests_for

    if cfg.reward_target_ongoing_requests is not None:
        return cfg.reward_target_ongoing_requests
    return target_ongoing_requests_for(cfg.reward_max_in_flight, cfg.reward_max_replicas)


def load_manifest(out_dir: str) -> dict:
    return storage.read_json(storage.join(out_dir, "sample_manifest.json"))


def sampling_settings(cfg: SampleConfig) -> dict:
    """What decides the samples and their rewards: the folder's settings (`sampling_config_settings`)
    and each model's identity."""
    return {"models": {label: model_identity(model) for label, model in parse_model_specs(cfg.models)},
            **sampling_config_settings(cfg)}


def sampling_config_settings(cfg: SampleConfig) -> dict:
    """What a samples folder is bound to (sampling_config.json; a rerun with other values is refused).
    Left out: which models (each model's parts carry its own fingerprint, `model_fingerprint`), which
    questions (--limit only adds or skips questions) and how the work is spread (actors, batch sizes,
    replicas, ports)."""
    return {
        "dataset": cfg.dataset, "num_samples": cfg.num_samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
        "seed": cfg.seed, "seeding": "per question: sha256(seed:label:question_id)", "max_new_tokens": cfg.max_new_tokens, "reward_model": model_identity(cfg.reward_model),
        "data_manifest_sha256": manifest_sha256(cfg.data_dir),
    }


def model_fingerprint(config_fp: str, label: str, identity: str) -> str:
    """What one model's part files are named by: the folder's settings, its label and its identity."""
    from ray_app.utils.fingerprint import fingerprint

    return fingerprint({"sampling_config": config_fp, "label": label, "model": identity})


def run_app_name(cfg: SampleConfig) -> str:
    """The Serve app a sampling run deploys its reward model as (named after its folder and settings)."""
    from ray_app.reward.serve_app import reward_app_name
    from ray_app.utils.fingerprint import fingerprint

    return reward_app_name(cfg.out_dir, fingerprint(sampling_config_settings(cfg)))


def _reusable_manifest(out: str, settings: dict, expected: dict[str, set[str]], num_samples: int) -> dict | None:
    """The folder's sample manifest when it already holds exactly these settings' samples for these
    models and questions (a rerun with nothing to do); else None."""
    path = storage.join(out, "sample_manifest.json")
    if not (storage.exists(path) and storage.exists(storage.join(out, "samples.parquet"))):
        return None
    manifest = storage.read_json(path)
    questions = {label: sorted(q) for label, q in expected.items()}
    if manifest.get("settings") != settings or manifest.get("questions") != questions:
        return None
    return manifest if manifest.get("rows") == num_samples * sum(len(q) for q in expected.values()) else None
