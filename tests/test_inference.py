"""Evaluation on Ray Data actors, sampling streamed into a real Ray Serve reward model, its HTTP API,
resume and a reward replica killed mid-run. Everything runs on a real local Ray cluster."""

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import run_job

MODELS = "small=tiny-gemma3-small,large=tiny-gemma3-large"


def test_evaluate_writes_predictions_and_table1(full_data, tmp_path):
    out = tmp_path / "eval"
    run_job("evaluate.py", "--data-dir", str(full_data), "--models", MODELS, "--limit", "6", "--max-new-tokens", "48",
            "--out-dir", str(out), timeout=900)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * 3 * 6
    assert {(p["model"], p["dataset"]) for p in preds} == {(m, d) for m in ("small", "large")
                                                          for d in ("gsm_symbolic_test", "gsm8k_same_templates", "gsm8k_non_overlapping")}
    for p in preds:
        assert p["correct"] == (p["pred"] == p["gold"]) and p["finish_reason"] in ("stop", "length")
    header, *rows = (out / "table1_accuracy.csv").read_text().splitlines()
    cols = header.split(",")
    assert cols[:2] == ["model", "gsm-symbolic"] and "gsm8k-same_templates" in cols and "gsm8k-non_overlapping_ci_high" in cols
    assert [r.split(",")[0] for r in rows] == ["large", "small"]
    for r in rows:
        values = dict(zip(cols, r.split(",")))
        for c in ("gsm-symbolic", "gsm8k-same_templates", "gsm8k-non_overlapping"):
            acc, low, high = float(values[c]), float(values[f"{c}_ci_low"]), float(values[f"{c}_ci_high"])
            assert 0 <= low <= acc <= high <= 100 and high - low > 10  # 6 questions: a wide interval, shown
            assert 0 <= float(values[f"{c}_format"]) <= 100
    formatted = {m: sum(p["final_answer_format"] for p in preds if p["model"] == m and p["dataset"] == "gsm_symbolic_test")
                 for m in ("small", "large")}
    md = (out / "table1_accuracy.md").read_text()
    assert "| model | gsm-symbolic | gsm8k-same_templates | gsm8k-non_overlapping |" in md
    for m, k in formatted.items():
        assert f"| {m} | " in md and f"format {k}/6" in md.split(f"| {m} | ")[1].split("\n")[0]


def test_sample_and_score_streams_resumes_and_analyzes(full_data, tmp_path):
    out = tmp_path / "samples"
    args = ["--data-dir", str(full_data), "--models", MODELS, "--limit", "6", "--num-samples", "4", "--max-new-tokens", "40",
            "--questions-per-batch", "2", "--out-dir", str(out), "--serve-port", "8311"]
    run_job("sample.py", *args, timeout=900)
    import pandas as pd

    df = pd.read_parquet(out / "samples.parquet")
    assert len(df) == 2 * 6 * 4  # models x questions x N
    assert df["reward"].notna().all() and df["reward"].map(lambda r: isinstance(r, float)).all()
    assert not df.duplicated(["model", "question_id", "sample_idx"]).any()
    assert sorted(df["sample_idx"].unique()) == [0, 1, 2, 3]
    for col in ("model", "dataset", "question_id", "sample_idx", "question", "response", "pred", "gold", "correct",
                "reward", "num_tokens", "finish_reason"):
        assert col in df.columns
    m = json.loads((out / "sample_manifest.json").read_text())
    assert m["overlap"]["first_score_before_last_generation"] is True, m["overlap"]
    assert m["scored_this_run"] == 48 and m["reward_batching"]["mean_batch_size"] > 1
    jsonl_rows = (out / "samples.jsonl").read_text().splitlines()
    assert len(jsonl_rows) == 48
    assert "scored_at" not in json.loads(jsonl_rows[0]) and len((out / "sample_timings.jsonl").read_text().splitlines()) == 48
    first_bytes = (out / "samples.jsonl").read_bytes()

    # Resume: a finished run is reused (no reward model deployed, nothing generated); lost parts are
    # regenerated alone, nothing scored twice.
    proc = run_job("sample.py", *args, timeout=900)
    assert "every (model, question) pair is already scored with these settings: reusing the 48 samples" in proc.stdout
    assert "serving as Serve app" not in proc.stdout and (out / "samples.jsonl").read_bytes() == first_bytes
    lost = sorted((out / "parts").glob("*-small-*.jsonl"))[:2]  # parts are named FINGERPRINT-LABEL-KEY
    lost_rows = sum(len(p.read_text().splitlines()) for p in lost)
    assert lost_rows == 2 * 2 * 4  # two batches of 2 questions x N
    for part in lost:
        part.unlink()
    # The resume batches the 4 lost questions by 3 (3 + 1, where the first run had 2 + 2): seeds are per
    # question, so other batches draw the same samples, byte for byte.
    run_job("sample.py", *args, "--questions-per-batch", "3", timeout=900)
    m = json.loads((out / "sample_manifest.json").read_text())
    assert m["scored_this_run"] == lost_rows and m["rows"] == 48 and m["resumed_pairs"] == 12 - lost_rows // 4
    # The resumed run regenerated the lost questions exactly and left every finished one as it was.
    assert (out / "samples.jsonl").read_bytes() == first_bytes

    # The analysis job reads these real samples (Table 2 by n).
    report = tmp_path / "report"
    run_job("analyze.py", "--samples", str(out / "samples.parquet"), "--out", str(report), "--ns", "1,2,4")
    assert (report / "table2_scaling.csv").read_text().splitlines()[0] == "model,dataset,strategy,n=1,n=2,n=4"


# ----------------------------------------------------------------------------------------------
# In-process Serve: HTTP API and a replica killed mid-run
# ----------------------------------------------------------------------------------------------

PORT = 8321
APP = "reward-http-test"  # an app of its own: sampling runs on this cluster deploy theirs beside it


@pytest.fixture(scope="module")
def serve_cluster(full_data):
    import ray
    from ray import serve

    from ray_app.models.registry import resolve_model_path
    from ray_app.reward.serve_app import ServeSettings, deploy_reward_model
    from ray_app.utils.ray_init import init_ray

    init_ray()
    path = resolve_model_path("tiny-llama-reward", corpus_file=str(full_data / "gsm_symbolic_train.jsonl"))
    deploy_reward_model(ServeSettings(model_path=path, port=PORT, max_body_bytes=100_000, max_responses=64, max_text_chars=20_000,
                                      num_cpus=0.5), APP)
    yield path
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def direct_scorer(serve_cluster):
    """The served reward model loaded in this process: what the endpoint's scores must equal."""
    from ray_app.reward.scorer import RewardScorer

    return RewardScorer(serve_cluster)


URL = f"http://127.0.0.1:{PORT}/{APP}/score"


def test_http_good_request(serve_cluster):
    r = requests.post(URL, json={"question": "Tom has 2 pens and buys 3. How many?", "responses": ["2+3=5\nFinal answer: 5.", "I think 7", "5"]}, timeout=60)
    assert r.status_code == 200
    scores = r.json()["scores"]
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores) and len(set(scores)) == 3


def test_http_scores_match_the_scorer_run_directly(serve_cluster, direct_scorer):
    q, rs = "What is 6 x 7?", ["6 x 7 = 42\nFinal answer: 42.", "Final answer: 41."]
    direct = direct_scorer.score([q, q], rs)
    served = requests.post(URL, json={"question": q, "responses": rs}, timeout=60).json()["scores"]
    assert served == pytest.approx(direct, abs=1e-5)


def _body(**fields) -> bytes:
    return json.dumps(fields).encode()


# Hostile bodies: each gets a 4xx whose "error" names the problem (pydantic's field path), and the replica
# keeps serving. The fixture's limits: 100,000 bytes, 64 responses, 20,000 characters per text.
HOSTILE = [
    pytest.param(b'{"question": "q", "responses": ["a"', 400, "not valid JSON", id="truncated-json"),
    pytest.param(b"", 400, "not valid JSON: EOF", id="empty-body"),
    pytest.param(b"   \n", 400, "not valid JSON: EOF", id="whitespace-body"),
    pytest.param(b'{"question": "q\xff\xfe", "responses": ["a"]}', 400, "invalid unicode code point", id="non-utf8"),
    # A lone surrogate parses in Python's json but is no Unicode text (it cannot be encoded to UTF-8 for the tokenizer).
    pytest.param(b'{"question": "q\\ud800", "responses": ["a"]}', 400, "not valid JSON", id="lone-surrogate"),
    # Nested deeper than the parser's limit (~200), inside a field and at the top: 400, not a RecursionError 500.
    pytest.param(b'{"question": "q", "responses": ' + b"[" * 40_000 + b"]" * 40_000 + b"}", 400, "recursion limit exceeded",
                 id="deep-nesting-in-field"),
    pytest.param(b"[" * 49_000 + b"]" * 49_000, 400, "recursion limit exceeded", id="deep-nesting-top"),
    pytest.param(b'{"q": ' * 10_000 + b"1" + b"}" * 10_000, 400, "recursion limit exceeded", id="deep-nesting-objects"),
    pytest.param(b'["q", "a"]', 422, "body: Input should be an object", id="top-level-array"),
    pytest.param(b"null", 422, "body: Input should be an object", id="null"),
    pytest.param(b'"q"', 422, "body: Input should be an object", id="top-level-string"),
    pytest.param(b'{"responses": ["a"]}', 422, "question: Field required", id="missing-question"),
    pytest.param(b'{"question": "q"}', 422, "responses: Field required", id="missing-responses"),
    pytest.param(_body(question=123, responses=["a"]), 422, "question: Input should be a valid string", id="question-int"),
    pytest.param(_body(question=["q"], responses=["a"]), 422, "question: Input should be a valid string", id="question-list"),
    pytest.param(_body(question="  ", responses=["a"]), 422, "question: must not be blank", id="question-blank"),
    pytest.param(b'{"question": NaN, "responses": ["a"]}', 422, "question: Input should be a valid string", id="nan-literal"),
    pytest.param(b'{"question": "q", "responses": [Infinity, "a"]}', 422, "responses.0: Input should be a valid string",
                 id="infinity-literal"),
    pytest.param(_body(question="q", responses="a"), 422, "responses: Input should be a valid array", id="responses-string"),
    pytest.param(_body(question="q", responses={"0": "a"}), 422, "responses: Input should be a valid array", id="responses-object"),
    pytest.param(_body(question="q", responses=None), 422, "responses: Input should be a valid array", id="responses-null"),
    pytest.param(_body(question="q", responses=[]), 422, "responses: List should have at least 1 item", id="responses-empty"),
    pytest.param(_body(question="q", responses=["a", 2]), 422, "responses.1: Input should be a valid string", id="responses-int"),
    pytest.param(_body(question="q", responses=[["a"]]), 422, "responses.0: Input should be a valid string", id="responses-nested"),
    pytest.param(_body(question="q", responses=["a"], response=["b"]), 422, "response: Extra inputs are not permitted",
                 id="extra-field"),
    pytest.param(_body(question="q", responses=["x" * 200_000]), 413, "limit is 100000", id="huge-body"),
    pytest.param(_body(question="q", responses=["a"] * 65), 413, "65 responses; the limit is 64", id="too-many-responses"),
    pytest.param(_body(question="q", responses=["a", "x" * 20_001]), 413, "response 1 is 20001 characters; the limit is 20000",
                 id="response-too-long"),
    pytest.param(_body(question="q" * 20_001, responses=["a"]), 413, "the question is 20001 characters", id="question-too-long"),
]


@pytest.mark.parametrize("body, status, message", HOSTILE)
def test_http_bad_payloads_get_4xx_and_the_server_keeps_serving(serve_cluster, body, status, message):
    r = requests.post(URL, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    ok = requests.post(URL, json={"question": "q", "responses": ["a"]}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 1


def test_http_payload_100k_deep_is_a_400_not_a_recursion_error():
    """The old json.loads check raised RecursionError (a 500) here; pydantic's parser stops at its depth limit."""
    from ray_app.reward.serve_app import PayloadError, ServeSettings, validate_payload

    body = b'{"question": "q", "responses": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(PayloadError, match="recursion limit exceeded") as e:
        validate_payload(body, ServeSettings(model_path="unused", max_body_bytes=1_000_000))
    assert e.value.status == 400


def test_http_128_concurrent_requests_all_succeed_with_the_one_by_one_scores(serve_cluster, direct_scorer):
    from concurrent.futures import ThreadPoolExecutor

    questions = [f"Ann has {a} apples and buys {a + 1} more. How many apples?" for a in range(2, 10)]
    answers = ["{s}\nFinal answer: {s}.", "I think {w}.", "Final answer: {w}.", "{a} + {b} = {s}"]
    pairs = {}  # (question index, answer index) -> (question, response)
    for qi, q in enumerate(questions):
        a, b = qi + 2, qi + 3
        for ai, template in enumerate(answers):
            pairs[qi, ai] = (q, template.format(a=a, b=b, s=a + b, w=a + b + 1))
    one_by_one = {key: direct_scorer.score([q], [r])[0] for key, (q, r) in pairs.items()}
    requests_ = [(k % 8, [(k + j) % 4 for j in range(1 + k % 3)]) for k in range(128)]  # 1-3 responses each
    start = threading.Barrier(len(requests_))

    def post(req):
        qi, ais = req
        start.wait(timeout=60)  # all 128 in flight together
        return requests.post(URL, json={"question": questions[qi], "responses": [pairs[qi, ai][1] for ai in ais]}, timeout=120)

    with ThreadPoolExecutor(len(requests_)) as pool:
        answered = list(pool.map(post, requests_))
    assert [r.status_code for r in answered] == [200] * 128, [r.text for r in answered if r.status_code != 200][:3]
    for (qi, ais), r in zip(requests_, answered):
        assert r.json()["scores"] == pytest.approx([one_by_one[qi, ai] for ai in ais], abs=1e-5)


def test_health_check_runs_the_model_on_the_fixed_pair(serve_cluster, direct_scorer):
    from ray_app.reward.serve_app import HEALTH_QUESTION, HEALTH_RESPONSE, get_reward_handle

    r = requests.get(f"http://127.0.0.1:{PORT}/{APP}/healthz", timeout=60)
    assert r.status_code == 200, r.text
    health = r.json()
    assert health["ok"] is True and (health["question"], health["response"]) == (HEALTH_QUESTION, HEALTH_RESPONSE)
    assert health["health_score"] == pytest.approx(direct_scorer.score([HEALTH_QUESTION], [HEALTH_RESPONSE])[0], abs=1e-5)
    stats = get_reward_handle(APP).stats.remote().result(timeout_s=60)
    assert stats["health_checks"] >= 2  # Serve's check before the replica took requests, and this /healthz


def _replica_with_scorer(scores_by_response: dict):
    """The deployment's class, built without Serve or a model: its scorer answers `scores_by_response`."""
    from ray_app.reward.scorer import ScoringStats
    from ray_app.reward.serve_app import RewardModel, ServeSettings

    class FakeScorer:
        stats = ScoringStats()
        device = "cpu"

        def score(self, questions, responses, batch_size=32):
            return [scores_by_response[r] for r in responses]

    cls = next(c for c in RewardModel.func_or_class.__mro__ if "check_health" in vars(c))  # ours, not Serve's ASGI wrapper
    replica = cls.__new__(cls)
    replica.settings, replica.scorer = ServeSettings(model_path="fake"), FakeScorer()
    replica._model_lock, replica.batch_sizes, replica.compute_seconds, replica.health_checks = threading.Lock(), [], 0.0, 0

    async def score_pair(pair):  # Serve's batching needs a replica; the batch method only calls the scorer
        return replica._run_scorer([pair[0]], [pair[1]])[0]

    replica._score_pair = score_pair
    return replica


def test_http_and_handle_never_answer_a_non_finite_score():
    import asyncio
    import pickle

    from ray.exceptions import RayTaskError
    from starlette.requests import Request

    from ray_app.reward.serve_app import HEALTH_RESPONSE, NonFiniteScore

    replica = _replica_with_scorer({"good": 1.5, "nan": float("nan"), "inf": float("inf"), HEALTH_RESPONSE: float("-inf")})

    async def post(body: bytes):
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        return await replica.http_score(Request({"type": "http", "method": "POST", "headers": []}, receive))

    async def drive():
        assert (await replica.score(["q"], ["good"]))["scores"] == [1.5]
        with pytest.raises(NonFiniteScore) as raised:  # the handle path the sampler calls
            await replica.score(["q"] * 4, ["good", "nan", "good", "inf"])
        http = await post(_body(question="q", responses=["good", "inf"]))
        healthz = await replica.healthz()
        with pytest.raises(NonFiniteScore):
            await replica.check_health()  # Serve marks the replica unhealthy and replaces it
        return raised.value, http, healthz

    error, http, healthz = asyncio.run(drive())
    assert error.indices == [1, 3] and "1: nan, 3: inf" in str(error)
    # Through Ray (handle -> sampler) the exception keeps its type and indices.
    crossed = pickle.loads(pickle.dumps(RayTaskError("score", "traceback", error))).as_instanceof_cause()
    assert isinstance(crossed, NonFiniteScore) and crossed.indices == [1, 3]
    assert http.status_code == 500 and json.loads(http.body)["indices"] == [1]
    assert "1: inf" in json.loads(http.body)["error"]
    assert healthz.status_code == 503 and "NonFiniteScore" in json.loads(healthz.body)["error"]


def test_http_binds_to_loopback_only(serve_cluster):
    import psutil

    listeners = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == PORT]
    assert listeners and all(c.laddr.ip in ("127.0.0.1", "::1") for c in listeners)


def test_killed_reward_replica_loses_no_score(serve_cluster, full_data, tmp_path):
    """A reward replica is killed while samples stream in; every sample still gets exactly one score."""
    import ray

    from ray import serve

    from ray_app.config import SampleConfig
    from ray_app.inference.sampling import run_app_name, run_sampling
    from ray_app.reward.serve_app import reward_app_name
    from ray_app.utils.fingerprint import fingerprint

    # 2 CPUs: the HTTP tests' app (0.5), this run's 2 replicas (0.25 each) and its generation actor (1).
    cfg = SampleConfig(models="small=tiny-gemma3-small", data_dir=str(full_data), limit=16, num_samples=4, max_new_tokens=40,
                       questions_per_batch=2, out_dir=str(tmp_path / "samples"), serve_port=PORT, reward_replicas=2,
                       reward_num_cpus=0.25, reward_max_batch_size=8)
    run_app = run_app_name(cfg)  # the run's own Serve app
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(run_sampling(cfg, log=lambda *a: None)), daemon=True)
    worker.start()
    parts = Path(cfg.out_dir) / "parts"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(parts.glob("*.jsonl"))) < 2:
        time.sleep(0.2)
    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and "REPLICA" in a["name"].upper() and f"{run_app}#RewardModel" in a["name"]]
    assert len(replicas) == 2, replicas
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    killed_at = time.time()
    worker.join(timeout=900)
    assert not worker.is_alive() and result, "sampling did not finish"
    df = result["samples"]
    assert len(df) == 16 * 4 and df["reward"].notna().all()
    assert not df.duplicated(["model", "question_id", "sample_idx"]).any()
    assert (df["scored_at"] > killed_at).any(), "nothing was scored after the kill: the drill came too late"
    assert result["reward_serving"]["app"] == run_app
    apps = serve.status().applications
    assert run_app not in apps and APP in apps, list(apps)  # the run deleted its own app and only it
