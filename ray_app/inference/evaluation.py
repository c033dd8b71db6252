"""Greedy evaluation of several models on the three test sets (Table 1), on Ray Data actors."""

from __future__ import annotations

import io
import time
from dataclasses import asdict

from ray_app.analysis.report import to_markdown
from ray_app.analysis.estimators import (
    bootstrap_indices,
    paired_difference,
    sft_base_pairs,
    stable_seed,
    wilson_interval,
)
from ray_app.config import EvalConfig
from ray_app.data.gsm import manifest_sha256
from ray_app.data.prompts import has_final_answer_line
from ray_app.inference.actors import generate_rows, generation_actor_gpus, question_rows
from ray_app.utils.engines import engine_settings
from ray_app import storage
from ray_app.models.registry import model_identity, parse_model_specs
from ray_app.utils.fingerprint import fingerprint
from ray_app.utils.run_info import redacted, versions

TABLE1_COLUMNS = {
    "gsm_symbolic_test": "gsm-symbolic",
    "gsm8k_same_templates": "gsm8k-same_templates",
    "gsm8k_non_overlapping": "gsm8k-non_overlapping",
}


def table1(predictions) -> "tuple[object, object]":
    """(csv frame, markdown frame): rows models, columns test sets, accuracy % with 95% Wilson CI and
    the share of answers in the trained format ('Final answer: N.')."""
    import pandas as pd

    numeric, pretty = [], []
    for model, g in predictions.groupby("model", sort=False):
        row_n, row_p = {"model": model}, {"model": model}
        for split, column in TABLE1_COLUMNS.items():
            part = g[g["dataset"] == split]
            if part.empty:
                continue
            k, n = int(part["correct"].sum()), len(part)
            formatted = int(part["final_answer_format"].sum())
            low, high = wilson_interval(k, n)
            row_n.update({column: 100 * k / n, f"{column}_ci_low": 100 * low, f"{column}_ci_high": 100 * high, f"{column}_n": n,
                          f"{column}_format": 100 * formatted / n})
            # On tiny models the answer format is the effect SFT can show, so it sits beside the accuracy.
            row_p[column] = f"{100 * k / n:.1f} [{100 * low:.1f}, {100 * high:.1f}]; format {formatted}/{n}"
        numeric.append(row_n)
        pretty.append(row_p)
    return pd.DataFrame(numeric), pd.DataFrame(pretty)


def table1_differences(predictions, resamples: int = 2000, seed: int = 0):
    """SFT minus base (percentage points) per test set, on the same questions, with a paired bootstrap
    interval; pairs are found by label ('small-sft' with 'small-base', see `sft_base_pairs`)."""
    import pandas as pd

    rows = []
    correct = predictions.pivot_table(index=["dataset", "question_id"], columns="model", values="correct", aggfunc="first")
    for sft, base in sft_base_pairs(list(dict.fromkeys(predictions["model"]))):
        for split, column in TABLE1_COLUMNS.items():
            if split not in correct.index.get_level_values(0):
                continue
            both = correct.loc[split][[sft, base]].dropna().astype(float)
            idx = bootstrap_indices(len(both), resamples, stable_seed(seed, split, len(both)))
            d = paired_difference(both[sft].to_numpy(), both[base].to_numpy(), idx)
            rows.append({"comparison": f"{sft} - {base}", "test_set": column, "difference": 100 * d["difference"],
                         "ci_low": 100 * d["ci_low"], "ci_high": 100 * d["ci_high"], "questions": len(both)})
    return pd.DataFrame(rows, columns=["comparison", "test_set", "difference", "ci_low", "ci_high", "questions"])


def model_eval_settings(cfg: EvalConfig, label: str, model: str, splits: list[str], data_sha: str | None) -> dict:
    """What decides one model's greedy answers (how the work is spread does not)."""
    return {"label": label, "model": model_identity(model), "datasets": splits, "limit": cfg.limit,
            "max_new_tokens": cfg.max_new_tokens, "data_manifest_sha256": data_sha, "decoding": "greedy",
            **engine_settings(cfg.engine, do_sample=False)}


def run_evaluation(cfg: EvalConfig, log=print) -> dict:
    import pandas as pd

    started = time.perf_counter()
    engine = engine_settings(cfg.engine, do_sample=False)  # vLLM asked for but missing: stop here, before any work
    splits = [s.strip() for s in cfg.datasets.split(",") if s.strip()]
    rows = question_rows(cfg.data_dir, splits, cfg.limit)
    corpus = storage.join(cfg.data_dir, "gsm_symbolic_train.jsonl")
    out = cfg.out_dir
    num_gpus = None  # asked of the cluster only when a model has to generate
    frames, seconds, reused = [], {}, []
    data_sha = manifest_sha256(cfg.data_dir)
    for label, model in parse_model_specs(cfg.models):
        # One part per model, named by what decides its answers: a rerun reuses every model whose part is
        # there (an unchanged model), and regenerates only the others (a retrained one, a new limit).
        part = storage.join(out, "parts", f"{label}-{fingerprint(model_eval_settings(cfg, label, model, splits, data_sha))}.parquet")
        if storage.exists(part):
            frame = pd.read_parquet(storage.local_copy(part))
            reused.append(label)
            log(f"[eval] {label}: reusing {len(frame)} greedy answers from {part} (same model, questions and budget)")
        else:
            t = time.perf_counter()
            if num_gpus is None:
                num_gpus = generation_actor_gpus(cfg, log)
            ds = generate_rows(cfg.engine, rows, label, model, corpus, {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size},
                               cfg.batch_size, cfg.actors_per_model, num_gpus)
            frame = ds.to_pandas().sort_values(["dataset", "question_id"], kind="stable").reset_index(drop=True)
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            storage.write_bytes(part, buffer.getvalue())
            seconds[label] = time.perf_counter() - t
            log(f"[eval] {label}: {len(frame)} greedy answers in {seconds[label]:.0f}s ({engine.get('engine', 'hf generate')}), "
                f"accuracy {100 * frame['correct'].mean():.1f}%")
        frames.append(frame)
    predictions = pd.concat(frames, ignore_index=True).sort_values(["model", "dataset", "question_id"], kind="stable")
    predictions = predictions.drop(columns=["sample_idx", "generation_started_at", "generated_at"])
    predictions["final_answer_format"] = predictions["response"].map(has_final_answer_line)
    storage.write_jsonl(storage.join(out, "predictions.jsonl"), predictions.to_dict(orient="records"))
    numeric, pretty = table1(predictions)
    storage.write_text(storage.join(out, "table1_accuracy.csv"), numeric.to_csv(index=False, float_format="%.2f"))
    storage.write_text(storage.join(out, "table1_accuracy.md"), "Greedy accuracy (%) [95% Wilson CI; one answer per question, "
                       "questions independent]; format: answers ending 'Final answer: N.'\n\n" + to_markdown(pretty))
    diffs = table1_differences(predictions, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    storage.write_text(storage.join(out, "table1_differences.csv"), diffs.to_csv(index=False, float_format="%.4f"))
    storage.write_text(storage.join(out, "table1_differences.md"), "SFT minus base, percentage points [95% paired bootstrap CI over "
                       f"the same questions, {cfg.bootstrap_resamples} resamples, seed {cfg.bootstrap_seed}]\n\n"
                       + (to_markdown(diffs) if len(diffs) else "(no SFT/base pair of labels to compare, e.g. small-sft and small-base)\n"))
    settings = {"models": {label: model_identity(m) for label, m in parse_model_specs(cfg.models)}, "datasets": splits,
                "limit": cfg.limit, "max_new_tokens": cfg.max_new_tokens,
                "data_manifest_sha256": manifest_sha256(cfg.data_dir), "engine": engine.get("engine", "hf")}
    summary = {"config": asdict(cfg), "settings": settings, "config_fingerprint": fingerprint(settings), "rows": len(predictions),
               "reused_models": reused, "seconds": {**seconds, "total": time.perf_counter() - started},
               "num_gpus_per_actor": num_gpus, "versions": versions()}
    storage.write_json(storage.join(out, "eval_manifest.json"), redacted(summary))
    log(to_markdown(pretty))
    if len(diffs):
        log(to_markdown(diffs))
    log(f"[eval] done: {len(predictions)} predictions, Table 1 -> {storage.join(out, 'table1_accuracy.md')} (and .csv, predictions.jsonl)")
    return {"predictions": predictions, "table1": numeric, "paths": {"table1_csv": storage.join(out, "table1_accuracy.csv")}, **summary}

