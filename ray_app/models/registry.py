"""Model presets: the real Hub models and the embedded tiny stand-ins of the same architectures.

A name resolves to something `from_pretrained` takes: a Hub id for real models, a local folder for
embedded ones (built on first use, see `ray_app.models.tiny`), or any path/id passed through as is.
Architecture numbers of the real models are kept here so `--dry-run` can plan memory without weights.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ray_app.errors import ConfigError


@dataclass(frozen=True)
class VisionArchitecture:
    """A SigLIP vision tower and Gemma 3's projector (avg-pooled patches -> text embedding space)."""

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    image_size: int
    patch_size: int
    mm_tokens_per_image: int

    def parameter_count(self, text_hidden: int) -> int:
        h, patches = self.hidden, (self.image_size // self.patch_size) ** 2
        embeddings = 3 * self.patch_size**2 * h + h + patches * h  # patch conv (with bias) + positions
        per_layer = 4 * (h * h + h) + 2 * self.intermediate * h + self.intermediate + h + 4 * h  # attn, MLP, 2 LayerNorms
        projector = h * text_hidden + h  # mm_input_projection_weight + mm_soft_emb_norm
        return embeddings + self.num_layers * per_layer + 2 * h + projector  # + post_layernorm


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
    # Gemma3ForConditionalGeneration checkpoints (gemma-3-4b-it and up) also ship a vision tower.
    vision: VisionArchitecture | None = None

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

    def vision_parameter_count(self) -> int:
        return self.vision.parameter_count(self.hidden) if self.vision else 0

    def hf_config(self, vocab_size: int | None = None, max_position_embeddings: int = 131072,
                  sliding_window: int = 1024, token_ids: dict | None = None):
        """The transformers config of this architecture (what `from_config` / the checkpoint's config.json
        would give): Gemma3TextConfig, Gemma3Config (with a vision tower) or LlamaConfig. `token_ids`:
        pad/bos/eos (and boi/eoi/image for a vision model) ids of the tokenizer that goes with it."""
        from transformers import Gemma3Config, Gemma3TextConfig, LlamaConfig, SiglipVisionConfig

        ids = {"pad": 0, "bos": 2, "eos": [1, 106], "boi": 255999, "eoi": 256000, "image": 262144, **(token_ids or {})}
        vocab = vocab_size or self.vocab
        if self.family == "llama":
            return LlamaConfig(
                vocab_size=vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
                max_position_embeddings=max_position_embeddings, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], num_labels=max(1, self.num_labels), tie_word_embeddings=self.tie_embeddings,
            )
        n = self.num_layers
        text = Gemma3TextConfig(
            vocab_size=vocab, hidden_size=self.hidden, intermediate_size=self.intermediate, num_hidden_layers=n,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
            query_pre_attn_scalar=self.head_dim, max_position_embeddings=max_position_embeddings,
            sliding_window=sliding_window,
            # Gemma 3 interleaves 5 sliding-window layers with 1 global one; keep the last layer global.
            layer_types=["full_attention" if (i + 1) % 6 == 0 or i == n - 1 else "sliding_attention" for i in range(n)],
            pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            tie_word_embeddings=self.tie_embeddings,
        )
        if self.vision is None:
            return text
        v = self.vision
        vision = SiglipVisionConfig(
            hidden_size=v.hidden, intermediate_size=v.intermediate, num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size, vision_use_head=False,
        )
        return Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=v.mm_tokens_per_image,
            boi_token_index=ids["boi"], eoi_token_index=ids["eoi"], image_token_index=ids["image"],
            eos_token_id=ids["eos"], tie_word_embeddings=self.tie_embeddings,
        )


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
            # The checkpoint is multimodal (Gemma3ForConditionalGeneration): 3.88B text model (its embedding
            # has 262,208 rows: the tokenizer's 262,145 tokens incl. <image_soft_token>, padded) plus a
            # SigLIP-So400m tower (27 layers, 896 px, 14 px patches) and a projector to 256 image tokens.
            Architecture(34, 2560, 10240, 8, 4, 256, 262208,
                         vision=VisionArchitecture(27, 1152, 4304, 16, 896, 14, 256)),
            notes="Gemma3ForConditionalGeneration: the language model trains, the vision tower is loaded and frozen",
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
            # Multimodal as gemma-3-4b-it ships: a tiny SigLIP tower (16 patches of 14 px, pooled to 4
            # image tokens) that SFT loads, freezes and exports unchanged.
            Architecture(6, 384, 1152, 6, 2, 64, 2048, vision=VisionArchitecture(2, 64, 128, 2, 56, 14, 4)),
            embedded=True,
            notes="stands in for gemma-3-4b-it (Gemma3ForConditionalGeneration with a tiny vision tower)",
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


def model_short_name(model: str) -> str:
    """A model's name as one plain folder/file name: the last part of its path or Hub id, or for an
    exported model (.../RUN/final_model, .../checkpoint) its run folder's name."""
    from ray_app import storage

    def plain(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")

    name = plain(storage.basename(model.rstrip("/"))) or "model"
    if name in ("final_model", "checkpoint"):
        name = plain(storage.basename(storage.parent(model.rstrip("/")))) or name
    return name


def parse_model_specs(specs: str) -> list[tuple[str, str]]:
    """'base=tiny-gemma3-small,sft=sft/x/final_model' -> [(label, model), ...].

    Labels name part files and table rows, so they are plain names (letters, digits, '.', '_', '-');
    a model given without LABEL= is labelled `model_short_name(model)` (google/gemma-3-1b-it -> gemma-3-1b-it).
    """
    from ray_app import storage

    out = []
    for item in [s.strip() for s in specs.split(",") if s.strip()]:
        label, _, model = item.partition("=") if "=" in item else (model_short_name(item), "", item)
        if not label or not model:
            raise ConfigError(f"bad model spec '{item}': use LABEL=MODEL or MODEL")
        if not storage.is_plain_name(label):
            raise ConfigError(f"model label '{label}' in '{item}' is not a plain name ({storage.PLAIN_NAME_RULE}): "
                             "labels name files; write LABEL=MODEL with such a label, e.g. sft=sft/run/final_model")
        out.append((label, model))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model labels must be unique: {labels}")
    if not out:
        raise ConfigError("no models given")
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
        raise ConfigError(
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

    A model folder inside the storage root is read only once it was published completely: its
    `_COMPLETE.json` marker is there and matches (storage.publish_dir; the SFT export writes it last).
    So an export still being written, or one a killed job left half uploaded, is an error here, never a
    model. Folders outside the root (the embedded models in ~/.cache/ray_app/models, a Hugging Face
    download at an absolute path) are not ours to mark and load as before: any folder with config.json.
    """
    from ray_app import storage

    if get_preset(spec) is not None:
        return spec
    if storage.is_uri(spec) or os.path.isabs(os.path.expanduser(spec)):
        return _published_if_ours(os.path.expanduser(spec) if not storage.is_uri(spec) else spec, root)
    under_root = storage.join(root, spec)
    if storage.is_dir(under_root):
        return _published_if_ours(under_root, root)
    if Path(spec).is_dir() and not storage.ephemeral_working_dir():
        return str(Path(spec).resolve())
    if spec.count("/") == 1 and not spec.startswith("."):
        return spec  # a Hub id such as google/gemma-3-1b-it
    raise ConfigError(
        f"model '{spec}' not found: it is no preset ({', '.join(MODEL_PRESETS)}), no Hugging Face folder under the "
        f"storage root ({under_root}) and no Hub id; pass a path relative to the storage root, an absolute path or a URI"
    )


def _published_if_ours(path: str, root: str) -> str:
    """`path`, after checking that a model folder inside the storage root was published completely."""
    from ray_app import storage

    if storage.is_under(path, root) and storage.is_dir(path):
        storage.require_complete(
            path, "model folder",
            "Under the storage root a model is read only once its writer finished it (_COMPLETE.json, written last): "
            "wait for or rerun the SFT job that exports it; a model you copied in yourself goes outside the storage "
            "root (pass its absolute path) or in through ray_app.storage.publish_dir")
    return path


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
    that trained it and the step it was exported at (retraining into the same folder, or training it
    longer, changes it); otherwise the name as given."""
    import json

    from ray_app import storage

    if get_preset(spec) is None:
        summary = storage.join(spec, "train_summary.json")
        try:
            if storage.exists(summary):
                trained = json.loads(storage.read_text(summary))
                return f"{spec}@{trained.get('config_fingerprint')}:step{trained.get('global_step')}"
        except (OSError, ValueError):
            pass
    return spec
