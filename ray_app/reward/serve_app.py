"""The reward model as a Ray Serve deployment: a Python handle for the sampler, HTTP for people.

    POST /score  {"question": str, "responses": [str, ...]}  ->  {"scores": [float, ...]}

Every (question, response) pair is one call of a `@serve.batch` method, so pairs from all callers
(sampler batches, HTTP requests) are scored together in batches of up to `max_batch_size`; within
a batch, responses to the same question share one forward pass over the prompt (see scorer.py).
Bad payloads get a 4xx with a message; the replica keeps serving.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request annotation.

import asyncio
import json
import os
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from ray_app.utils import metrics

APP_NAME = "reward"
DEPLOYMENT_NAME = "RewardModel"

http_app = FastAPI(title="GSM reward model", description="Scores (question, response) pairs with a reward model.")


@dataclass
class ServeSettings:
    model_path: str  # as named: preset, URI, shared path or Hub id; each replica resolves it on its node
    corpus_file: str | None = None  # training rows, which an embedded model's tokenizer is built from
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = 64
    autoscaling: bool = False
    max_replicas: int = 4
    # Serve's autoscaling knobs (used when autoscaling): see target_ongoing_requests_for below.
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0  # Serve's default
    downscale_delay_s: float = 600.0  # Serve's default
    look_back_period_s: float = 30.0  # Serve's default: the window the ongoing-request count is averaged over
    metrics_interval_s: float = 10.0  # Serve's default: how often handles and replicas report that count
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    max_body_bytes: int = 1_000_000
    max_responses: int = 256


class PayloadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def validate_payload(body: bytes, max_body_bytes: int, max_responses: int) -> "tuple[str, list[str]]":
    """Parse and check a /score body; raises PayloadError(status, message) naming the problem."""
    if len(body) > max_body_bytes:
        raise PayloadError(413, f"body is {len(body)} bytes; the limit is {max_body_bytes}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PayloadError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise PayloadError(422, 'expected a JSON object {"question": str, "responses": [str]}')
    missing = [k for k in ("question", "responses") if k not in payload]
    if missing:
        raise PayloadError(422, f"missing field(s): {', '.join(missing)}")
    question, responses = payload["question"], payload["responses"]
    if not isinstance(question, str) or not question.strip():
        raise PayloadError(422, "'question' must be a non-empty string")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise PayloadError(422, "'responses' must be a list of strings")
    if not responses:
        raise PayloadError(422, "'responses' is empty; send at least one response to score")
    if len(responses) > max_responses:
        raise PayloadError(413, f"{len(responses)} responses; the limit is {max_responses} per request")
    return question, responses


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(http_app)
class RewardModel:
    def __init__(self, settings: dict):
        from ray_app.models.registry import materialize_model
        from ray_app.reward.scorer import RewardScorer
        from ray_app.utils.devices import assigned_device

        from ray_app.utils.progress import quiet_progress_bars

        quiet_progress_bars()  # a replica's output is a log, not a terminal
        self.settings = ServeSettings(**settings)
        # The device Ray assigned to this replica: a replica with reward_num_gpus=0 stays on the CPU.
        self.scorer = RewardScorer(materialize_model(self.settings.model_path, self.settings.corpus_file), device=assigned_device())
        self._score_pair.set_max_batch_size(self.settings.max_batch_size)
        self._score_pair.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.batch_sizes: list[int] = []
        self.compute_seconds = 0.0  # time inside the scorer: with wall time, how busy the replica was

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_pair(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.batch_sizes.append(len(pairs))
        questions, responses = zip(*pairs)
        # The forward pass is synchronous; run it off the event loop so requests keep queueing.
        started = time.perf_counter()
        scores = await asyncio.get_running_loop().run_in_executor(None, self.scorer.score, list(questions), list(responses), len(pairs))
        seconds = time.perf_counter() - started
        self.compute_seconds += seconds
        metrics.reward_batch(len(pairs), seconds, self.settings.model_path)  # gsm_samples_scored, _batch_size, _latency_seconds
        return scores

    async def score(self, questions: list[str], responses: list[str]) -> dict:
        """Handle API: scores for aligned lists, with when and where they were computed."""
        if len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
        scores = await asyncio.gather(*(self._score_pair((q, r)) for q, r in zip(questions, responses)))
        return {"scores": list(scores), "scored_at": time.time(), "replica_pid": os.getpid()}

    def stats(self) -> dict:
        import torch

        return {
            "batches": len(self.batch_sizes),
            "mean_batch_size": sum(self.batch_sizes) / max(1, len(self.batch_sizes)),
            "pid": os.getpid(),
            "compute_seconds": round(self.compute_seconds, 3),
            "torch_threads": torch.get_num_threads(),
            "device": self.scorer.device,
            "scoring": self.scorer.stats.as_dict(),  # prefix sharing: tokens a pair-by-pair scorer would run vs ran
        }

    @http_app.post("/score")
    async def http_score(self, request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            # Refuse before reading a huge body into memory.
            return JSONResponse(status_code=413, content={"error": f"body is {declared} bytes; the limit is {self.settings.max_body_bytes}"})
        try:
            question, responses = validate_payload(await request.body(), self.settings.max_body_bytes, self.settings.max_responses)
        except PayloadError as e:
            return JSONResponse(status_code=e.status, content={"error": str(e)})
        scores = await asyncio.gather(*(self._score_pair((question, r)) for r in responses))
        return {"scores": list(scores)}

    @http_app.get("/healthz")
    async def healthz(self):
        return {"ok": True}


def target_ongoing_requests_for(in_flight: int, max_replicas: int) -> int:
    """The per-replica target that lets `in_flight` concurrent requests ask for `max_replicas` replicas.

    Serve's autoscaler wants ceil(total ongoing requests / target_ongoing_requests) replicas (clipped to
    [min_replicas, max_replicas]). A request here is one `score` call (one generated batch of samples, or
    one HTTP body), however many pairs it holds, and the sampler keeps at most `in_flight` of them in
    flight. With the old target, max_batch_size // 2 = 16, 8 in-flight requests asked for ceil(8/16) = 1
    replica: autoscaling could never scale up. target = max(1, in_flight // max_replicas) makes a full
    sampler load ask for the ceiling: 8 in flight, 4 replicas -> target 2 -> ceil(8/2) = 4 replicas;
    8 in flight, 3 replicas -> target 2 -> 4, clipped to 3. A lighter load (2 requests) stays on 1.
    """
    return max(1, in_flight // max(1, max_replicas))


def autoscaling_config(settings: ServeSettings) -> "dict | None":
    """Serve's own autoscaling_config for the reward deployment (None: a fixed replica count)."""
    if not settings.autoscaling:
        return None
    return {
        "min_replicas": settings.num_replicas,
        "max_replicas": settings.max_replicas,
        "target_ongoing_requests": settings.target_ongoing_requests,
        "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.downscale_delay_s,
        "look_back_period_s": settings.look_back_period_s,
        "metrics_interval_s": settings.metrics_interval_s,
    }


def deploy_reward_model(settings: ServeSettings, blocking_timeout_s: float = 300):
    """Start Serve on loopback (or `settings.host`) and deploy the reward model; returns its handle."""
    from dataclasses import asdict

    serve.start(http_options={"host": settings.host, "port": settings.port})
    actor_options = {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus}
    options = {"ray_actor_options": actor_options, "max_ongoing_requests": settings.max_ongoing_requests}
    if settings.autoscaling:
        options["autoscaling_config"] = autoscaling_config(settings)
    else:
        options["num_replicas"] = settings.num_replicas
    app = RewardModel.options(**options).bind(asdict(settings))
    handle = serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    _wait_healthy(blocking_timeout_s)
    return handle


def _wait_healthy(timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"reward model deployment failed: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"reward model not running after {timeout_s}s")


def get_reward_handle():
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
