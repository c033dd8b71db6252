#!/usr/bin/env python
"""Cold data build: time per stage, the slowest templates, and drawing vs the package's enumeration.

examples:
  python bench/data_build.py                       # two cold builds (empty template cache), no Ray
  python bench/data_build.py --use-ray             # the templates on Ray tasks, as prepare_data.py runs them
  python bench/data_build.py --compare 3           # also: the package's enumeration vs our draws, 3 templates

A cold build is the default data build (4,500 training rows from the 100 templates, the bundled GSM8K
test split) with an empty template cache, as on a fresh machine. It runs twice, each in a fresh
folder and cache, and the two must be byte-identical. `--compare K` times, in this process, the
package's `generate_questions` (which enumerates every combination of a template's values before
drawing) against `draw_instances` on the K slowest templates of the build whose enumeration is
affordable, and prints the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_app.config import DEFAULT_PRESET, resolve_section  # noqa: E402
from ray_app.data import gsm  # noqa: E402


def cold_build(cfg, use_ray: bool) -> tuple[float, dict, dict]:
    """One build into a fresh folder with an empty cache: (seconds, {file: sha256}, timings)."""
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        out, cache = Path(tmp, "data"), Path(tmp, "cache")
        started = time.perf_counter()
        gsm.build_from_config(cfg.__class__(**{**cfg.__dict__, "out_dir": str(out), "cache_dir": str(cache), "use_ray": use_ray}))
        seconds = time.perf_counter() - started
        hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.name != gsm.TIMINGS_FILE}
        timings = json.loads((out / gsm.TIMINGS_FILE).read_text())
        draws = {str(p.stem.split("-")[0].lstrip("0") or "0"): json.loads(p.read_text())["draw"] for p in cache.glob("*.json")}
        return seconds, hashes, {**timings, "draws": draws}


def compare(ids: list[int], max_combinations: int) -> None:
    from random import Random

    from multilingual_gsm_symbolic import load_replacements

    templates = {t.id_orig: t for t in gsm.load_templates()}
    pool = 2 * (45 + 1) + 20
    print(f"\nThe package's enumeration vs draw_instances, {pool} instances per template, same process:")
    print(f"{'template':>8} {'combinations':>13} {'enumerate s':>12} {'draw s':>8} {'method':>12} {'speed-up':>9}")
    for id_orig in ids:
        annotated = gsm._parse(templates[id_orig])
        replacements = load_replacements(annotated.language)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            _, report = gsm.draw_instances(annotated, pool, Random(1), replacements)
            drawn = time.perf_counter() - t
            if report.combinations > max_combinations:
                print(f"{id_orig:>8} {report.combinations:>13,} {'(skipped)':>12} {drawn:>8.2f} {report.method:>12}")
                continue
            t = time.perf_counter()
            annotated.generate_questions(pool, replacements=replacements, seed=1, verbose=False)
            enumerated = time.perf_counter() - t
        print(f"{id_orig:>8} {report.combinations:>13,} {enumerated:>12.2f} {drawn:>8.2f} {report.method:>12} {enumerated / drawn:>8.1f}x")


def main(argv=None) -> int:
    description, _, epilog = __doc__.strip().partition("\n\n")
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--use-ray", action="store_true", help="instantiate templates on Ray tasks (starts a local Ray)")
    parser.add_argument("--builds", type=int, default=2, help="cold builds to run and compare byte for byte [default: 2]")
    parser.add_argument("--slowest", type=int, default=8, help="slowest templates to list [default: 8]")
    parser.add_argument("--compare", type=int, default=0, metavar="K",
                        help="time the package's enumeration against our draws on the K slowest templates [default: 0]")
    parser.add_argument("--max-combinations", type=int, default=3_000_000,
                        help="--compare skips templates with more combinations than this (enumeration takes minutes)")
    args = parser.parse_args(argv)
    if args.builds < 1:
        parser.error("--builds must be >= 1")
    cfg = resolve_section("data", DEFAULT_PRESET, None, {})
    if args.use_ray:
        from ray_app.utils.ray_init import init_ray

        init_ray()
    print(f"Cold data build ({cfg.train_size} training rows, GSM8K source '{cfg.gsm8k_source}', "
          f"{'Ray tasks' if args.use_ray else 'one process'}, empty template cache):")
    results = []
    for i in range(args.builds):
        seconds, hashes, timings = cold_build(cfg, args.use_ray)
        results.append(hashes)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in timings["seconds"].items())
        print(f"  build {i + 1}: {seconds:.1f}s  ({stages})")
    identical = all(r == results[0] for r in results)
    print(f"  {len(results)} builds byte-identical: {identical} (manifest sha256 {results[0]['manifest.json'][:16]})")
    draws = timings["draws"]
    methods = {}
    for d in draws.values():
        methods[d["method"]] = methods.get(d["method"], 0) + 1
    print(f"  templates by method: {methods}; combinations checked: {sum(d['draws'] for d in draws.values()):,}")
    slowest = sorted(timings["template_seconds"].items(), key=lambda kv: -kv[1])[: args.slowest]
    print(f"\nSlowest templates (last build):\n{'template':>8} {'seconds':>8} {'method':>12} {'combinations':>13} {'draws':>9} {'accepted':>9}")
    for id_orig, s in slowest:
        d = draws.get(str(id_orig), {})
        print(f"{id_orig:>8} {s:>8.2f} {d.get('method', '?'):>12} {d.get('combinations', 0):>13,} {d.get('draws', 0):>9,} {d.get('accepted', 0):>9,}")
    if args.compare:
        compare([int(i) for i, _ in slowest[: args.compare]], args.max_combinations)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
