"""Tests for gvm_mini.data: arithmetic generator, train/test split, JSONL errors, hub row mapping, CHAMP, chat prompt."""

import json
import re
from collections import Counter

import pytest

from gvm_mini.data import (
    DEFAULT_INSTRUCTION,
    DEFAULT_SYSTEM,
    HUB_DATASETS,
    Problem,
    arithmetic_problems,
    format_chat,
    hub_row_to_problem,
    load_champ,
    load_hub,
    load_jsonl,
    split_train_test,
)
from gvm_mini.rewards import exact_match_score, extract_boxed

# ------------------------------------------------------------------ (a) arithmetic task


def test_arithmetic_answers_match_python_eval():
    problems = arithmetic_problems(300, seed=0)
    for p in problems:
        expression = re.fullmatch(r"Compute (.+)\.", p.problem).group(1)
        assert expression == p.meta["expression"]
        assert re.fullmatch(r"[\d+\-*]+", expression)  # only integers and + - *
        assert int(p.answer) == eval(expression)  # independent recomputation, Python precedence
        assert extract_boxed(p.solution) == p.answer
        assert exact_match_score(p.solution, p.answer) == 1.0


def test_arithmetic_worked_solution_hand_example():
    """Every step of a solution is a true equation and products come first."""
    for p in arithmetic_problems(200, seed=1):
        steps = p.solution.split(". The answer is")[0].split(". ")
        assert len(steps) == p.meta["operands"] - 1  # one step per operator
        for step in steps:
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs)
        n_products = p.meta["expression"].count("*")
        assert all("*" in s for s in steps[:n_products])


def test_arithmetic_deterministic_from_seed():
    a = arithmetic_problems(50, seed=7)
    b = arithmetic_problems(50, seed=7)
    c = arithmetic_problems(50, seed=8)
    assert a == b
    assert [p.problem for p in a] != [p.problem for p in c]


def test_arithmetic_difficulty_spread_and_ranges():
    problems = arithmetic_problems(500, seed=0)
    assert len({p.problem for p in problems}) == 500  # distinct
    difficulty = Counter(p.meta["difficulty"] for p in problems)
    # operands in {2,3,4} x digits in {1,2,3}: products 2,3,4,6,8,9,12 all occur
    assert set(difficulty) == {2, 3, 4, 6, 8, 9, 12}
    for p in problems:
        assert 2 <= p.meta["operands"] <= 4 and 1 <= p.meta["digits"] <= 3
        assert p.meta["difficulty"] == p.meta["operands"] * p.meta["digits"]
        for number in re.findall(r"\d+", p.meta["expression"]):
            assert len(number) <= 3


def test_arithmetic_options():
    easy = arithmetic_problems(30, seed=0, min_operands=2, max_operands=2, max_digits=1, ops=("+",))
    assert all(re.fullmatch(r"Compute \d\+\d\.", p.problem) for p in easy)
    assert all(p.meta["difficulty"] == 2 for p in easy)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=-1), "n must be a non-negative integer"),
        (dict(n=5, min_operands=1), "need 2 <= min_operands <= max_operands"),
        (dict(n=5, min_operands=4, max_operands=3), "need 2 <= min_operands <= max_operands"),
        (dict(n=5, max_digits=0), "max_digits must be in 1..6"),
        (dict(n=5, ops=("/",)), "ops must be a non-empty subset"),
        (dict(n=200, max_operands=2, max_digits=1, ops=("+",)), "only 100 distinct problems found for n=200"),
    ],
)
def test_arithmetic_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        arithmetic_problems(seed=0, **kwargs)


def test_arithmetic_is_short_for_a_small_bpe():
    """Problem + solution stay within 60 tokens of a 400-token byte-level BPE trained on the task."""
    tokenizers = pytest.importorskip("tokenizers")
    problems = arithmetic_problems(2000, seed=0)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([p.problem + " " + p.solution for p in problems[:1000]], trainer)
    lengths = [len(tok.encode(p.problem + " " + p.solution).ids) for p in problems[1000:]]
    assert max(lengths) <= 60


def test_split_train_test():
    problems = arithmetic_problems(10, seed=0)
    train, test = split_train_test(problems, 0.2, seed=0)
    assert len(train) == 8 and len(test) == 2
    assert sorted(p.problem for p in train + test) == sorted(p.problem for p in problems)
    assert split_train_test(problems, 0.2, seed=0) == (train, test)  # deterministic
    assert split_train_test(problems, 0.2, seed=1) != (train, test)
    assert [len(x) for x in split_train_test(problems[:2], 0.01, seed=0)] == [1, 1]


@pytest.mark.parametrize(
    "fraction, n, message",
    [(0.0, 10, "test_fraction must be in (0, 1)"), (1.0, 10, "test_fraction must be in (0, 1)"),
     (0.5, 1, "need at least 2 problems to split, got 1")],
)
def test_split_errors(fraction, n, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        split_train_test(arithmetic_problems(n, seed=0), fraction, seed=0)


# ------------------------------------------------------------------ (b) JSONL


def write(tmp_path, text, name="data.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_jsonl_reads_rows(tmp_path):
    path = write(
        tmp_path,
        json.dumps({"problem": "1+1?", "answer": "2", "solution": "1+1=2", "level": 1}) + "\n\n"
        + json.dumps({"problem": "2+2?", "answer": 4}) + "\n"
        + json.dumps({"problem": "roots?", "answer": ["1", "2"]}) + "\n",
    )
    problems = load_jsonl(path)
    assert [p.answer for p in problems] == ["2", "4", "1"]  # numbers cast, lists give first element
    assert problems[0].solution == "1+1=2" and problems[1].solution is None
    assert problems[0].meta == {"level": 1, "source": str(path), "line": 1}
    assert problems[1].meta["line"] == 3


def test_load_jsonl_custom_keys(tmp_path):
    path = write(tmp_path, json.dumps({"question": "q", "final_answer": ["$x$"]}) + "\n")
    (p,) = load_jsonl(path, problem_key="question", answer_key="final_answer")
    assert p == Problem("q", "x", None, {"source": str(path), "line": 1})


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "data.jsonl: file is empty (no JSON rows)"),
        ("\n  \n", "data.jsonl: file is empty (no JSON rows)"),
        ('{"problem": "a", "answer": "1"}\n{"problem": \n', "data.jsonl:2: invalid JSON"),
        ('[1, 2]\n', "data.jsonl:1: expected a JSON object, got list"),
        ('{"problem": "a", "answer": "1"}\n{"answer": "1"}\n', "data.jsonl:2: row 1 has no 'problem' text"),
        ('{"problem": "a"}\n', "data.jsonl:1: row 0 has no answer (key 'answer'; keys present: problem)"),
        ('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": ""}\n', "data.jsonl:3: row 1 has no answer"),
        ('{"problem": "a", "answer": []}\n', "data.jsonl:1: row 0 has no answer"),
        ('{"problem": "a", "answer": null}\n', "data.jsonl:1: row 0 has no answer"),
    ],
)
def test_load_jsonl_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_jsonl(write(tmp_path, text))


def test_load_jsonl_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match=re.escape(f"{missing}: no such file")):
        load_jsonl(missing)


# ------------------------------------------------------------------ (c) hub table and row mapping (no network)


def test_hub_table():
    assert HUB_DATASETS["numina_math"].hub_id.format(shard=3) == "ScaleML-RLHF/numina_math_3"
    assert HUB_DATASETS["numina_math_cot"].hub_id == "AI-MO/NuminaMath-CoT"
    assert HUB_DATASETS["math500"].hub_id == "HuggingFaceH4/MATH-500"
    sizes = {n: HUB_DATASETS[n].size for n in ("math500", "minerva_math", "olympiad_bench", "aime24", "amc23")}
    assert sizes == {"math500": 500, "minerva_math": 272, "olympiad_bench": 675, "aime24": 30, "amc23": 40}


@pytest.mark.parametrize(
    "name, row, problem, answer",
    [
        ("numina_math", {"problem": "P", "answer": "3", "solution": "S"}, "P", "3"),
        ("numina_math_cot", {"problem": "P", "solution": "so \\boxed{\\frac{1}{2}}."}, "P", "\\frac{1}{2}"),
        ("math500", {"problem": "P", "answer": "\\pi", "solution": "S", "level": 5}, "P", "\\pi"),
        ("minerva_math", {"question": "Q", "answer": "7.5"}, "Q", "7.5"),
        ("olympiad_bench", {"question": "Q", "final_answer": ["$\\frac{1}{2}$"], "solution": ["S"]}, "Q", "\\frac{1}{2}"),
        ("aime24", {"problem": "P", "answer": "204", "solution": "S"}, "P", "204"),
        ("amc23", {"question": "Q", "answer": 27.0}, "Q", "27"),
    ],
)
def test_hub_row_to_problem(name, row, problem, answer):
    p = hub_row_to_problem(HUB_DATASETS[name], row, 5)
    assert (p.problem, p.answer) == (problem, answer)
    assert p.meta == {"source": name, "index": 5}


@pytest.mark.parametrize(
    "name, row",
    [
        ("numina_math_cot", {"problem": "P", "solution": "no box"}),
        ("math500", {"problem": "P", "answer": ""}),
        ("math500", {"answer": "3"}),
        ("olympiad_bench", {"question": "Q", "final_answer": []}),
    ],
)
def test_hub_row_without_answer_is_skipped(name, row):
    assert hub_row_to_problem(HUB_DATASETS[name], row) is None


def test_load_hub_errors():
    with pytest.raises(ValueError, match="unknown hub dataset 'gsm8k'; choose one of numina_math"):
        load_hub("gsm8k")
    with pytest.raises(ValueError, match=re.escape("numina_math needs shard=1..15")):
        load_hub("numina_math")


def test_load_hub_without_datasets_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match=r"`pip install datasets`.*hub must be reachable"):
        load_hub("math500")


# ------------------------------------------------------------------ (d) CHAMP


def test_load_champ():
    pytest.importorskip("champ_dataset")
    problems = load_champ()
    assert len(problems) == 270
    assert Counter(p.meta["category"] for p in problems) == {
        "Number-Theory": 80, "Inequality": 50, "Polynomial": 50, "Sequence": 50, "Combinatorics": 40,
    }
    first = next(p for p in problems if p.meta["id"] == "P_Combinatorics_1")
    assert first.answer == "239"
    assert first.problem.startswith("Let a string consist of digit 1, 2, 3.")
    assert all(p.problem and p.answer and "@@" not in p.problem + p.answer for p in problems)


# ------------------------------------------------------------------ (e) chat prompt


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", chat_template=CHATML)


def test_format_chat_exact_string(chat_tokenizer):
    assert DEFAULT_SYSTEM == "Please reason step by step, and put your final answer within \\boxed{}."
    assert DEFAULT_INSTRUCTION == " Let's think step by step and output the final answer within \\boxed{}"
    expected = (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1? Let's think step by step and output the final answer within \\boxed{}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert format_chat(chat_tokenizer, "What is 1+1?") == expected


def test_format_chat_without_system(chat_tokenizer):
    out = format_chat(chat_tokenizer, "Q", system=None, instruction="")
    assert out == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_format_chat_needs_a_template(chat_tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="tokenizer NoTemplate has no chat template"):
        format_chat(NoTemplate(), "Q")


# ---------------------------------------------------------------------------------------------
# the demo's rule task
# ---------------------------------------------------------------------------------------------


def test_rule_solution_by_hand():
    from gvm_mini.demo.task import rule_solution
    from gvm_mini.rewards import exact_match_score

    assert rule_solution("dbl", 7, 3) == "dbl: 2*7+3=17. \\boxed{17}"
    assert rule_solution("rsub", 7, 3) == "rsub: 3-7=-4. \\boxed{-4}"
    assert rule_solution("neg", 7, 3) == "neg: -7-3=-10. \\boxed{-10}"
    assert exact_match_score(rule_solution("dbl", 7, 3), "17") == 1.0
    assert exact_match_score(rule_solution("inc", 7, 3), "17") == 0.0


def test_rule_procedures_disagree_on_every_pair():
    # what makes "correct" mean "wrote the family's procedure and computed it right"
    from gvm_mini.demo.task import RULE_PROCEDURES, rule_pairs

    pairs = rule_pairs()
    assert len(pairs) == 53  # 8 x 7 ordered pairs of 2..9, minus (2,3), (3,2) (mul = inc) and (2,4) (mul = dbl)
    for a, b in pairs:
        values = [fn(a, b) for fn, _ in RULE_PROCEDURES.values()]
        assert len(set(values)) == len(values), (a, b, values)
    # and the excluded pairs really are collisions
    assert RULE_PROCEDURES["mul"][0](2, 3) == RULE_PROCEDURES["inc"][0](2, 3) == 6
    assert RULE_PROCEDURES["mul"][0](2, 4) == RULE_PROCEDURES["dbl"][0](2, 4) == 8


def test_rule_problems_split_per_family():
    from gvm_mini.demo.task import RULE_FAMILIES, rule_problems

    train, test = rule_problems(16, seed=1234)
    assert len(test) == 16 * 8 and len(train) == 37 * 8
    for fam in RULE_FAMILIES:
        assert sum(p.meta["family"] == fam for p in test) == 16
    assert not {p.problem for p in train} & {p.problem for p in test}
    p = next(p for p in train if p.meta["family"] == "G")
    a, b = p.meta["a"], p.meta["b"]
    assert p.problem == f"rule G: {a} {b}" and p.answer == str(2 * a + b) and p.meta["difficulty"] == 6
    assert rule_problems(16, seed=1234)[1][0].problem == test[0].problem  # deterministic
    with pytest.raises(ValueError, match="test_per_family"):
        rule_problems(53, seed=0)
    with pytest.raises(ValueError, match="unknown rule families"):
        rule_problems(4, seed=0, families=["Z"])


def test_overlong_prompts_are_filtered_and_counted():
    """verl's filter_overlong_prompts: a prompt whose chat template renders to more than
    max_prompt_length tokens is left out, at load, and the count is reported."""
    from types import SimpleNamespace

    from gvm_mini.data import Problem, filter_overlong_prompts, format_chat, prompt_token_lengths, prompts_that_fit
    from gvm_mini.models import offline_tokenizer

    tok = offline_tokenizer()
    problems = [Problem("What is " + " + ".join(["12"] * k) + "?", "0") for k in (1, 5, 20, 60)]
    lengths = prompt_token_lengths(tok, problems)
    assert lengths == [len(tok(format_chat(tok, p.problem), add_special_tokens=False)["input_ids"]) for p in problems]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    kept, dropped = filter_overlong_prompts(tok, problems, lengths[1])  # exactly max_prompt_length fits
    assert kept == problems[:2] and dropped == 2
    said = []
    cfg = SimpleNamespace(system_prompt="default", instruction="default", max_prompt_length=lengths[2])
    train, test = prompts_that_fit(cfg, tok, problems, problems[2:], out=said.append)
    assert train == problems[:3] and test == problems[2:3]
    assert prompts_that_fit(cfg, tok, problems[:1], [], out=said.append) == (problems[:1], [])  # no evaluation set
    assert said == [f"filter_overlong_prompts: left out 1 of 4 training prompts longer than max_prompt_length={lengths[2]} tokens",
                    f"filter_overlong_prompts: left out 1 of 2 evaluation prompts longer than max_prompt_length={lengths[2]} tokens"]
