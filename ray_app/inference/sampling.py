"""N samples per question on Ray Data actors, streamed into the Ray Serve reward model.

Generation runs in a Ray Data pipeline (one model per actor). The driver consumes its output batch
by batch as it is produced and hands each batch to a small thread pool that sends it to the reward
deployment through a Serve handle, so scoring overlaps generation. At most `reward_max_in_flight`
batches are being scored at once; before each new batch is sent, finished requests are collected and
the first failure stops the job, so a dead reward model stops it within about one generated batch.
A scored batch is written as one part file (atomically, whole questions only) only when every reward
is finite (a NaN or inf is an error naming the questions and samples); a rerun skips questions
already in part files, so a run that died halfway resumes without regenerating finished questions,
and no sample is scored twice or lost. Batches generated but not scored when the job stops are kept
in `pending/` and scored first by the resume (`write_pending`). At the end the parts are gathered
into `samples.parquet` and `samples.jsonl`.

Output schema (one row per sample): model, dataset, question_id, sample_idx, question, response,
pred, gold, correct, reward, num_tokens, finish_reason. The same command gives the same bytes: each
question's N samples are drawn from a seed of (seed, model label, question_id) alone. Beside them,
`sample_timings.jsonl` has generation_started_at, generated_at, scored_at (Unix seconds) and
reward_replica_pid per sample, which show the overlap and where scores came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict

from ray_app.analysis.report import SAMPLE_COLUMNS
from ray_app.config import SampleConfig
from ray_app.data.gsm import manifest_sha256
from ray_app.inference.actors import generate_rows, generation_actor_gpus, question_rows, whole_questions
from ray_app.utils.engines import engine_settings
from ray_app import storage
from ray_app.models.registry import model_identity, parse_model_specs
from ray_app.utils.fingerprint import check_or_record
from ray_app.utils.io import DataError
from ray_app.utils.run_info import redacted, versions

TIMING_COLUMNS = ["generation_started_at", "generated_at", "scored_at", "reward_replica_pid"]


class NonFiniteReward(DataError):
    """The reward model returned NaN or +-inf for some samples; nothing of their batch is written.

    A user error (one line, exit 2 through cli.run) rather than a bug with a traceback: the reward
    model is an input the user chose (--reward-model), the fix is on that side (a checkpoint whose
    weights diverged, another model), and a traceback into the sampler would point at the wrong code.
    """


def _parts(parts_dir: str, fp: str) -> list[str]:
    """Part files made with the settings fingerprinted `fp` (the name starts with it)."""
    return [p for p in storage.list_files(parts_dir, suffix=".jsonl") if storage.basename(p).startswith(f"{fp}-")]


def _read_part(path: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scored_rows(path: str, log=None) -> list[dict]:
    """A part file's rows, less every question with a non-finite (or missing) reward in it.

    This version never writes such a row, but older ones did: their questions count as not finished,
    so the resume samples them again (the new part replaces this one when the batch is the same)."""
    rows = _read_part(path)
    bad = sorted({(r["model"], r["question_id"]) for r in rows if not _is_finite(r.get("reward"))})
    if bad and log is not None:
        names = ", ".join(f"{m}/{q}" for m, q in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        log(f"[sample] {path}: ignoring {len(bad)} question(s) with a non-finite reward ({names}), written by an "
            f"older version; they are sampled and scored again")
    skip = set(bad)
    return [r for r in rows if (r["model"], r["question_id"]) not in skip]


def finished_questions(parts_dir: str, num_samples: int, fp: str, log=None) -> set[tuple[str, str]]:
    """(model, question_id) pairs whose N scored samples (all finite) are already in storage."""
    counts: dict[tuple[str, str], int] = {}
    for part in _parts(parts_dir, fp):
        for row in _scored_rows(part, log):
            key = (row["model"], row["question_id"])
            counts[key] = counts.get(key, 0) + 1
    return {k for k, c in counts.items() if c == num_samples}


def _batch_key(question_ids) -> str:
    """A batch's file name part: its questions, hashed (one batch of questions, one name)."""
    return hashlib.sha256(",".join(sorted(set(question_ids))).encode()).hexdigest()[:16]


def _non_finite(batch, bad: list[tuple[int, float]], reward_model: str) -> NonFiniteReward:
    """The error for the samples of `batch` at (index, reward) `bad`: names the model, questions and samples."""
    named = [f"question {batch['question_id'].iloc[i]} sample {batch['sample_idx'].iloc[i]} ({value})" for i, value in bad[:4]]
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    return NonFiniteReward(
        f"reward model {reward_model} returned a non-finite reward for {len(bad)} of {len(batch)} samples of model "
        f"{batch['model'].iloc[0]}: {'; '.join(named)}{more}. Nothing of this batch was written. A reward model must "
        f"return finite scores: check its weights (a checkpoint that diverged to NaN?) or pass another --reward-model")


def _non_finite_refusal(e: BaseException) -> BaseException | None:
    """The reward deployment's own refusal of non-finite scores (serve_app.NonFiniteScore, naming the
    indices), when that is what a scoring error is: the model's answer, not a lost replica, so no retry."""
    from ray_app.reward.serve_app import NonFiniteScore

    for x in (e, getattr(e, "cause", None), e.__cause__):  # a Serve handle wraps it in a RayTaskError
        if isinstance(x, NonFiniteScore) and getattr(x, "indices", None) is not None:
            return x
    return None


REQUEST_TIMEOUT_S = 900  # one scoring request (one generated batch), queueing for a replica included
POLL_S = 1.0  # how often a waiting request, and the driver waiting on requests, look for a reason to stop


class RewardModelUnavailable(RuntimeError):
    """This run's reward app is gone (deleted) or failed: no request sent to it can finish. Not a user
    error (nothing in the command to fix; the cluster lost it), so it keeps its traceback; rerunning
    the same command resumes."""


class _Stopped(Exception):
    """The sampler is stopping (another batch failed, Ctrl-C): this request was cancelled."""


def _request_scores(handle, questions: list[str], responses: list[str], stop) -> dict:
    """One scoring request through the Serve handle; cancelled when `stop` (a threading.Event) is set
    or after REQUEST_TIMEOUT_S. (A request queued for the replicas of a deleted app never fails by
    itself: without `stop` it would hold the job for the whole timeout.)"""
    response = handle.score.remote(questions, responses)
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        try:
            return response.result(timeout_s=REQUEST_TIMEOUT_S if stop is None else POLL_S)
        except TimeoutError:  # Serve's, and ray.get's GetTimeoutError: the request is still running
            if stop is not None and stop.is_set():
                response.cancel()
                raise _Stopped() from None
            if time.monotonic() >= deadline:
                response.cancel()
                raise TimeoutError(f"no scores after {REQUEST_TIMEOUT_S}s") from None


def _score_and_write(handle, batch, parts_dir: str, fp: str, retries: int, log, reward_model: str = "(reward model)",
                     pending: tuple[str, str] | None = None, stop=None) -> tuple[int, int]:
    """Score one generated batch (retrying if its replica dies) and write it as one part file; returns
    (samples scored, retries used). A non-finite reward raises NonFiniteReward and writes nothing.
    `pending`: (its file in pending/, the run folder) when the batch came from there; the file is
    deleted once the part is written. `stop`: a threading.Event that cancels the request."""
    questions, responses = list(batch["question"]), list(batch["response"])
    retries = max(0, int(retries))  # the config refuses negative values; never leave `result` unset
    for attempt in range(retries + 1):
        try:
            result = _request_scores(handle, questions, responses, stop)
            break
        except _Stopped:
            raise
        except Exception as e:  # a replica died mid-request: Serve routes the retry to a live one
            refusal = _non_finite_refusal(e)
            if refusal is not None:
                raise _non_finite(batch, list(zip(refusal.indices, refusal.values)), reward_model) from e
            if attempt == retries:
                raise
            log(f"[sample] scoring attempt {attempt + 1} failed ({type(e).__name__}: {str(e)[:120]}); retrying")
            if stop is not None and stop.wait(min(30, 2**attempt)):
                raise _Stopped() from e
            if stop is None:
                time.sleep(min(30, 2**attempt))
    if len(result["scores"]) != len(batch):
        raise RuntimeError(f"reward model returned {len(result['scores'])} scores for {len(batch)} samples")
    bad = [(i, score) for i, score in enumerate(result["scores"]) if not _is_finite(score)]
    if bad:  # the deployment refuses these itself (serve_app.check_finite); an older one may not
        raise _non_finite(batch, bad, reward_model)
    batch = batch.copy()
    batch["reward"] = result["scores"]
    batch["scored_at"] = result["scored_at"]
    batch["reward_replica_pid"] = result["replica_pid"]
    label = str(batch["model"].iloc[0])
    rows = batch[SAMPLE_COLUMNS + TIMING_COLUMNS].to_dict(orient="records")
    storage.write_jsonl(storage.join(parts_dir, f"{fp}-{label}-{_batch_key(batch['question_id'])}.jsonl"), rows)
    if pending is not None:
        storage.delete(*pending)  # its part is written: the pending copy is done with
    return len(batch), attempt


def pending_dir(out: str) -> str:
    """Where batches generated but not scored wait for the resume: <out>/pending/."""
    return storage.join(out, "pending")


def write_pending(out: str, fp: str, batch) -> str:
    """Keep one generated-but-unscored batch for the resume: <out>/pending/<model fp>-<label>-<key>.jsonl.

    Why scoring it later is the same as generating it again: a question's N samples depend only on
    (seed, model label, question_id) and the settings in its model's fingerprint `fp`, never on the
    batch, the run or the reward model's answers, so regenerating would give the same rows. The file
    is named by that fingerprint and read only by a run with the same one (other settings, or another
    model identity, never see it; --fresh-run deletes the folder), it is written whole (storage writes
    are atomic) and holds whole questions, and it is deleted only after its part file is written. If a
    run dies between the two, the next run finds those questions finished and deletes it unused
    (`pending_batches`); losing one only costs its generation again."""
    label = str(batch["model"].iloc[0])
    path = storage.join(pending_dir(out), f"{fp}-{label}-{_batch_key(batch['question_id'])}.jsonl")
    storage.write_jsonl(path, batch.to_dict(orient="records"))
    return path


def pending_batches(out: str, fp: str, label: str, todo: set[str], log=print) -> list[tuple[str, object]]:
    """This model's pending batches (fingerprint `fp`) as (file, frame), cut to the questions in `todo`;
    a file none of whose questions is still to do is deleted (its part was written before it was)."""
    import pandas as pd

    folder = pending_dir(out)
    if not storage.exists(folder):
        return []
    found = []
    for path in storage.list_files(folder, suffix=".jsonl"):
        if not storage.basename(path).startswith(f"{fp}-{label}-"):
            continue
        rows = [r for r in _read_part(path) if r["model"] == label and r["question_id"] in todo]
        if not rows:
            log(f"[sample] {path}: its questions are already scored; deleting it")
            storage.delete(path, out)
            continue
        found.append((path, pd.DataFrame(rows)))
    return found


def gather_parts(parts_dir: str, num_samples: int, expected: dict[str, set[str]], model_fps: dict[str, str]):
    """This run's part files (each model's, by its fingerprint) as one frame, checked: exactly N scored
    samples per expected question (rows of questions with a non-finite reward are left out, as in
    `finished_questions`)."""
    import pandas as pd

    rows = [row for label, fp in model_fps.items() for part in _parts(parts_dir, fp) for row in _scored_rows(part)
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
    done = {pair for label, mfp in model_fps.items() for pair in finished_questions(parts_dir, cfg.num_samples, mfp, log) if pair[0] == label}
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
        scored, retried, from_pending = _generate_and_score(cfg, reward.handle, rows, specs, done, corpus, out, model_fps,
                                                            seconds, log, lambda: _check_reward_app(reward.name, cfg.reward_model))
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
                "scored_from_pending": from_pending,
                "overlap": overlap, "reward_batching": stats,
                "reward_serving": {**reward.manifest(), "reward_model": cfg.reward_model,
                                   "reward_model_identity": model_identity(cfg.reward_model), "kept": cfg.keep_serving,
                                   "max_in_flight": cfg.reward_max_in_flight, "num_replicas": settings.num_replicas,
                                   "autoscaling_config": autoscaling_config(settings)},
                "seconds": seconds, "versions": versions(),
                "questions": {label: sorted(q) for label, q in expected.items()},
                "schema": {"samples": SAMPLE_COLUMNS, "sample_timings": ["model", "question_id", "sample_idx"] + TIMING_COLUMNS}}
    storage.write_json(storage.join(out, "sample_manifest.json"), redacted(manifest))
    log(f"[sample] done: {len(df)} samples ({scored} scored now) -> {storage.join(out, 'samples.parquet')} (and samples.jsonl, sample_timings.jsonl, sample_manifest.json)")
    if overlap:
        t0 = overlap["generation_began_at"]
        log(f"[sample] overlap: first score {overlap['first_score_at'] - t0:.1f}s after generation began; "
            f"last generation finished at {overlap['last_generation_finished_at'] - t0:.1f}s")
    return {"samples": df, **manifest}


def _generate_and_score(cfg: SampleConfig, handle, rows: list[dict], specs: list[tuple[str, str]], done: set,
                        corpus: str, out: str, model_fps: dict[str, str], seconds: dict, log,
                        check_reward=None) -> tuple[int, int, dict]:
    """Score the batches an earlier run left in pending/, then generate the questions still to do and
    score each batch through `handle` as it comes out; returns (samples scored, scoring retries used,
    {"batches", "samples"} scored from pending/).

    At most cfg.reward_max_in_flight batches are being scored at once (the load the autoscaling target
    is set for). Before each batch is sent, finished requests are collected and the first failure is
    raised, and `check_reward()` raises when the reward app itself is gone (deleted, failed), so a
    dead reward model stops the job within about one generated batch. When the job stops (a scoring
    or generation failure, Ctrl-C), requests still running are cancelled and every batch generated
    but not scored is written to pending/ (`write_pending`) for the resume; the log says how many."""
    num_gpus = generation_actor_gpus(cfg, log)
    actor_args = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.questions_per_batch, "num_samples": cfg.num_samples,
                  "do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    parts_dir = storage.join(out, "parts")
    limit = cfg.reward_max_in_flight
    totals = {"scored": 0, "retried": 0}
    from_pending = {"batches": 0, "samples": 0}
    stop = threading.Event()  # set when the job stops: cancels the requests still running
    # Each future's batch, its model's fingerprint and, for a batch read from pending/, that file.
    outstanding: dict[Future, tuple[object, str, str | None]] = {}
    unsent: list[tuple[object, str]] = []  # taken from generation, not yet handed to the pool

    def check() -> None:
        """Collect finished requests (raising the first failure), then ask whether the reward app is up."""
        for f in [f for f in outstanding if f.done()]:
            n, retries_used = f.result()  # a failed request raises here and stays outstanding
            del outstanding[f]
            totals["scored"] += n
            totals["retried"] += retries_used
        if check_reward is not None:  # one small call to the Serve controller per batch
            check_reward()

    def settle(keep: int) -> None:
        """check() until at most `keep` requests are outstanding."""
        check()
        while len(outstanding) > keep:
            wait(list(outstanding), timeout=POLL_S, return_when=FIRST_COMPLETED)
            check()

    def send(batch, fp: str, pending_file: str | None = None) -> None:
        unsent.append((batch, fp))
        settle(limit - 1)
        outstanding[pool.submit(_score_and_write, handle, batch, parts_dir, fp, cfg.score_retries, log, cfg.reward_model,
                                (pending_file, out) if pending_file else None, stop)] = (batch, fp, pending_file)
        unsent.clear()

    pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="score")
    try:
        for label, model in specs:
            todo = {r["question_id"] for r in rows if (label, r["question_id"]) not in done}
            # Batches an earlier run generated but did not score: scored first, not generated again.
            for path, batch in pending_batches(out, model_fps[label], label, todo, log):
                log(f"[sample] {label}: scoring {len(batch)} pending samples ({batch['question_id'].nunique()} questions) "
                    f"generated by an earlier run, from {path}")
                send(batch, model_fps[label], path)
                from_pending["batches"] += 1
                from_pending["samples"] += len(batch)
                todo -= set(batch["question_id"])
            todo_rows = [r for r in rows if r["question_id"] in todo]
            if not todo_rows:
                continue
            t = time.perf_counter()
            ds = generate_rows(cfg.engine, todo_rows, label, model, corpus, actor_args,
                               cfg.questions_per_batch * (cfg.num_samples if cfg.engine == "vllm" else 1),
                               cfg.actors_per_model, num_gpus)
            # Scored as batches of whole questions (vLLM returns a question's N requests in any order).
            for batch in whole_questions(ds.iter_batches(batch_size=None, batch_format="pandas"), cfg.num_samples):
                send(batch, model_fps[label])
            seconds[f"generate_{label}"] = time.perf_counter() - t
            log(f"[sample] {label}: {len(todo_rows)} questions x {cfg.num_samples} samples generated in {seconds[f'generate_{label}']:.0f}s")
        settle(0)
    except BaseException as e:
        stop.set()  # requests not started are cancelled, running ones give up within POLL_S
        for f in outstanding:
            f.cancel()
        pool.shutdown(wait=True)  # a request that finished meanwhile has written its part
        _keep_unscored(out, [(b, fp) for f, (b, fp, pending_file) in outstanding.items()
                             if pending_file is None and (f.cancelled() or f.exception() is not None)] + unsent, e, log)
        raise
    pool.shutdown(wait=True)
    return totals["scored"], totals["retried"], from_pending


def _check_reward_app(app_name: str, reward_model: str) -> None:
    """Raise RewardModelUnavailable when the Serve app `app_name` is gone, being deleted or failed."""
    from ray import serve

    status = serve.status().applications.get(app_name)
    if status is None or status.status in ("DELETING", "DEPLOY_FAILED"):
        state = "gone" if status is None else getattr(status.status, "value", status.status)
        state += f" ({status.message})" if status is not None and status.message else ""
        raise RewardModelUnavailable(f"the reward model {reward_model} (Serve app {app_name}) is {state}: no batch "
                                     f"can be scored")


def _keep_unscored(out: str, batches: list, error: BaseException, log) -> None:
    """Write the batches generated but not scored to pending/ for the resume; never hides `error`."""
    if not batches:
        return
    kept = 0
    for batch, fp in batches:
        try:
            write_pending(out, fp, batch)
            kept += len(batch)
        except Exception as e:  # noqa: BLE001 - the run's own error is the one to report
            log(f"[sample] could not keep a generated batch in {pending_dir(out)} ({type(e).__name__}: {str(e)[:200]}); "
                f"the resume generates it again")
    why = f"{type(error).__name__}: {str(error).strip()[:200]}" if str(error).strip() else type(error).__name__
    log(f"[sample] stopped ({why}): {len(batches)} generated batch(es) not scored, {kept} samples kept in "
        f"{pending_dir(out)}; rerun the same command to score them and go on")


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
        "data_manifest_sha256": manifest_sha256(cfg.data_dir), **engine_settings(cfg.engine, do_sample=True),
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
