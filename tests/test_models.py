"""Embedded tiny models: deterministic, cached, loaded through the same from_pretrained path as the real ones."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSequenceClassification, AutoTokenizer

from conftest import real_tokenizer, shared_path
from ray_app.generation import generate, stop_token_ids
from ray_app.models.loading import count_loaded_parameters, freeze_non_language_modules, parameter_summary
from ray_app.models.registry import MODEL_PRESETS, resolve_model_path

CORPUS = shared_path("data/gsm8k/train.jsonl", module_level=True)  # any GSM-style rows do for a tokenizer corpus
MESSAGES = [{"role": "user", "content": "What is 1+1?\n"}, {"role": "assistant", "content": "2"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    corpus = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    corpus.write_text("".join(CORPUS.read_text().splitlines(keepends=True)[:3000]))
    paths = {name: Path(resolve_model_path(name, str(corpus), str(cache)))
             for name in ("tiny-gemma3-small", "tiny-gemma3-large", "tiny-llama-reward")}
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
    real = real_tokenizer("tokenizers/gemma-3")
    for attr in ("bos_token", "eos_token", "pad_token"):
        assert getattr(tok, attr) == getattr(real, attr)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == real.apply_chat_template(MESSAGES, tokenize=False)
    assert tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True) == real.apply_chat_template(
        MESSAGES[:1], tokenize=False, add_generation_prompt=True
    )


def test_large_policy_is_multimodal_like_gemma3_4b(built):
    """tiny-gemma3-large ships as gemma-3-4b-it does: Gemma3ForConditionalGeneration (a SigLIP tower and
    projector beside the language model) that AutoModelForCausalLM loads whole, with Gemma 3's image tokens."""
    path = built[0]["tiny-gemma3-large"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration" and model.config.model_type == "gemma3"
    assert type(AutoModelForImageTextToText.from_pretrained(path)).__name__ == "Gemma3ForConditionalGeneration"
    arch = MODEL_PRESETS["tiny-gemma3-large"].arch
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n)
    assert vision == arch.vision_parameter_count() > 0
    assert sum(p.numel() for p in model.parameters()) == arch.parameter_count() + arch.vision_parameter_count()
    real = real_tokenizer("tokenizers/gemma-3")
    for attr in ("boi_token", "eoi_token", "image_token", "bos_token", "eos_token", "pad_token"):
        assert getattr(tok, attr) == getattr(real, attr), attr
    assert model.config.image_token_index == tok.convert_tokens_to_ids(tok.image_token)
    assert model.config.boi_token_index == tok.convert_tokens_to_ids(tok.boi_token)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == real.apply_chat_template(MESSAGES, tokenize=False)
    # SFT freezes exactly the tower and the projector.
    frozen = freeze_non_language_modules(model)
    assert frozen == ["model.vision_tower", "model.multi_modal_projector"]
    summary = parameter_summary(model, frozen)
    assert (summary["trainable"], summary["frozen"]) == (arch.parameter_count(), arch.vision_parameter_count())


def test_real_gemma3_4b_is_counted_as_it_loads():
    """The plan counts what SFT loads for gemma-3-4b-it: the class AutoModelForCausalLM picks for its
    config, instantiated on the meta device, frozen as SFT freezes it: ~4.3B, of which ~0.42B frozen."""
    arch = MODEL_PRESETS["gemma-3-4b-it"].arch
    counted = count_loaded_parameters(arch.hf_config())
    assert counted["class"] == "Gemma3ForConditionalGeneration"
    assert counted["total"] == arch.parameter_count() + arch.vision_parameter_count()
    assert 4.25e9 < counted["total"] < 4.35e9 and 0.40e9 < counted["frozen"] < 0.43e9
    assert counted["trainable"] == arch.parameter_count()
    small = count_loaded_parameters(MODEL_PRESETS["gemma-3-1b-it"].arch.hf_config())
    assert small["class"] == "Gemma3ForCausalLM" and small["frozen"] == 0


def test_generation_stops_on_the_models_own_eos_tokens(built):
    """Stop tokens come from the model's generation config, not from a list of Gemma token names."""
    path = built[0]["tiny-gemma3-small"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert stop_token_ids(model, tok) == sorted(tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"]))
    tok.padding_side = "left"
    question = ["Tom has 3 apples and buys 2 more. How many apples does he have?"]
    free = generate(model, tok, question, max_new_tokens=24)[0]
    first = tok(free.completion, add_special_tokens=False)["input_ids"][0]
    # Declare the first token the untrained model writes an end token: generation stops before it.
    model.generation_config.eos_token_id = [first]
    assert first in stop_token_ids(model, tok)
    stopped = generate(model, tok, question, max_new_tokens=24)[0]
    assert (stopped.finish_reason, stopped.num_tokens, stopped.completion) == ("stop", 0, "")


def test_reward_model_loads_like_skywork_llama(built):
    path = built[0]["tiny-llama-reward"]
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id is not None
    assert sum(p.numel() for p in model.parameters()) == MODEL_PRESETS["tiny-llama-reward"].arch.parameter_count()
    real = real_tokenizer("tokenizers/llama-3.1")
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
    assert 3.8e9 < MODEL_PRESETS["gemma-3-4b-it"].arch.parameter_count() < 4.0e9  # + the vision tower: ~4.3B
    assert 7.4e9 < MODEL_PRESETS["skywork-reward-v2-llama-3.1-8b"].arch.parameter_count() < 7.6e9


def test_embedded_model_needs_a_corpus():
    with pytest.raises(ValueError, match="training JSONL"):
        resolve_model_path("tiny-gemma3-small")
