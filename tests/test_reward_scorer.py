"""The reward scorer without Ray: prefix-shared batches give the same scores as pair-by-pair scoring."""

import json
import random

import pytest

from conftest import shared_path
from ray_app.models.registry import resolve_model_path
from ray_app.reward.scorer import RewardScorer, common_prefix_length, length_chunks

GSM8K_TRAIN = shared_path("data/gsm8k/train.jsonl", module_level=True)
ROWS = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:40]]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    corpus.write_text("".join(GSM8K_TRAIN.read_text().splitlines(keepends=True)[:3000]))
    return resolve_model_path("tiny-llama-reward", str(corpus), str(tmp_path_factory.mktemp("models")))


def best_of_n_workload():
    """3 questions x 4 responses of varied length, interleaved, plus two lone pairs and a repeated response."""
    pairs = []
    for k in range(4):
        for q in range(3):
            pairs.append((ROWS[q]["question"], ROWS[3 + 4 * q + k]["answer"].split("####")[0]))
    pairs.append((ROWS[30]["question"], ROWS[30]["answer"]))
    pairs.append((ROWS[31]["question"], "Final answer: 3."))
    pairs.append((ROWS[0]["question"], pairs[0][1]))  # identical to pair 0: the shared prefix stops one token short
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 6], [7]]) == 0
    assert common_prefix_length([[1, 2], [1, 2]]) == 2


def test_shared_prefix_scores_equal_pair_by_pair_scores(model_path):
    questions, responses = best_of_n_workload()
    plain = RewardScorer(model_path, share_prefixes=False)
    shared = RewardScorer(model_path)
    one_by_one = plain.score(questions, responses, batch_size=1)
    batched = shared.score(questions, responses, batch_size=32)
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    assert len(set(round(s, 6) for s in one_by_one[:12])) == 12  # the model does tell the responses apart
    stats = shared.stats.as_dict()
    assert stats["shared_groups"] == 3 and stats["pairs"] == len(questions)
    assert stats["tokens_run"] < stats["tokens_in_pairs"] and stats["token_saving"] > 1.15
    assert batched[0] == pytest.approx(batched[-1], abs=1e-4)  # the repeated pair


def test_scores_do_not_depend_on_batch_size_or_order(model_path):
    questions, responses = best_of_n_workload()
    scorer = RewardScorer(model_path)
    reference = scorer.score(questions, responses, batch_size=32)
    for batch_size in (1, 3, 5):
        assert scorer.score(questions, responses, batch_size=batch_size) == pytest.approx(reference, abs=1e-4)
    order = list(range(len(questions)))
    random.Random(0).shuffle(order)
    shuffled = scorer.score([questions[i] for i in order], [responses[i] for i in order])
    assert shuffled == pytest.approx([reference[i] for i in order], abs=1e-4)


def test_truncation_matches_the_plain_path(model_path):
    question, long_answer = ROWS[0]["question"], " ".join(r["answer"] for r in ROWS[:20])
    responses = [long_answer, long_answer + " more", "short"]
    plain = RewardScorer(model_path, share_prefixes=False, max_length=256)
    shared = RewardScorer(model_path, max_length=256)
    assert max(len(ids) for ids in shared.token_ids([question] * 3, responses)) == 256
    assert shared.score([question] * 3, responses) == pytest.approx(plain.score([question] * 3, responses, batch_size=1), abs=1e-4)


def test_mismatched_lists_are_refused(model_path):
    with pytest.raises(ValueError, match="2 questions but 1 responses"):
        RewardScorer(model_path).score(["a", "b"], ["x"])


def test_length_chunks_bound_padding_and_batch_size():
    lengths = [100, 10, 12, 95, 11, 300, 98]
    chunks = length_chunks(list("abcdefg"), lengths, max_batch=2)
    assert sorted(x for c in chunks for x in c) == sorted("abcdefg")
    assert all(len(c) <= 2 for c in chunks)
    length_of = dict(zip("abcdefg", lengths))
    for c in chunks:
        real = sum(length_of[x] for x in c)
        assert len(c) * max(length_of[x] for x in c) <= 1.25 * real
    assert chunks[0] == ["b", "e"] and ["f"] in chunks


def test_padding_follows_the_models_config(model_path, tmp_path):
    """A reward model whose config names a pad id other than its tokenizer's (Skywork-Reward-V2 names its
    own): the scorer pads with the config's id, which the model's own pooling skips, so padded batches
    score as one pair at a time."""
    import json
    import shutil

    from transformers import AutoTokenizer

    copy = tmp_path / "reward"
    shutil.copytree(model_path, copy)
    tok = AutoTokenizer.from_pretrained(copy)
    config = json.loads((copy / "config.json").read_text())
    config["pad_token_id"] = tok.convert_tokens_to_ids("<|end_of_text|>")
    assert config["pad_token_id"] != tok.pad_token_id
    (copy / "config.json").write_text(json.dumps(config))
    questions, responses = best_of_n_workload()
    plain = RewardScorer(str(copy), share_prefixes=False)
    assert plain.pad_token_id == config["pad_token_id"]
    one_by_one = plain.score(questions, responses, batch_size=1)
    assert plain.score(questions, responses, batch_size=32) == pytest.approx(one_by_one, abs=1e-4)
    assert RewardScorer(str(copy)).score(questions, responses) == pytest.approx(one_by_one, abs=1e-4)
