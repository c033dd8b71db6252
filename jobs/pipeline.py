#!/usr/bin/env python
"""The whole study in one command: data -> SFT of both models -> evaluate 4 models -> sample + score the small base and SFT models -> analyse -> a report folder.

examples:
  python jobs/pipeline.py                                  # embedded tiny preset, local Ray, minutes on 2 cores
  python jobs/pipeline.py                                  # again: every stage reused, seconds
  python jobs/pipeline.py --temperature 0.9                # resamples and re-analyses; SFT and evaluation reused
  python jobs/pipeline.py --small-max-steps 200            # trains the small model on, then redoes what uses it
  python jobs/pipeline.py --storage-root s3://my-bucket/gsm
  ray job submit --working-dir . -- python jobs/pipeline.py --preset gemma3-1b --storage-root s3://my-bucket/gsm

Everything goes to <root>/pipeline/ (root: --storage-root, $RAY_APP_STORAGE_ROOT or ~/ray-app-gsm):
data/, sft/, eval/, samples/ and report/. The report folder holds Table 1 (greedy accuracy), Table 2 (scaling with n), Table 3 (failures),
the plots, the SFT loss curves, README.md and report.html with everything in one page (report.html
is self-contained: open it in a browser, offline), and pipeline_manifest.json (config of every stage,
versions, seeds, timings per stage). `python jobs/report.py --report pipeline/report` rebuilds report.html.

Rerunning is resuming: a stage whose outputs were made with the same settings is reused (and says
so), an unfinished one resumes, and a changed setting redoes only the stages it affects.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app import cli, storage  # noqa: E402
from ray_app.config import BatchPlan, default_run_name, parse_job_config, resolve_section, to_dict  # noqa: E402


def _stage(name: str, timings: dict):
    class _Timer:
        def __enter__(self):
            print(f"\n=== [{name}] ===", flush=True)
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t, 1)
            print(f"=== [{name}] {timings[name]:.0f}s ===", flush=True)

    return _Timer()


def main(argv=None) -> int:
    pcfg, args = parse_job_config("pipeline", __doc__, argv)
    return cli.run(lambda: _main(pcfg, args))


def _main(pcfg, args) -> int:
    sections = {s: resolve_section(s, args.preset, args.config, {}) for s in ("data", "sft", "eval", "sample")}

    from ray_app.data.gsm import ensure_data
    from ray_app.inference.evaluation import run_evaluation
    from ray_app.inference.sampling import run_sampling, sampling_config_settings
    from ray_app.trainer.job import train_and_report
    from ray_app.trainer.sft import sha256_of, training_settings
    from ray_app.utils.fingerprint import recorded_differences

    started = time.perf_counter()
    cli.check_engines(pcfg.engine or sections["eval"].engine, pcfg.engine or sections["sample"].engine)
    cli.start(args)
    out = pcfg.out_dir
    data_dir, report = storage.join(out, "data"), storage.join(out, "report")
    timings: dict[str, float] = {}
    # A rerun reuses every finished stage and redoes only what a changed setting affects; Ray is
    # started by the first stage that has work to do (none, on a rerun with the same settings).
    # The pipeline owns its folder: a stage it redoes is deleted only inside `out` (storage.delete's bound).

    base_sft = dataclasses.replace(sections["sft"], data_dir=data_dir, train_file=None, storage_path=storage.join(out, "sft"),
                                   export_dir=None, encode_cache_dir=None, eval_after=False, fresh_run=pcfg.fresh_run,
                                   per_device_batch_size=pcfg.per_device_batch_size or sections["sft"].per_device_batch_size,
                                   effective_batch_size=pcfg.effective_batch_size or sections["sft"].effective_batch_size)
    sft_cfgs = {
        "small": dataclasses.replace(base_sft, model=pcfg.small_model, run_name=default_run_name(pcfg.small_model),
                                     max_steps=pcfg.small_max_steps),
        "large": dataclasses.replace(base_sft, model=pcfg.large_model, run_name=default_run_name(pcfg.large_model),
                                     max_steps=pcfg.large_max_steps,
                                     per_device_batch_size=pcfg.large_per_device_batch_size or base_sft.per_device_batch_size,
                                     zero_stage=pcfg.large_zero_stage if pcfg.large_zero_stage is not None else base_sft.zero_stage),
    }
    for cfg in sft_cfgs.values():
        BatchPlan.from_config(cfg)  # batch arithmetic that does not divide stops here, before any work

    data_cfg = dataclasses.replace(sections["data"], out_dir=data_dir)
    with _stage("data", timings):
        ensure_data(data_dir, data_cfg, owned=True)

    exports = {}
    for size, cfg in sft_cfgs.items():
        with _stage(f"sft_{size}", timings):
            # The pipeline owns its runs: one whose weights-deciding settings changed (data, learning rate,
            # ...) is retrained from step 0; a longer --*-max-steps resumes it and trains on.
            changed = recorded_differences(storage.join(cfg.run_dir, "run_config.json"),
                                           training_settings(cfg, BatchPlan.from_config(cfg), sha256_of(cfg.resolved_train_file)))
            if changed and not cfg.fresh_run:
                print(f"[pipeline] SFT {size}: settings changed ({'; '.join(changed)}): retraining from step 0")
                cfg = sft_cfgs[size] = dataclasses.replace(cfg, fresh_run=True)
            exports[size] = train_and_report(cfg, out)["export_dir"]

    labels = {
        "small-base": pcfg.small_model, "small-sft": exports["small"],
        "large-base": pcfg.large_model, "large-sft": exports["large"],
    }
    eval_cfg = dataclasses.replace(
        sections["eval"], data_dir=data_dir, out_dir=storage.join(out, "eval"), limit=pcfg.eval_limit,
        models=",".join(f"{k}={v}" for k, v in labels.items()),
        max_new_tokens=pcfg.max_new_tokens or sections["eval"].max_new_tokens,
        actors_per_model=pcfg.actors_per_model or sections["eval"].actors_per_model,
        engine=pcfg.engine or sections["eval"].engine,
    )
    with _stage("evaluate", timings):
        run_evaluation(eval_cfg)

    sample_cfg = dataclasses.replace(
        sections["sample"], data_dir=data_dir, out_dir=storage.join(out, "samples"), limit=pcfg.sample_limit,
        models=f"small-base={labels['small-base']},small-sft={labels['small-sft']}", fresh_run=pcfg.fresh_run,
        max_new_tokens=pcfg.max_new_tokens or sections["sample"].max_new_tokens,
        temperature=pcfg.temperature if pcfg.temperature is not None else sections["sample"].temperature,
        num_samples=pcfg.num_samples or sections["sample"].num_samples,
        actors_per_model=pcfg.actors_per_model or sections["sample"].actors_per_model,
        engine=pcfg.engine or sections["sample"].engine,
    )
    with _stage("sample_and_score", timings):
        changed = recorded_differences(storage.join(sample_cfg.out_dir, "sampling_config.json"),
                                       sampling_config_settings(sample_cfg))
        if changed and not sample_cfg.fresh_run:
            print(f"[pipeline] sampling settings changed ({'; '.join(changed)}): sampling again")
            sample_cfg = dataclasses.replace(sample_cfg, fresh_run=True)
        sampled = run_sampling(sample_cfg, out)

    from ray_app.analysis.html_report import write_html_report
    from ray_app.analysis.report import read_samples, write_report
    from ray_app.utils.run_info import redacted, versions

    # The report is assembled in a local folder and published at the end (storage.publish_dir, any
    # root): readers never see half of it.
    with tempfile.TemporaryDirectory(prefix="ray_app_report_") as tmp:
        local = Path(tmp)
        with _stage("analyze", timings):
            analysis = write_report(read_samples(storage.join(out, "samples", "samples.parquet")), local)
        for name in ("table1_accuracy.csv", "table1_accuracy.md", "table1_differences.csv", "table1_differences.md"):
            storage.copy(storage.join(out, "eval", name), str(local / name))
        for size, cfg in sft_cfgs.items():
            curve = storage.join(cfg.run_dir, "loss_curve.png")
            if storage.exists(curve):
                storage.copy(curve, str(local / f"loss_curve_{size}.png"))
        timings["total"] = round(time.perf_counter() - started, 1)
        manifest = {
            "preset": args.preset, "config_file": args.config, "storage_root": args.storage_root,
            "config": {"pipeline": to_dict(pcfg), "data": to_dict(data_cfg), "sft": {k: to_dict(v) for k, v in sft_cfgs.items()},
                       "eval": to_dict(eval_cfg), "sample": to_dict(sample_cfg)},
            "seeds": {"data": data_cfg.seed, "sft": base_sft.seed, "sample": sample_cfg.seed},
            "config_fingerprints": {"sample": sampled["config_fingerprint"]},
            "models": labels, "timings_s": timings, "versions": versions(),
            "sampling_overlap": sampled["overlap"], "analysis": analysis["settings"],
            "files": {name: storage.join(report, Path(path).name) for name, path in analysis["paths"].items()},
        }
        storage.write_json(str(local / "pipeline_manifest.json"), redacted(manifest))
        storage.write_text(str(local / "README.md"), _report_markdown(pcfg.report_title, local, timings, labels))
        write_html_report(local, pcfg.report_title, labels)
        storage.publish_dir(local, report, args.storage_root)
    print(f"\n[pipeline] report: {storage.join(report, 'README.md')}  ({timings['total'] / 60:.1f} min)")
    return 0


def _report_markdown(title: str, report: Path, timings: dict, labels: dict) -> str:
    def read(name):
        text = (report / name).read_text()
        return text.split("\n", 2)[2] if text.count("\n") > 2 else text  # drop the file's own caption

    from ray_app.analysis.findings import findings, findings_markdown
    from ray_app.analysis.html_report import is_embedded_model

    tiny = any(is_embedded_model(str(v)) for v in labels.values())
    lines = [f"# {title}", "", "Models: " + ", ".join(f"`{k}` = `{v}`" for k, v in labels.items()), "",
             findings_markdown(findings(report, tiny)),
             "## Table 1: greedy accuracy (%) [95% Wilson CI]", "", read("table1_accuracy.md"),
             "SFT minus base (percentage points) [95% paired bootstrap CI]:", "", read("table1_differences.md"),
             "## Table 2: accuracy (%) [95% bootstrap CI] by strategy and samples per question", "",
             "Each strategy at n is averaged over all size-n subsets of the N samples; the course's first-n "
             "numbers are in [table2_first_n.md](table2_first_n.md).", "", read("table2_scaling.md"),
             "Paired differences [95% bootstrap CI]:", "", read("table2_differences.md"),
             "![accuracy vs n](accuracy_vs_n.png)", "",
             "## Table 3: failures given at least one correct sample (rates in %)", "", read("table3_failures.md"),
             "![unique answers](unique_answers_dist.png)", "",
             "Traces of every such failure: [failure_modes.txt](failure_modes.txt)", "",
             "## SFT loss", "", "![small](loss_curve_small.png) ![large](loss_curve_large.png)", "",
             "## Timings (s)", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
