"""Progress that reads well both in a terminal and in `ray job logs`.

In a terminal: a tqdm bar. Anywhere else (a submitted job's log, CI, a file): a plain line every
10% of the work or every 30 s, never the carriage-return redraws that turn a log into one huge line.
"""

from __future__ import annotations

import sys
import time


def interactive() -> bool:
    return sys.stderr.isatty()


class LineProgress:
    """tqdm's update/set_postfix API, printing whole lines."""

    def __init__(self, total: float, desc: str, unit: str = "it", every_s: float = 30.0, step: float = 0.1):
        self.total, self.desc, self.unit, self.every_s, self.step = total, desc, unit, every_s, step
        self.n, self.postfix = 0.0, ""
        self.started = self.last_time = time.perf_counter()
        self.last_fraction = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._print(final=True)

    def set_postfix(self, **kw):
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: float = 1):
        self.n += n
        now = time.perf_counter()
        fraction = self.n / self.total if self.total else 1.0
        if fraction - self.last_fraction >= self.step or now - self.last_time >= self.every_s:
            self._print()
            self.last_fraction, self.last_time = fraction, now

    def _print(self, final: bool = False):
        elapsed = time.perf_counter() - self.started
        pct = 100 * self.n / self.total if self.total else 100.0
        eta = ""
        if not final and 0 < self.n < self.total:
            eta = f", ~{elapsed * (self.total - self.n) / self.n:.0f}s left"
        print(f"[{self.desc}] {pct:3.0f}% ({elapsed:.0f}s{eta}) {self.postfix}".rstrip(), flush=True)


def progress(total: float, desc: str, unit: str = "it"):
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True)
    return LineProgress(total, desc, unit)


def quiet_ray_data_progress() -> None:
    """Ray Data's progress bars redraw in place; outside a terminal its per-operator log lines are enough."""
    if not interactive():
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        quiet_progress_bars()


def quiet_progress_bars() -> None:
    """Turn off the redrawing bars of tqdm, `datasets` and `transformers` in this process.

    Called in Ray workers (whose output is a log file forwarded line by line, never a terminal) and
    in a driver whose output is not a terminal; our own progress lines (`progress`) stay.
    """
    import os

    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
