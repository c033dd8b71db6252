"""The reward model as a Ray Serve deployment: a Python handle for the sampler, HTTP for people.

    POST /<app>/score  {"question": str, "responses": [str, ...]}  ->  {"scores": [float, ...]}

Each run deploys its own Serve application, named after the run (`reward_app_name`: its output
folder and settings fingerprint) and routed at `/<app>`, so runs sharing a cluster never score with
another run's model nor delete another run's app; `serving_reward_model` deletes it when the run ends.

Every (question, response) pair is one call of a `@serve.batch` method, so pairs from all callers
(sampler batches, HTTP requests) are scored together in batches of up to `max_batch_size`; within
a batch, responses to the same question share one forward pass over the prompt (see scorer.py).

A body is checked for size first (413), then parsed and validated in one step by pydantic
(`ScoreRequest.model_validate_json`, a Rust parser with a nesting limit): every malformed body gets a
4xx naming the field, and the replica keeps serving. A score that is NaN or +-inf is never answered as a
number: HTTP gets a 500 naming the response, the Python handle raises `NonFiniteScore`. Serve's health
check (`check_health`) and `GET /<app>/healthz` score one fixed pair with the model.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request annotation.

import asyncio
import dataclasses
import hashlib
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from ray import serve

from ray_app.utils import metrics

APP_PREFIX = "reward"  # every reward app is reward-...: `serve status` shows them together
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
    max_text_chars: int = 50_000  # per question or response; the scorer reads at most 2048 tokens of a pair anyway
    health_check_period_s: float = 10.0  # Serve's default: how often Serve calls check_health (one pair through the model)
    health_check_timeout_s: float = 30.0  # Serve's default: a check slower than this marks the replica unhealthy


class PayloadError(ValueError):
    """A bad /score body: `status` is the HTTP answer, `errors` pydantic's list (loc, type, msg) when it has one."""

    def __init__(self, status: int, message: str, errors: "list[dict] | None" = None):
        super().__init__(message)
        self.status = status
        self.errors = errors or []

    def content(self) -> dict:
        return {"error": str(self), "errors": self.errors} if self.errors else {"error": str(self)}


class ScoreRequest(BaseModel):
    """The body of POST /<app>/score: {"question": str, "responses": [str, ...]}.

    Strict: JSON types as they are, nothing coerced (`123` is not a string); unknown fields are refused,
    so a misspelt "response" is an error rather than silently ignored. The limits that are deployment
    settings (`max_responses`, `max_text_chars`) come in the validation context; without one only the
    fixed rules apply (a non-blank question, at least one response)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    question: str
    responses: Annotated[list[str], Field(min_length=1)]

    @field_validator("question")
    @classmethod
    def _question(cls, question: str, info: ValidationInfo) -> str:
        if not question.strip():
            raise PydanticCustomError("blank", "must not be blank")
        _check_length(question, "the question", info)
        return question

    @field_validator("responses")
    @classmethod
    def _responses(cls, responses: list[str], info: ValidationInfo) -> list[str]:
        limit = (info.context or {}).get("max_responses")
        if limit is not None and len(responses) > limit:
            raise PydanticCustomError("too_many_responses", "{count} responses; the limit is {limit} per request",
                                      {"count": len(responses), "limit": limit})
        for i, response in enumerate(responses):
            _check_length(response, f"response {i}", info)
        return responses


def _check_length(text: str, what: str, info: ValidationInfo) -> None:
    limit = (info.context or {}).get("max_text_chars")
    if limit is not None and len(text) > limit:
        raise PydanticCustomError("text_too_long", "{what} is {length} characters; the limit is {limit}",
                                  {"what": what, "length": len(text), "limit": limit})


class ScoreResponse(BaseModel):
    """The answer of POST /<app>/score: one finite score per response, in order."""

    scores: list[Annotated[float, Field(allow_inf_nan=False)]]


# Validation errors that are about size, not shape: 413 like a body over max_body_bytes.
TOO_LARGE = {"too_many_responses", "text_too_long"}
SHAPE = 'expected {"question": str, "responses": [str, ...]}'


def validate_payload(body: bytes, settings: ServeSettings) -> ScoreRequest:
    """Check and parse a /score body; raises PayloadError(status, message) naming the problem.

    413: the body or a limit is too large; 400: not JSON (empty, not UTF-8, nested deeper than the
    parser's limit, a lone surrogate escape like "\\ud800", which no UTF-8 text can hold); 422: JSON of
    the wrong shape or types (NaN and Infinity parse as numbers and are refused as not strings)."""
    if len(body) > settings.max_body_bytes:
        raise PayloadError(413, f"body is {len(body)} bytes; the limit is {settings.max_body_bytes}")
    context = {"max_responses": settings.max_responses, "max_text_chars": settings.max_text_chars}
    try:
        return ScoreRequest.model_validate_json(body, context=context)
    except ValidationError as e:
        errors = [{"loc": list(err["loc"]), "type": err["type"], "msg": err["msg"]} for err in e.errors(include_url=False)]
    if errors[0]["type"] == "json_invalid":
        raise PayloadError(400, f"body is not valid JSON: {errors[0]['msg'].removeprefix('Invalid JSON: ')}", errors)
    problems = [f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in errors]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    status = 413 if any(err["type"] in TOO_LARGE for err in errors) else 422
    raise PayloadError(status, f"{'; '.join(problems[:5])}{more}; {SHAPE}", errors[:20])


class NonFiniteScore(ValueError):
    """The reward model returned NaN or +-inf for some pairs: the model is broken, not the request.
    `indices` are the positions of those pairs in the call (the Python handle's aligned lists, or the
    HTTP body's responses), `values` their scores."""

    def __init__(self, indices: "list[int]", values: "list[float]", total: int):
        self.indices, self.values, self.total = list(indices), list(values), total
        shown = ", ".join(f"{i}: {v}" for i, v in list(zip(self.indices, self.values))[:10])
        super().__init__(f"reward model returned {len(self.indices)} non-finite score(s) of {total} "
                         f"(index: score) {shown}{' ...' if len(self.indices) > 10 else ''}")

    def __reduce__(self):  # crosses Ray's process boundary (Serve handle -> sampler) intact
        return (type(self), (self.indices, self.values, self.total))


def check_finite(scores: "list[float]") -> "list[float]":
    """`scores` unchanged when every one is a finite number; else NonFiniteScore naming the indices."""
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise NonFiniteScore(bad, [scores[i] for i in bad], len(scores))
    return scores


# The health check's input: one short pair, scored by the model every health_check_period_s.
HEALTH_QUESTION = "Tom has 2 pens and buys 3 more. How many pens does he have?"
HEALTH_RESPONSE = "2 + 3 = 5\nFinal answer: 5."


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
        # One forward pass at a time: batches run one after another anyway (serve.batch), and the health
        # check, which skips the batch queue so that a long queue cannot time it out, waits here for the
        # batch in progress instead of running beside it (twice the memory, racing the scorer's stats).
        self._model_lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.compute_seconds = 0.0  # time inside the scorer: with wall time, how busy the replica was
        self.health_checks = 0

    def _run_scorer(self, questions: list[str], responses: list[str], counted: bool = True) -> list[float]:
        with self._model_lock:
            if counted:
                return self.scorer.score(questions, responses, len(questions))
            saved = dataclasses.replace(self.scorer.stats)  # the health pair stays out of the scoring stats
            try:
                return self.scorer.score(questions, responses, len(questions))
            finally:
                self.scorer.stats = saved

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_pair(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.batch_sizes.append(len(pairs))
        questions, responses = zip(*pairs)
        # The forward pass is synchronous; run it off the event loop so requests keep queueing.
        started = time.perf_counter()
        scores = await asyncio.get_running_loop().run_in_executor(None, self._run_scorer, list(questions), list(responses))
        seconds = time.perf_counter() - started
        self.compute_seconds += seconds
        metrics.reward_batch(len(pairs), seconds, self.settings.model_path)  # gsm_samples_scored, _batch_size, _latency_seconds
        return scores

    async def score(self, questions: list[str], responses: list[str]) -> dict:
        """Handle API: scores for aligned lists, with when and where they were computed. Raises
        NonFiniteScore (naming the indices) when the model returns NaN or +-inf for any pair."""
        if len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
        scores = await asyncio.gather(*(self._score_pair((q, r)) for q, r in zip(questions, responses)))
        return {"scores": check_finite(list(scores)), "scored_at": time.time(), "replica_pid": os.getpid()}

    async def health_score(self) -> float:
        """The model's score of the fixed health pair; raises when it cannot score or the score is not finite."""
        self.health_checks += 1
        scores = await asyncio.get_running_loop().run_in_executor(None, self._run_scorer, [HEALTH_QUESTION], [HEALTH_RESPONSE], False)
        return check_finite(scores)[0]

    async def check_health(self):
        """Serve calls this every health_check_period_s (and once before a new replica takes requests):
        an exception marks the replica unhealthy and Serve replaces it."""
        await self.health_score()

    def stats(self) -> dict:
        import torch

        return {
            "batches": len(self.batch_sizes),
            "mean_batch_size": sum(self.batch_sizes) / max(1, len(self.batch_sizes)),
            "pid": os.getpid(),
            "compute_seconds": round(self.compute_seconds, 3),
            "health_checks": self.health_checks,  # each one pair through the model, outside the batches and these stats
            "torch_threads": torch.get_num_threads(),
            "device": self.scorer.device,
            "scoring": self.scorer.stats.as_dict(),  # prefix sharing: tokens a pair-by-pair scorer would run vs ran
        }

    @http_app.post("/score", response_model=ScoreResponse)
    async def http_score(self, request: Request):
        # The raw body, checked for size before anything parses it (FastAPI's own body parsing would parse first).
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            # Refuse before reading a huge body into memory.
            return JSONResponse(status_code=413, content={"error": f"body is {declared} bytes; the limit is {self.settings.max_body_bytes}"})
        try:
            payload = validate_payload(await request.body(), self.settings)
        except PayloadError as e:
            return JSONResponse(status_code=e.status, content=e.content())
        scores = await asyncio.gather(*(self._score_pair((payload.question, r)) for r in payload.responses))
        try:
            return ScoreResponse(scores=check_finite(list(scores)))
        except NonFiniteScore as e:  # the model is broken, not the request: a 5xx naming the responses
            return JSONResponse(status_code=500, content={"error": f"{e} (indices into 'responses')", "indices": e.indices})

    @http_app.get("/healthz")
    async def healthz(self):
        """200 with the model's score of the fixed health pair, or 503 with the reason it could not score it."""
        started = time.perf_counter()
        try:
            score = await self.health_score()
        except Exception as e:  # noqa: BLE001 - any failure is the answer: unhealthy, and why
            return JSONResponse(status_code=503, content={"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"})
        return {"ok": True, "health_score": score, "seconds": round(time.perf_counter() - started, 4),
                "question": HEALTH_QUESTION, "response": HEALTH_RESPONSE}


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


MAX_SLUG = 30  # app names stay <= 48 characters: reward-<slug>-<10 hex>


def reward_app_name(out_dir: str, fingerprint: str) -> str:
    """The Serve app of the run writing `out_dir` with settings `fingerprint`: `reward-<slug>-<hash>`.

    The slug (the folder's last two path parts, lowercased, [a-z0-9-]) makes `serve status` readable; the
    hash of the absolute folder and the fingerprint makes it unique: two runs get one name only when they
    write the same folder with the same settings, i.e. when it is the same run again."""
    where = str(out_dir) if "://" in str(out_dir) else os.path.abspath(os.path.expanduser(str(out_dir)))
    digest = hashlib.sha256(f"{where}\n{fingerprint}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(where.rstrip("/").split("/")[-2:]).lower()).strip("-")
    if len(slug) > MAX_SLUG:  # keep the end (it tells runs apart better than the start), from a word start
        slug = slug[-MAX_SLUG:].split("-", 1)[-1]
    return f"{APP_PREFIX}-{slug}-{digest}" if slug else f"{APP_PREFIX}-{digest}"


def route_for(app_name: str) -> str:
    """The app's HTTP route prefix: /<app name> (POST /<app name>/score)."""
    return f"/{app_name}"


def running_http_options() -> "tuple[str, int] | None":
    """(host, port) of the Serve instance running on this cluster, None when Serve is not running.

    Read from Serve's instance details (`ray.serve.schema.ServeInstanceDetails.http_options`, the same
    details `serve.status()` is built from and the REST API `GET /api/serve/applications/` returns),
    asked of the Serve controller so that no dashboard is needed."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    http = ServeInstanceDetails(**client.get_serve_details()).http_options
    return (http.host, http.port) if http is not None else None


def start_serve(host: str, port: int, log=print) -> "tuple[str, int] | None":
    """Start Serve with HTTP on host:port unless it runs; returns the (host, port) it really serves on.

    Serve's HTTP options are cluster-wide and fixed while it runs (`serve.start` silently keeps the
    running ones), so when they differ from the asked ones this says so, naming both."""
    running = running_http_options()
    if running is None:
        serve.start(http_options={"host": host, "port": port})
        running = running_http_options()
    if running is not None and tuple(running) != (host, port):
        log(f"[serve] Serve already runs on this cluster with HTTP on {running[0]}:{running[1]}; this run asked for "
            f"{host}:{port} (--serve-host/--serve-port), which is not applied: Serve's HTTP options are cluster-wide "
            f"and fixed while Serve runs (to change them: `serve shutdown`, which deletes every app). "
            f"Using {running[0]}:{running[1]}")
    return running


def score_url(app_name: str, http: "tuple[str, int] | None") -> "str | None":
    if http is None or not http[0]:
        return None
    return f"http://{http[0]}:{http[1]}{route_for(app_name)}/score"


def deploy_reward_model(settings: ServeSettings, app_name: str, blocking_timeout_s: float = 300, log=print):
    """Start Serve on loopback (or `settings.host`) and deploy the reward model as the app `app_name` at
    route /<app_name>; returns its handle. An app already deployed under this name is replaced (names
    are per run: it is this run's own, left by an earlier attempt); apps of other names are not touched."""
    from dataclasses import asdict

    start_serve(settings.host, settings.port, log)
    if app_name in serve.status().applications:
        log(f"[serve] replacing Serve app {app_name}, left by an earlier run of the same folder and settings "
            f"(one that died, or ran with --keep-serving)")
        serve.delete(app_name)
    actor_options = {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus}
    options = {"ray_actor_options": actor_options, "max_ongoing_requests": settings.max_ongoing_requests,
               "health_check_period_s": settings.health_check_period_s, "health_check_timeout_s": settings.health_check_timeout_s}
    if settings.autoscaling:
        options["autoscaling_config"] = autoscaling_config(settings)
    else:
        options["num_replicas"] = settings.num_replicas
    app = RewardModel.options(**options).bind(asdict(settings))
    handle = serve.run(app, name=app_name, route_prefix=route_for(app_name), blocking=False)
    _wait_healthy(app_name, blocking_timeout_s)
    return handle


def _wait_healthy(app_name: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"reward model deployment (Serve app {app_name}) failed: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"reward model (Serve app {app_name}) not running after {timeout_s}s")


def get_reward_handle(app_name: str):
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)


def delete_reward_app(app_name: str, log=print) -> bool:
    """Delete the Serve app `app_name` (and only it); on failure say how to do it by hand."""
    try:
        if app_name in serve.status().applications:  # not there: the deploy never got as far
            serve.delete(app_name)
        return True
    except Exception as e:  # noqa: BLE001 - called from `finally`: must not hide the run's own error
        log(f"[serve] could not delete Serve app {app_name} ({type(e).__name__}: {str(e)[:200]}); its replicas may "
            f"still hold their resources: {delete_hint(app_name)}")
        return False


def delete_hint(app_name: str) -> str:
    return (f"delete it with `serve delete {app_name}` (add `-a http://<head>:8265` for a remote cluster) or "
            f"`python -c \"import ray; from ray import serve; ray.init(address='auto'); serve.delete('{app_name}')\"`")


@dataclass
class RewardApp:
    """A deployed reward app: its Serve name and route, the URL it answers on, and its handle."""

    name: str
    route: str
    url: "str | None"
    handle: object

    def manifest(self) -> dict:
        return {"app": self.name, "deployment": DEPLOYMENT_NAME, "route": self.route, "url": self.url}


@contextmanager
def serving_reward_model(settings: ServeSettings, app_name: str, keep: bool = False, log=print,
                         blocking_timeout_s: float = 300):
    """Deploy the reward model as `app_name` for the `with` block; delete the app when the block ends,
    on errors and Ctrl-C too (Serve apps are detached: nothing else would free their replicas). With
    `keep`, a healthy app stays up and the log says how to delete it."""
    deployed = False
    try:
        handle = deploy_reward_model(settings, app_name, blocking_timeout_s, log)
        deployed = True
        # After the deploy: Serve runs now, with the HTTP options it was first started with.
        app = RewardApp(app_name, route_for(app_name), score_url(app_name, running_http_options()), handle)
        yield app
    finally:
        if keep and deployed:
            log(f"[serve] --keep-serving: Serve app {app_name} stays up; {delete_hint(app_name)}")
        else:
            delete_reward_app(app_name, log)
