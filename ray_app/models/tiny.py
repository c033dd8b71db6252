"""Embedded default models: tiny Gemma 3 / Llama models built offline, saved in Hugging Face format.

The Hub is out of reach on CPU dev machines and CI, so the project builds its own stand-ins:
a byte-level BPE tokenizer trained on the training rows, with Gemma-style (policy) or
Llama-3-style (reward model) special tokens and chat templates, and a randomly initialised model
of the real architecture class. Everything is seeded, so the same corpus gives the same bytes,
and the result is cached by a hash of (preset, corpus, builder version).
"""

from __future__ import annotations

# `preset` arguments are ray_app.models.registry.ModelPreset objects (not imported: the registry
# imports this module to build its embedded presets).

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ray_app import storage
from ray_app.data.prompts import ANSWER_PREFIX, build_gsm_prompt, format_target_answer
from ray_app.utils.io import read_jsonl, sha256_file, sha256_text

BUILDER_VERSION = "2"  # 2: configs from Architecture.hf_config; multimodal tiny-gemma3-large
INIT_SEED = 0

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# Gemma 3's image tokens (tokenizer_config: boi_token, eoi_token, image_token), for a multimodal build.
GEMMA_IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
# Same shape as Gemma 3's template: bos, turns as <start_of_turn>role\n...<end_of_turn>\n, 'model' role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (message['content'] | trim) + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|finetune_right_pad_id|>"]
LLAMA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) + '<|eot_id|>' -%}"
    "{%- if loop.index0 == 0 -%}{%- set content = bos_token + content -%}{%- endif -%}"
    "{{ content }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)


def corpus_texts(corpus_file: str) -> list[str]:
    """The texts the tokenizer learns from: prompts and target answers of the training rows."""
    rows = read_jsonl(corpus_file, required=("question", "answer"))
    texts = []
    for row in rows:
        texts.append(build_gsm_prompt(row["question"]))
        texts.append(ANSWER_PREFIX + format_target_answer(row["answer"]))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, family: str, image_tokens: bool = False):
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer with the family's specials
    (and, with `image_tokens`, Gemma 3's image tokens, named in the config as the real one names them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = GEMMA_SPECIALS if family == "gemma3" else LLAMA_SPECIALS
    if image_tokens:
        specials = specials + list(GEMMA_IMAGE_TOKENS.values())
    backend = Tokenizer(models.BPE(unk_token="<unk>" if family == "gemma3" else None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if family == "gemma3":
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<bos>",
            eos_token="<end_of_turn>",  # as gemma-3-*-it: generation ends a turn
            pad_token="<pad>",
            unk_token="<unk>",
            additional_special_tokens=["<start_of_turn>", "<eos>"],
            **({"extra_special_tokens": GEMMA_IMAGE_TOKENS} if image_tokens else {}),
            chat_template=GEMMA_CHAT_TEMPLATE,
            padding_side="left",
            clean_up_tokenization_spaces=False,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
        chat_template=LLAMA_CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _build_model(preset: ModelPreset, tokenizer):
    """A randomly initialised model of the preset's architecture class, its config from
    `Architecture.hf_config` (the same code that plans the real models' memory)."""
    import torch
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        GenerationConfig,
        LlamaForSequenceClassification,
    )

    a = preset.arch
    torch.manual_seed(INIT_SEED)
    specials = GEMMA_SPECIALS + list(GEMMA_IMAGE_TOKENS.values()) if preset.build["family"] == "gemma3" else LLAMA_SPECIALS
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    if preset.build["family"] == "gemma3":
        token_ids = {"pad": ids["<pad>"], "bos": ids["<bos>"], "eos": [ids["<eos>"], ids["<end_of_turn>"]]}
        if a.vision:
            token_ids.update(boi=ids["<start_of_image>"], eoi=ids["<end_of_image>"], image=ids["<image_soft_token>"])
        config = a.hf_config(vocab_size=len(tokenizer), max_position_embeddings=2048,
                             sliding_window=preset.build["sliding_window"], token_ids=token_ids)
        model = (Gemma3ForConditionalGeneration if a.vision else Gemma3ForCausalLM)(config)
        # What generation stops on is the model's own business (as in gemma-3-*-it's generation_config.json).
        model.generation_config = GenerationConfig(
            bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"], pad_token_id=token_ids["pad"], do_sample=False)
        return model
    config = a.hf_config(vocab_size=len(tokenizer), max_position_embeddings=4096, token_ids={
        "bos": ids["<|begin_of_text|>"], "eos": ids["<|eot_id|>"], "pad": ids["<|finetune_right_pad_id|>"]})
    return LlamaForSequenceClassification(config)


def build_key(preset: ModelPreset, corpus_file: str) -> str:
    return sha256_text(BUILDER_VERSION, json.dumps(dataclasses.asdict(preset.arch), sort_keys=True), json.dumps(preset.build, sort_keys=True), sha256_file(corpus_file))


def build_embedded_model(preset: ModelPreset, corpus_file: str, cache_dir: str | None = None) -> Path:
    """Build (or reuse) the embedded model; returns its Hugging Face folder."""
    from filelock import FileLock

    root = Path(os.path.expanduser(cache_dir)) if cache_dir else storage.cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{preset.name}-{build_key(preset, corpus_file)[:16]}"
    if (target / "config.json").is_file():
        return target
    if _in_process_group():
        # transformers 5 writes weights only on distributed rank 0, and this cache is per node: a
        # training worker of another rank builds it in a fresh process outside the process group.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(storage.PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        child = ("import sys; from ray_app.models.registry import resolve_model_path; "
                 "resolve_model_path(sys.argv[1], corpus_file=sys.argv[2], cache_dir=sys.argv[3])")
        subprocess.run([sys.executable, "-c", child, preset.name, str(corpus_file), str(root)], check=True, env=env)
        return target
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        if target.exists():  # a leftover of an interrupted build
            shutil.rmtree(target)
        tokenizer = train_tokenizer(corpus_texts(corpus_file), preset.build["vocab_size"], preset.build["family"],
                                    image_tokens=preset.arch.vision is not None)
        model = _build_model(preset, tokenizer)
        tmp = Path(tempfile.mkdtemp(prefix=f".{preset.name}.", dir=root))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if not (tmp / "config.json").is_file():
                raise RuntimeError(f"saving {preset.name} wrote no config.json into {tmp}")
            (tmp / "embedded_model.json").write_text(
                json.dumps(
                    {"preset": preset.name, "notes": preset.notes, "corpus_sha256": sha256_file(corpus_file),
                     "builder_version": BUILDER_VERSION, "init_seed": INIT_SEED,
                     "parameters": sum(p.numel() for p in model.parameters())},
                    indent=2, sort_keys=True,
                )
                + "\n"
            )
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _in_process_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()

