"""What every job does around its work: find and check the storage root, make sure the data is
there, connect to Ray, and turn the errors a user can fix into one line and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from ray_app import storage
from ray_app.config import ConfigError, DataConfig, check_location, resolve_paths, resolve_section
from ray_app.errors import UserError

# What a user can fix (ray_app.errors.UserError: ConfigError, StorageError, DataError, ConfigMismatch, ...)
# is one line and exit 2. Anything else, ValueError included, is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def start(args, log=print) -> str:
    """Print where outputs go and stop now if that place cannot be written."""
    log(storage.describe_root(args.storage_root))
    storage.check_root(args.storage_root)
    return args.storage_root


def check_engines(*engines: str | None) -> None:
    """`--engine vllm` where vLLM is not installed: a ConfigError saying how to get it, before anything
    starts. (Checked when a job runs, not when its command line is parsed: a command meant for a cluster
    whose image has vLLM parses anywhere.)"""
    from ray_app.utils.engines import engine_settings

    for engine in engines:
        if engine:
            engine_settings(engine, do_sample=False)


def data_config(args) -> DataConfig:
    """The preset's (and --config file's) data section, its paths under the storage root."""
    return resolve_paths(resolve_section("data", args.preset, args.config, {}), args.storage_root)


def ensure_data(data_dir: str, args, log=print) -> str:
    """The job's data sets, built into `data_dir` first if they are not there (needs Ray for the tasks)."""
    from ray_app.data.gsm import ensure_data as build_if_missing

    return build_if_missing(data_dir, data_config(args), log=log)


def connect_ray() -> None:
    from ray_app.utils.ray_init import ensure_connected

    ensure_connected()


class _RedactingStream:
    """stdout/stderr with credentials hidden (storage.redact) in everything written to them: a storage
    URI given with its key (s3://KEY:SECRET@bucket/...) is named in many log lines, and job logs end up
    on the Ray dashboard and in CI output."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(storage.redact(text))

    def __getattr__(self, name):  # flush, fileno, isatty, encoding, ... as the real stream has them
        return getattr(self._stream, name)


def run(main: Callable[[], int]) -> int:
    """Run a job body with its output redacted; bad input (config, storage, data, models) becomes
    'error: ...' and exit 2."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)
    try:
        return main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        sys.stdout, sys.stderr = saved


def file_job_parser(doc: str):
    """The parser of a job that reads outputs rather than a config section (analyze, verifier, report):
    its docstring's first paragraph describes it, the rest (examples) ends --help."""
    import argparse

    description, _, epilog = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_file_job(parser, argv, main: Callable) -> int:
    """Add --storage-root, parse, resolve the root (a bad one is a usage error), then `run(main(args))`.
    The location options (--samples, --out, --report) follow the config's rules (config.check_location):
    non-empty, and a relative one stays inside the root."""
    parser.add_argument("--storage-root", default=None, help=f"root for relative paths [default: ${storage.ROOT_ENV} or {storage.DEFAULT_ROOT}]")
    args = parser.parse_args(argv)
    try:
        args.storage_root = storage.resolve_root(args.storage_root)
        for name in ("samples", "out", "report"):
            if getattr(args, name, None) is not None:
                setattr(args, name, check_location(name, getattr(args, name), args.storage_root))
    except (ConfigError, storage.StorageError) as e:
        parser.error(str(e))
    return run(lambda: main(args))


DATA_DIR_HELP = "folder with the data sets [default: STORAGE_ROOT/data, built there when missing]"
ROOT_HELP = f"storage root [default: ${storage.ROOT_ENV} or {storage.DEFAULT_ROOT}]"


def bench_data_dir(data_dir: str | None, storage_root: str | None, use_ray: bool) -> str:
    """A bench's data folder: --data-dir, else <root>/data built from the default preset when missing."""
    import dataclasses

    from ray_app.config import DEFAULT_PRESET
    from ray_app.data.gsm import ensure_data as build_if_missing

    root = storage.resolve_root(storage_root)
    data_dir = storage.under_root(root, data_dir or "data")
    cfg = resolve_paths(resolve_section("data", DEFAULT_PRESET, None, {}), root)
    return build_if_missing(data_dir, dataclasses.replace(cfg, use_ray=cfg.use_ray and use_ray))
