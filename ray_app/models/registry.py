"""Model presets: the real Hub models and the embedded tiny stand-ins of the same architectures.

A name resolves to something `from_pretrained` takes: a Hub id for real models, a local folder for
embedded ones (built on first use, see `ray_app.models.tiny`), or any path/id passed through as is.
Architecture numbers of the real models are kept here so `--dry-run` can plan memory without weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Architecture:
    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool = True
    num_labels: int = 0  # > 0: a sequence-classification head instead of an LM head
    family: str = "gemma3"  # gemma3: 4 norms per layer + q/k norms; llama: 2 norms per layer

    def parameter_count(self) -> int:
        """Transformer parameters from the shapes (norm weights included; biases: none in Gemma/Llama)."""
        attention = self.hidden * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        if self.family == "gemma3":
            norms = 4 * self.hidden + 2 * self.head_dim  # pre/post attention and MLP norms, q/k norms
        else:
            norms = 2 * self.hidden
        per_layer = attention + mlp + norms
        embeddings = self.vocab * self.hidden
        head = self.hidden * self.num_labels if self.num_labels else (0 if self.tie_embeddings else embeddings)
        return self.num_layers * per_layer + embeddings + head + self.hidden


@dataclass(frozen=True)
class ModelPreset:
    name: str
    kind: str  # "causal_lm" | "reward"
    hub_id: str | None
    arch: Architecture
    embedded: bool = False
    notes: str = ""
    build: dict = field(default_factory=dict)  # embedded: the tiny config and tokenizer settings


MODEL_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            "gemma-3-1b-it",
            "causal_lm",
            "google/gemma-3-1b-it",
            Architecture(26, 1152, 6912, 4, 1, 256, 262144),
        ),
        ModelPreset(
            "gemma-3-4b-it",
            "causal_lm",
            "google/gemma-3-4b-it",
            Architecture(34, 2560, 10240, 8, 4, 256, 262144),
            notes="text model of the multimodal checkpoint",
        ),
        ModelPreset(
            "skywork-reward-v2-llama-3.1-8b",
            "reward",
            "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
            Architecture(32, 4096, 14336, 32, 8, 128, 128256, tie_embeddings=False, num_labels=1, family="llama"),
        ),
        # Embedded defaults: same architectures, sizes that train in minutes on 2 CPU cores.
        ModelPreset(
            "tiny-gemma3-small",
            "causal_lm",
            None,
            Architecture(4, 256, 768, 4, 1, 64, 2048),
            embedded=True,
            notes="stands in for gemma-3-1b-it",
            build={"family": "gemma3", "vocab_size": 2048, "sliding_window": 512},
        ),
        ModelPreset(
            "tiny-gemma3-large",
            "causal_lm",
            None,
            Architecture(6, 384, 1152, 6, 2, 64, 2048),
            embedded=True,
            notes="stands in for gemma-3-4b-it",
            build={"family": "gemma3", "vocab_size": 2048, "sliding_window": 512},
        ),
        ModelPreset(
            "tiny-llama-reward",
            "reward",
            None,
            Architecture(2, 128, 384, 4, 2, 32, 1024, tie_embeddings=False, num_labels=1, family="llama"),
            embedded=True,
            notes="stands in for Skywork-Reward-V2-Llama-3.1-8B; its own Llama-3-style tokenizer",
            build={"family": "llama", "vocab_size": 1024},
        ),
    ]
}


def parse_model_specs(specs: str) -> list[tuple[str, str]]:
    """'base=tiny-gemma3-small,sft=sft/x/final_model' -> [(label, model), ...]."""
    out = []
    for item in [s.strip() for s in specs.split(",") if s.strip()]:
        label, _, model = item.partition("=") if "=" in item else (item, "", item)
        if not label or not model:
            raise ValueError(f"bad model spec '{item}': use LABEL=MODEL or MODEL")
        out.append((label, model))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique: {labels}")
    if not out:
        raise ValueError("no models given")
    return out


def get_preset(name: str) -> ModelPreset | None:
    return MODEL_PRESETS.get(name)


def resolve_model_path(name_or_path: str, corpus_file: str | None = None, cache_dir: str | None = None) -> str:
    """What to hand to `from_pretrained`: a local folder, a Hub id, or a freshly built embedded model."""
    preset = get_preset(name_or_path)
    if preset is None:
        return name_or_path  # a local path or a Hub id, used as given
    if not preset.embedded:
        return preset.hub_id
    from ray_app.models.tiny import build_embedded_model

    if corpus_file is None:
        raise ValueError(
            f"embedded model '{preset.name}' trains its tokenizer on the training data; pass the training JSONL "
            "(jobs/prepare_data.py writes STORAGE_ROOT/data/gsm_symbolic_train.jsonl)"
        )
    return str(build_embedded_model(preset, corpus_file, cache_dir))


def is_local_model(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def resolve_model_spec(spec: str, root: str) -> str:
    """Driver side: a model as the user named it -> something every node can resolve.

    Preset names, Hub ids, URIs and absolute paths stay as they are; a relative path is a folder under
    the storage root (`sft/sft-tiny-gemma3-small/final_model`), never under the current directory,
    which for a submitted job is a temporary copy of the checkout.
    """
    from ray_app import storage

    if get_preset(spec) is not None or storage.is_uri(spec) or os.path.isabs(os.path.expanduser(spec)):
        return os.path.expanduser(spec) if not storage.is_uri(spec) else spec
    under_root = storage.join(root, spec)
    if storage.exists(storage.join(under_root, "config.json")):
        return under_root
    if Path(spec).is_dir() and not storage.ephemeral_working_dir():
        return str(Path(spec).resolve())
    if spec.count("/") == 1 and not spec.startswith("."):
        return spec  # a Hub id such as google/gemma-3-1b-it
    raise ValueError(
        f"model '{spec}' not found: it is no preset ({', '.join(MODEL_PRESETS)}), no Hugging Face folder under the "
        f"storage root ({under_root}) and no Hub id; pass a path relative to the storage root, an absolute path or a URI"
    )


def materialize_model(spec: str, corpus_file: str | None = None) -> str:
    """Worker side: a local folder or Hub id for `from_pretrained`, on whichever node this runs.

    Embedded presets are built here from the training file (deterministic, cached per node), models
    in cloud storage are downloaded into the node's cache, local paths and Hub ids pass through.
    """
    from ray_app import storage

    if get_preset(spec) is not None:
        corpus = str(storage.local_copy(corpus_file)) if corpus_file else None
        return resolve_model_path(spec, corpus_file=corpus)
    if storage.is_uri(spec):
        return str(storage.local_copy(spec))
    return spec


def resolve_model_specs(models: str, root: str) -> str:
    """`LABEL=MODEL,...` with every MODEL resolved by `resolve_model_spec`."""
    return ",".join(f"{label}={resolve_model_spec(model, root)}" for label, model in parse_model_specs(models))


def model_identity(spec: str) -> str:
    """What a fingerprint records for a model: for one exported by our SFT, the fingerprint of the run
    that trained it (retraining into the same folder changes it); otherwise the name as given."""
    import json

    from ray_app import storage

    if get_preset(spec) is None:
        summary = storage.join(spec, "train_summary.json")
        try:
            if storage.exists(summary):
                return f"{spec}@{json.loads(storage.read_text(summary)).get('config_fingerprint')}"
        except (OSError, ValueError):
            pass
    return spec
