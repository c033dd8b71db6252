"""Embedded tiny models: deterministic, cached, loaded through the same from_pretrained path as the real ones."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import SHARED
from ray_app.models.registry import MODEL_PRESETS, resolve_model_path

CORPUS = SHARED / "data/gsm8k/train.jsonl"  # any GSM-style rows do for a tokenizer corpus
MESSAGES = [{"role": "user", "content": "What is 1+1?\n"}, {"role": "assistant", "content": "2"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    corpus = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    corpus.write_text("".join(CORPUS.read_text().splitlines(keepends=True)[:3000]))
    paths = {name: Path(resolve_model_path(name, str(corpus), str(cache))) for name in ("tiny-gemma3-small", "tiny-llama-reward")}
    return paths, corpus, cache


def test_build_is_deterministic_and_cached(built, tmp_path):
    paths, corpus, cache = built
    again = Path(resolve_model_path("tiny-gemma3-small", str(corpus), str(cache)))
    assert again == paths["tiny-gemma3-small"]  # cache hit: same folder
    fresh = Path(resolve_model_path("tiny-gemma3-small", str(corpus), str(tmp_path)))  # rebuilt from scratch
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (fresh / name).read_bytes() == (paths["tiny-gemma3-small"] / name).read_bytes(), name


def test_policy_loads_like_gemma3(built):
    path = built[0]["tiny-gemma3-small"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.model_type == "gemma3_text"
    # Same parameter count as the architecture the memory planner uses.
    assert sum(p.numel() for p in model.parameters()) == MODEL_PRESETS["tiny-gemma3-small"].arch.parameter_count()
    # Same special tokens and the same chat format as the real Gemma 3 tokenizer.
    real = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers/gemma-3"))
    for attr in ("bos_token", "eos_token", "pad_token"):
        assert getattr(tok, attr) == getattr(real, attr)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == real.apply_chat_template(MESSAGES, tokenize=False)
    assert tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True) == real.apply_chat_template(
        MESSAGES[:1], tokenize=False, add_generation_prompt=True
    )


def test_reward_model_loads_like_skywork_llama(built):
    path = built[0]["tiny-llama-reward"]
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id is not None
    assert sum(p.numel() for p in model.parameters()) == MODEL_PRESETS["tiny-llama-reward"].arch.parameter_count()
    real = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers/llama-3.1"))
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == real.apply_chat_template(MESSAGES, tokenize=False)
    # Its tokenizer is its own: the policy's token ids mean nothing to it.
    policy = AutoTokenizer.from_pretrained(built[0]["tiny-gemma3-small"])
    assert tok.get_vocab() != policy.get_vocab()
    assert "<start_of_turn>" not in tok.get_vocab() and "<|eot_id|>" not in policy.get_vocab()


def test_real_presets_resolve_to_hub_ids():
    assert resolve_model_path("gemma-3-1b-it") == "google/gemma-3-1b-it"
    assert resolve_model_path("gemma-3-4b-it") == "google/gemma-3-4b-it"
    assert resolve_model_path("skywork-reward-v2-llama-3.1-8b") == "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
    assert resolve_model_path("/some/local/model") == "/some/local/model"
    # Real sizes from ../shared/README.md: about 1.0B and 3.9B text parameters, 7.5B for the reward model.
    assert 0.95e9 < MODEL_PRESETS["gemma-3-1b-it"].arch.parameter_count() < 1.05e9
    assert 3.8e9 < MODEL_PRESETS["gemma-3-4b-it"].arch.parameter_count() < 4.0e9
    assert 7.4e9 < MODEL_PRESETS["skywork-reward-v2-llama-3.1-8b"].arch.parameter_count() < 7.6e9


def test_embedded_model_needs_a_corpus():
    with pytest.raises(ValueError, match="training JSONL"):
        resolve_model_path("tiny-gemma3-small")
