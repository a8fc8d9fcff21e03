"""Prompt sets: a generated arithmetic task, JSONL files, CHAMP (offline), hub datasets, and the chat prompt.

Every source yields :class:`Problem` rows (problem text, gold answer string, optional worked
solution, free-form ``meta``). The prompt is the paper's (theory/algorithm.md), built by
:func:`format_chat` with the tokenizer's own chat template.

Sources:

- :func:`arithmetic_problems`: multi-step integer arithmetic with graded difficulty and short worked
  solutions ending in ``\\boxed{answer}``, deterministic from a seed; small enough for a tiny model
  to learn on a CPU, and verifiable by :func:`gvm_mini.rewards.exact_match_score`.
- :data:`TASKS`: generated tasks by name (``dataset: arithmetic``, and ``rules``, the demo's task,
  which lives with the demo in :mod:`gvm_mini.demo.task`), each a loader ``cfg -> (train, test)``.
- :func:`load_jsonl`: one JSON object per line (``problem`` and ``answer`` keys by default).
- :func:`load_champ`: the 270 competition problems of the ``champ-dataset`` PyPI package (MIT).
- :func:`load_hub`: Numina-Math (training, theory/algorithm.md) and the five evaluation benchmarks
  (theory/algorithm.md) from the Hugging Face hub; needs ``pip install datasets`` and network. Hub ids
  and column mappings live in one table, :data:`HUB_DATASETS`, and rows are mapped by
  :func:`hub_row_to_problem`, which is testable on plain dicts.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Sequence

from gvm_mini.rewards import extract_boxed

__all__ = [
    "Problem",
    "arithmetic_problems",
    "TASKS",
    "task_loader",
    "split_train_test",
    "load_jsonl",
    "HubSpec",
    "HUB_DATASETS",
    "hub_row_to_problem",
    "load_hub",
    "load_champ",
    "DEFAULT_SYSTEM",
    "DEFAULT_INSTRUCTION",
    "format_chat",
    "prompt_token_lengths",
    "filter_overlong_prompts",
    "prompts_that_fit",
]


@dataclass
class Problem:
    """One prompt: the problem text, its gold answer (a string), an optional worked solution, metadata."""

    problem: str
    answer: str
    solution: str | None = None
    meta: dict = field(default_factory=dict)


def _answer_str(value) -> str | None:
    """Gold answer -> string as the official eval does: a list gives its first element, numbers are cast."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":  # OlympiadBench writes "$\frac{1}{2}$"
        text = text.strip("$").strip()
    return text or None


# ----------------------------------------------------------------------------------------------
# (a) generated arithmetic task
# ----------------------------------------------------------------------------------------------


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1)


def _worked_solution(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Steps evaluating ``numbers`` joined by ``ops``: every ``*`` first (left to right), then ``+``/``-``."""
    numbers, ops, steps = list(numbers), list(ops), []
    while "*" in ops:
        i = ops.index("*")
        value = numbers[i] * numbers[i + 1]
        steps.append(f"{numbers[i]}*{numbers[i + 1]}={value}")
        numbers[i : i + 2], ops[i : i + 1] = [value], []
    value = numbers[0]
    for op, b in zip(ops, numbers[1:]):
        new = value + b if op == "+" else value - b
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return steps, value


def arithmetic_problems(
    n: int,
    seed: int,
    *,
    min_operands: int = 2,
    max_operands: int = 4,
    max_digits: int = 3,
    ops: Sequence[str] = ("+", "-", "*"),
) -> list[Problem]:
    """``n`` distinct multi-step integer arithmetic problems with worked solutions, deterministic from ``seed``.

    Each problem draws a number of operands in ``[min_operands, max_operands]`` and a digit count ``d``
    in ``[1, max_digits]``; operands have ``d`` digits (0-9 when ``d == 1``) except the right operand
    of ``*``, which is one digit 2-9 (answers stay small). Operators come from ``ops`` (``+ - *``),
    with the usual precedence. The solution lists one step per operation, products first::

        problem:  "Compute 12+7*3-5."
        solution: "7*3=21. 12+21=33. 33-5=28. The answer is \\boxed{28}."

    ``meta`` holds ``difficulty = operands * digits`` (2 to 12 with the defaults), ``operands``,
    ``digits`` and ``expression`` (a Python expression whose value is the answer). ValueError for bad
    arguments or when the requested settings do not admit ``n`` distinct problems.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not 2 <= min_operands <= max_operands:
        raise ValueError(
            f"need 2 <= min_operands <= max_operands, got min_operands={min_operands}, max_operands={max_operands}"
        )
    if not 1 <= max_digits <= 6:
        raise ValueError(f"max_digits must be in 1..6, got {max_digits}")
    ops = tuple(ops)
    if not ops or any(op not in ("+", "-", "*") for op in ops):
        raise ValueError(f"ops must be a non-empty subset of ('+', '-', '*'), got {ops!r}")
    rng = random.Random(seed)
    problems, seen = [], set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(
                f"only {len(problems)} distinct problems found for n={n}; raise max_digits or max_operands"
            )
        k = rng.randint(min_operands, max_operands)
        digits = rng.randint(1, max_digits)
        chosen_ops = [rng.choice(ops) for _ in range(k - 1)]
        numbers = [_operand(rng, digits)]
        for op in chosen_ops:
            numbers.append(rng.randint(2, 9) if op == "*" else _operand(rng, digits))
        expression = "".join(f"{a}{op}" for a, op in zip(numbers, chosen_ops)) + str(numbers[-1])
        if expression in seen:
            continue
        seen.add(expression)
        steps, value = _worked_solution(numbers, chosen_ops)
        solution = ". ".join(steps) + f". The answer is \\boxed{{{value}}}."
        problems.append(
            Problem(
                problem=f"Compute {expression}.",
                answer=str(value),
                solution=solution,
                meta={
                    "source": "arithmetic",
                    "difficulty": k * digits,
                    "operands": k,
                    "digits": digits,
                    "expression": expression,
                },
            )
        )
    return problems


# ----------------------------------------------------------------------------------------------
# generated tasks by name (``dataset: NAME``)
# ----------------------------------------------------------------------------------------------


def arithmetic_task(cfg) -> tuple[list[Problem], list[Problem]]:
    """The ``dataset: arithmetic`` loader: ``train_size + test_size`` problems of the shape ``task_*``
    from ``data_seed``, the first ``train_size`` for training."""
    problems = arithmetic_problems(
        cfg.train_size + cfg.test_size, seed=cfg.data_seed, min_operands=cfg.task_min_operands,
        max_operands=cfg.task_max_operands, max_digits=cfg.task_max_digits, ops=tuple(cfg.task_ops),
    )
    return problems[: cfg.train_size], problems[cfg.train_size :]


#: generated tasks: ``dataset`` name -> ``"module:function"``, a loader ``cfg -> (train, test)``,
#: imported when the task is used (the demo's task lives with the demo, outside the library)
TASKS: dict[str, str] = {
    "arithmetic": "gvm_mini.data:arithmetic_task",
    "rules": "gvm_mini.demo.task:rule_task",
}


def task_loader(name: str):
    """The loader function of the generated task ``name`` (:data:`TASKS`)."""
    import importlib

    module, _, function = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def split_train_test(
    problems: Sequence[Problem], test_fraction: float, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """Shuffle ``problems`` with ``seed`` and split off ``round(test_fraction * len)`` (at least 1) for test.

    Deterministic; both parts keep at least one problem. ValueError if ``test_fraction`` is not in
    (0, 1) or there are fewer than 2 problems.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    problems = list(problems)
    if len(problems) < 2:
        raise ValueError(f"need at least 2 problems to split, got {len(problems)}")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    n_test = min(max(1, round(test_fraction * len(problems))), len(problems) - 1)
    test = [problems[i] for i in order[:n_test]]
    train = [problems[i] for i in order[n_test:]]
    return train, test


# ----------------------------------------------------------------------------------------------
# (b) JSONL
# ----------------------------------------------------------------------------------------------


def load_jsonl(
    path: str | os.PathLike,
    *,
    problem_key: str = "problem",
    answer_key: str = "answer",
    solution_key: str = "solution",
) -> list[Problem]:
    """Problems from a JSONL file: one JSON object per line with ``problem_key`` and ``answer_key``.

    Blank lines are skipped; a list answer gives its first element and numbers are cast to strings
    (as the official eval does); ``solution_key`` is optional; the other fields go to ``meta``
    together with ``source`` (the path) and ``line``. Every problem in the file is reported as a
    ValueError naming the file and the line: missing file, empty file, invalid JSON, a line that is
    not an object, a row without the problem or without an answer.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    problems = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            problem = row.get(problem_key)
            if not isinstance(problem, str) or not problem.strip():
                raise ValueError(
                    f"{path}:{line_no}: row {len(problems)} has no {problem_key!r} text "
                    f"(keys: {', '.join(sorted(row)) or 'none'})"
                )
            answer = _answer_str(row.get(answer_key))
            if answer is None:
                raise ValueError(
                    f"{path}:{line_no}: row {len(problems)} has no answer (key {answer_key!r}; "
                    f"keys present: {', '.join(sorted(row))})"
                )
            solution = row.get(solution_key)
            meta = {k: v for k, v in row.items() if k not in (problem_key, answer_key, solution_key)}
            meta.update(source=path, line=line_no)
            problems.append(
                Problem(problem, answer, solution if isinstance(solution, str) else None, meta)
            )
    if not problems:
        raise ValueError(f"{path}: file is empty (no JSON rows)")
    return problems


# ----------------------------------------------------------------------------------------------
# (c) hub datasets (optional `datasets`, network)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSpec:
    """Where a dataset lives on the hub and how its columns map onto :class:`Problem`.

    ``answer_key=None`` means the answer is the last ``\\boxed{}`` of the ``solution_key`` column.
    ``hub_id`` may contain ``{shard}`` (Numina-Math shards). ``size`` is the expected row count
    (``None`` when it varies), used by the evaluation table.
    """

    name: str
    hub_id: str
    split: str
    problem_key: str
    answer_key: str | None
    solution_key: str | None = None
    config: str | None = None
    size: int | None = None


HUB_DATASETS: dict[str, HubSpec] = {
    spec.name: spec
    for spec in [
        # training (theory/algorithm.md): one shard per EM iteration, shards 1..15; `_15_all` for baselines
        HubSpec("numina_math", "ScaleML-RLHF/numina_math_{shard}", "train", "problem", "answer", "solution"),
        HubSpec("numina_math_cot", "AI-MO/NuminaMath-CoT", "train", "problem", None, "solution"),
        # evaluation (theory/algorithm.md): sizes as in the official eval/data/*.jsonl
        HubSpec("math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", "solution", size=500),
        HubSpec("minerva_math", "math-ai/minervamath", "test", "question", "answer", size=272),
        HubSpec(
            "olympiad_bench", "Hothan/OlympiadBench", "train", "question", "final_answer",
            "solution", config="OE_TO_maths_en_COMP", size=675,
        ),
        HubSpec("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", "solution", size=30),
        HubSpec("amc23", "math-ai/amc23", "test", "question", "answer", size=40),
    ]
}
"""Dataset name -> :class:`HubSpec`. Column names follow the public dataset cards (not checked offline)."""


def hub_row_to_problem(spec: HubSpec, row: dict, index: int = 0) -> Problem | None:
    """Map one hub row (a plain dict) to a :class:`Problem`, or ``None`` if it has no usable answer.

    Answers: the ``answer_key`` column (a list gives its first element, numbers are cast, ``$...$``
    is unwrapped), or the last ``\\boxed{}`` of the solution when ``answer_key`` is ``None``.
    """
    problem = row.get(spec.problem_key)
    if not isinstance(problem, str) or not problem.strip():
        return None
    solution = row.get(spec.solution_key) if spec.solution_key else None
    if isinstance(solution, (list, tuple)):
        solution = solution[0] if solution else None
    solution = solution if isinstance(solution, str) else None
    if spec.answer_key is None:
        answer = extract_boxed(solution) if solution else None
        answer = answer.strip() if answer else None
    else:
        answer = _answer_str(row.get(spec.answer_key))
    if not answer:
        return None
    return Problem(problem, answer, solution, {"source": spec.name, "index": index})


def load_hub(name: str, *, shard: int | str | None = None, limit: int | None = None) -> list[Problem]:
    """Download ``name`` (a key of :data:`HUB_DATASETS`) from the hub and map its rows to Problems.

    ``shard`` picks a Numina-Math shard (``ScaleML-RLHF/numina_math_{shard}``, 1..15, or ``"15_all"``).
    ``limit`` keeps the first rows only. Rows without a usable answer are skipped. Needs the optional
    ``datasets`` package and a reachable hub; says so in one ValueError/ImportError otherwise.
    """
    if name not in HUB_DATASETS:
        raise ValueError(f"unknown hub dataset {name!r}; choose one of {', '.join(HUB_DATASETS)}")
    spec = HUB_DATASETS[name]
    hub_id = spec.hub_id
    if "{shard}" in hub_id:
        if shard is None:
            raise ValueError(f"{name} needs shard=1..15 (or '15_all'): the hub id is {hub_id}")
        hub_id = hub_id.format(shard=shard)
    try:
        import datasets  # optional extra
    except ImportError:
        raise ImportError(
            f"loading {name} ({hub_id}) needs the optional 'datasets' package: `pip install datasets` "
            "(or `pip install gvm-mini[hub]`), and the Hugging Face hub must be reachable. "
            "Offline, use arithmetic_problems(), load_jsonl() or load_champ()."
        ) from None
    try:
        ds = datasets.load_dataset(hub_id, spec.config, split=spec.split)
    except Exception as e:  # network, auth, renamed dataset
        raise ValueError(
            f"could not load {hub_id} (split {spec.split!r}) from the Hugging Face hub: {e}. "
            "Is the hub reachable from this machine?"
        ) from e
    problems = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        p = hub_row_to_problem(spec, row, i)
        if p is not None:
            problems.append(p)
    return problems


# ----------------------------------------------------------------------------------------------
# (d) CHAMP (offline real competition problems)
# ----------------------------------------------------------------------------------------------


def load_champ() -> list[Problem]:
    """The 270 competition problems of CHAMP (``champ-dataset`` on PyPI, MIT licence) as Problems.

    Problem and answer are CHAMP's plain-text ``text`` / ``answer`` (its ``@@`` math markers removed);
    the solution is its steps joined by spaces; ``meta`` has ``id`` and ``category`` (Number-Theory,
    Inequality, Polynomial, Sequence, Combinatorics). Some answers are words ("Yes", "No") or carry a
    remark ("1000 (i.e., all values)"), which Math-Verify may not match; they are kept as published.
    """
    try:
        import champ_dataset
    except ImportError:
        raise ImportError("load_champ() needs `pip install champ-dataset==1.0.0`") from None
    dataset = champ_dataset.load("v0")
    problems = []
    for identifier in sorted(dataset.problems):
        p = dataset.problems[identifier]
        steps = getattr(p.solution, "steps", None) or []
        solution = " ".join(s.text for s in steps if getattr(s, "text", None)) or None
        problems.append(
            Problem(
                problem=p.text,
                answer=p.answer.strip(),
                solution=solution,
                meta={"source": "champ", "id": identifier, "category": p.category},
            )
        )
    return problems


# ----------------------------------------------------------------------------------------------
# (e) the paper's prompt
# ----------------------------------------------------------------------------------------------

DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}"


def format_chat(
    tokenizer,
    problem_text: str,
    *,
    system: str | None = DEFAULT_SYSTEM,
    instruction: str = DEFAULT_INSTRUCTION,
) -> str:
    """The paper's prompt (theory/algorithm.md) rendered by the tokenizer's chat template, ready to generate from.

    Messages: system ``system`` (omitted when ``None``, and then a template may insert its own default:
    SmolLM2's adds "You are a helpful AI assistant named SmolLM, ...", Qwen2.5's "You are Qwen, ...") and user
    ``problem_text + instruction``;
    rendered with ``apply_chat_template(..., add_generation_prompt=True, tokenize=False)``.
    ValueError if the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat template; use an instruct/chat "
            "tokenizer or set tokenizer.chat_template (e.g. a ChatML template)"
        )
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": problem_text + instruction})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)



def prompt_token_lengths(tokenizer, problems, *, system: str | None = DEFAULT_SYSTEM,
                         instruction: str = DEFAULT_INSTRUCTION) -> list[int]:
    """Tokens of each problem's chat prompt (:func:`format_chat`), as the sampler encodes it."""
    texts = [format_chat(tokenizer, p.problem, system=system, instruction=instruction) for p in problems]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def filter_overlong_prompts(tokenizer, problems, max_prompt_length: int, *, system: str | None = DEFAULT_SYSTEM,
                            instruction: str = DEFAULT_INSTRUCTION) -> tuple[list, int]:
    """``(kept, dropped)``: the problems whose chat prompt has at most ``max_prompt_length`` tokens,
    and how many were left out (verl's ``filter_overlong_prompts``). A longer prompt would make vLLM
    refuse the request (``max_model_len``) or eat into the completion budget, and would run the HF
    sampler and the update past the memory plan, which assumes ``max_prompt_length``."""
    lengths = prompt_token_lengths(tokenizer, problems, system=system, instruction=instruction)
    kept = [p for p, n in zip(problems, lengths) if n <= max_prompt_length]
    return kept, len(problems) - len(kept)


def prompts_that_fit(cfg, tokenizer, train, test, *, out=print) -> tuple[list, list]:
    """``(train, test)`` without the prompts longer than ``cfg.max_prompt_length`` tokens after the
    chat template (:func:`filter_overlong_prompts`, with the run's system prompt and instruction);
    the counts left out are reported through ``out`` when there are any."""
    system = DEFAULT_SYSTEM if cfg.system_prompt == "default" else cfg.system_prompt
    instruction = DEFAULT_INSTRUCTION if cfg.instruction == "default" else (cfg.instruction or "")
    kept = []
    for name, problems in (("training", train), ("evaluation", test)):
        fit, dropped = filter_overlong_prompts(tokenizer, problems, cfg.max_prompt_length, system=system,
                                               instruction=instruction)
        if dropped:
            out(f"filter_overlong_prompts: left out {dropped} of {len(problems)} {name} prompts longer than "
                f"max_prompt_length={cfg.max_prompt_length} tokens")
        kept.append(fit)
    return kept[0], kept[1]
