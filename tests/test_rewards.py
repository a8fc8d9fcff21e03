"""Tests for gvm_mini.rewards: extraction, Math-Verify equivalence, exact match, and adversarial inputs."""

import threading
import time

import pytest

from gvm_mini import rewards
from gvm_mini.rewards import (
    exact_match_score,
    explosive_reason,
    extract_boxed,
    get_verifier,
    math_verify_score,
    sanitize,
)

LIMIT_S = 1.0  # behavioural bound from the spec: every adversarial input is scored within 1 s


@pytest.fixture(scope="module", autouse=True)
def warm_math_verify():
    """Import Math-Verify and build its LaTeX parser once, as the first real call would."""
    rewards._math_verify()


def timed(fn, *args, **kw):
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


# ------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # last box wins
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
        ("\\fbox{7}", "7"),
        ("\\boxed {5}", "5"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are literal
        ("\\boxed{a \\boxed{b}}", "b"),  # the box that opens last
        ("\\boxed{3} and a truncated \\boxed{4", "3"),  # unclosed box skipped
        ("no box here", None),
        ("\\boxed{", None),
        ("\\boxed{}", ""),
        (None, None),
        (12, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_is_bounded_on_huge_input():
    text = "{" * 1_000_000 + "\\boxed{" * 100_000
    out, dt = timed(extract_boxed, text)
    assert out is None
    assert dt <= LIMIT_S


def test_sanitize():
    assert sanitize(None) is None
    assert sanitize(b"\xff\\boxed{1}") == "\ufffd\\boxed{1}"
    assert sanitize("a\udcffb") == "ab"
    assert sanitize("a\x00b\x07c\td\ne") == "abc\td\ne"
    assert sanitize("x" * 10 + "tail", max_chars=4) == "tail"


# ------------------------------------------------------------------ Math-Verify


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("The answer is \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("The answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("so \\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0),
        ("\\boxed{3}", "4", 0.0),
        ("\\boxed{2^{2024}}", "2^{2024}", 1.0),
        ("\\boxed{e^{-x^2}}", "e^{-x^{2}}", 1.0),
        # Math-Verify (boxed="all") reads several boxes as the set {5, 7}: not equal to 7, as officially
        ("first \\boxed{5} then \\boxed{7}", "7", 0.0),
        ("first \\boxed{5} then \\boxed{7}", "5, 7", 1.0),
        ("The final answer is 7", "7", 1.0),  # ExprExtractionConfig, as the official pred config
        ("\\boxed{3}", 3, 1.0),  # numeric gold is cast to str
        ("\\boxed{3}", ["3", "4"], 1.0),  # gold list -> first element
        ("\\boxed{4}", ["3", "4"], 0.0),
        ("I don't know", "3", 0.0),
        ("", "3", 0.0),
        ("\\boxed{3}", "", 0.0),
        ("\\boxed{3}", None, 0.0),
    ],
)
def test_math_verify_score(completion, answer, expected):
    assert math_verify_score(completion, answer) == expected


def test_math_verify_score_works_outside_the_main_thread():
    out = {}
    t = threading.Thread(target=lambda: out.update(s=math_verify_score("\\boxed{0.5}", "\\frac{1}{2}")))
    t.start()
    t.join(10)
    assert out["s"] == 1.0


def _in_thread(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # pragma: no cover - reported below
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(120)
    assert "error" not in out, out.get("error")
    return out["value"]


def test_long_sum_from_a_thread_is_cut_at_the_deadline():
    """A 32 kB ``\\boxed{1+1+...+1}`` passes the pre-screen and takes seconds in sympy (7.5 s measured
    when unbounded off the main thread). From a thread it now runs in a worker process that is
    killed at the 1 s deadline: scored 0 within 1.5 s, and the next call gets a fresh worker."""
    big = "\\boxed{" + "+".join(["1"] * 16_000) + "}"
    assert len(big) >= 32_000 and explosive_reason(big) is None

    def work():
        rewards.warm_up_verify_pool(1)  # a worker's start-up is not charged to any call
        big_call = timed(math_verify_score, big, "16000", timeout_s=1.0)
        after = math_verify_score("\\boxed{0.5}", "\\frac{1}{2}")
        return big_call, after

    (score, dt), after = _in_thread(work)
    assert score == 0.0
    assert dt < 1.5, f"{dt:.2f} s"
    assert after == 1.0


def test_thread_path_scores_like_the_main_thread():
    cases = [("\\boxed{0.5}", "\\frac{1}{2}"), ("so x = 3", "3"), ("\\boxed{2}", "3"), ("$\\sqrt{4}$", "2"),
             ("\\boxed{\\frac{2}{4}}", "0.5"), ("no answer", "1"), (None, "1"), ("\\boxed{x^2}", "x^2")]
    main = [math_verify_score(c, a) for c, a in cases]
    assert main == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert _in_thread(lambda: [math_verify_score(c, a) for c, a in cases]) == main


def test_deadline_backstop_interrupts_slow_parse():
    """3000 letters pass the pre-screen but take ~1 s to parse: the deadline cuts it to ~timeout_s."""
    text = "\\boxed{" + "x" * 3000 + "}"
    assert explosive_reason(text) is None
    score, dt = timed(math_verify_score, text, "1", timeout_s=0.3)
    assert score == 0.0
    assert dt <= 0.3 + 0.2


def test_deadline_restores_previous_alarm_handler():
    import signal

    sentinel = lambda signum, frame: None  # noqa: E731
    old = signal.signal(signal.SIGALRM, sentinel)
    try:
        math_verify_score("\\boxed{1}", "1")
        assert signal.getsignal(signal.SIGALRM) is sentinel
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ pre-screen


@pytest.mark.parametrize(
    "text, reason_start",
    [
        ("\\boxed{" + "{" * 20 + "1" + "}" * 20 + "}", "bracket nesting"),
        ("\\boxed{10^{10^{10}}}", "numeric power tower"),
        ("\\boxed{2^{2^{2^{2^{2^{2}}}}}}", "numeric power tower"),
        ("answer: 9^9^9", "numeric power tower"),
        ("the answer is 10**10**10", "numeric power tower"),
        ("\\boxed{10^{1000000000}}", "numeric exponent"),
        ("\\boxed{99999!}", "factorial"),
        ("\\boxed{(10^{6})!}", "factorial"),
    ],
)
def test_explosive_reason_flags(text, reason_start):
    assert explosive_reason(text).startswith(reason_start)


@pytest.mark.parametrize(
    "text",
    ["\\boxed{2^{2024}}", "\\boxed{x^{100000}}", "\\boxed{e^{-x^2}}", "\\boxed{5!}", "Great! \\boxed{3}",
     "\\boxed{\\left(\\frac{\\sqrt{2}}{2}, \\frac{\\sqrt{3}}{2}\\right)}"],
)
def test_explosive_reason_allows_ordinary_answers(text):
    assert explosive_reason(text) is None


# ------------------------------------------------------------------ adversarial inputs: score 0 (or right), never raise, <= 1 s

ADVERSARIAL = {
    "1M chars then box": ("a" * 1_000_000 + " \\boxed{3}", "3", 1.0),
    "1M chars no box": ("x" * 1_000_000, "3", 0.0),
    "1M open braces": ("{" * 1_000_000, "3", 0.0),
    "10k nested braces": ("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1", 0.0),
    "10k unclosed braces": ("\\boxed{" + "{" * 10_000, "1", 0.0),
    "exponent tower": ("\\boxed{10^{10^{10}}}", "1", 0.0),
    "huge exponent": ("\\boxed{10^{1000000000}}", "1", 0.0),
    "expr tower": ("the final answer is 10**10**10", "1", 0.0),
    "factorial": ("\\boxed{99999!}", "1", 0.0),
    "factorial of power": ("\\boxed{(10^{6})!}", "1", 0.0),
    "invalid utf-8 bytes": (b"\xff\xfe\xc3( \\boxed{3}", "3", 1.0),
    "surrogate escapes": (b"\xff\\boxed{3}".decode("utf-8", "surrogateescape"), "3", 1.0),
    "control characters": ("\x00\x07\x1b[31m\\boxed{3}\x7f\x9b", "3", 1.0),
    "None completion": (None, "3", 0.0),
    "bytes answer garbage": ("\\boxed{3}", b"\xff\xff", 0.0),
    "list completion": (["\\boxed{3}"], "3", 0.0),
    "adversarial gold": ("\\boxed{1}", "10^{10^{10}}", 0.0),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_math_verify(name):
    completion, answer, expected = ADVERSARIAL[name]
    score, dt = timed(math_verify_score, completion, answer)
    assert score == expected
    assert dt <= LIMIT_S, f"{name}: {dt:.3f} s"


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_exact_match(name):
    completion, answer, expected = ADVERSARIAL[name]
    score, dt = timed(exact_match_score, completion, answer)
    assert score in (0.0, 1.0)
    assert dt <= LIMIT_S, f"{name}: {dt:.3f} s"


# ------------------------------------------------------------------ exact match


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("\\boxed{1234}", "1234", 1.0),
        ("\\boxed{ +1,234 }", "1234", 1.0),
        ("\\boxed{1\\,234}", "1234", 1.0),
        ("\\boxed{$-7$}", "-7", 1.0),
        ("\\boxed{\u22127}", "-7", 1.0),
        ("\\boxed{007}", "7", 1.0),
        ("\\boxed{-7}", -7, 1.0),
        ("\\boxed{7}", "-7", 0.0),
        ("\\boxed{12}", "1234", 0.0),
        ("the answer is 1234", "1234", 0.0),  # no box
        ("\\boxed{}", "1234", 0.0),
        ("\\boxed{" + "9" * 10_000 + "}", "9", 0.0),
        ("\\boxed{x+1}", "x + 1", 1.0),  # non-integers compare as normalised strings
        # a comma is a thousands separator only between groups of three digits
        ("\\boxed{1,234}", "1234", 1.0),
        ("\\boxed{1,234,567}", "1234567", 1.0),
        ("\\boxed{1,2}", "12", 0.0),  # a list of two numbers, not twelve
        ("\\boxed{12,34}", "1234", 0.0),
        ("\\boxed{1234,567}", "1234567", 0.0),  # first group longer than three
        ("\\boxed{1,2345}", "12345", 0.0),
        ("\\boxed{-1,000}", "-1000", 1.0),
        ("\\boxed{-1,000}", "1000", 0.0),
        ("\\boxed{1,000.5}", "1000.5", 1.0),
        ("\\boxed{1,00.5}", "100.5", 0.0),
        ("\\boxed{1,234}", "1,234", 1.0),  # gold written with the separator too
        ("\\boxed{1,2}", "1,2", 1.0),  # the same list, compared as strings
    ],
)
def test_exact_match_score(completion, answer, expected):
    assert exact_match_score(completion, answer) == expected


def test_get_verifier():
    assert get_verifier("math_verify") is math_verify_score
    assert get_verifier("exact") is exact_match_score
    assert get_verifier("last_number") is rewards.last_number_score
    with pytest.raises(ValueError, match=r"unknown verifier 'sympy'; choose one of exact, last_number, math_verify"):
        get_verifier("sympy")


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("9 + 5 = 14.", "14", 1.0),
        ("To find 9+5, we add 9 and 5. 9 + 5 equals 14, and 14 is", "14", 1.0),
        ("16-53 = -37", "-37", 1.0),  # a minus after a space is a sign
        ("The answer is \u221212", "-12", 1.0),  # Unicode minus
        ("$-37$", "-37", 1.0),
        ("so 1,234 in all", "1234", 1.0),
        ("\\boxed{7} because 3+4", "7", 1.0),  # a boxed answer wins over later numbers
        ("007", "7", 1.0),
        # what Math-Verify accepts and this verifier must not: the question restated as the answer
        ("9+5 is a number.", "14", 0.0),
        ("9-5", "4", 0.0),  # a minus after a digit is a binary minus: the last number is 5
        ("92+33 = 125\n\nThis is the sum of 92 and 33.", "125", 0.0),  # the last number counts
        ("fourteen", "14", 0.0),
        (None, "14", 0.0),
        ("14", None, 0.0),
    ],
)
def test_last_number_score(completion, answer, expected):
    assert rewards.last_number_score(completion, answer) == expected


def test_math_verify_accepts_a_restated_question_which_is_why_last_number_exists():
    """Math-Verify evaluates the expression it extracts: "9+5 is a number." scores 1 for the answer 14.
    SmolLM2-135M-Instruct trained with it on generated arithmetic learned exactly this (bench/README.md)."""
    assert math_verify_score("9+5 is a number.", "14") == 1.0
    assert rewards.last_number_score("9+5 is a number.", "14") == 0.0


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_last_number(name):
    completion, answer, expected = ADVERSARIAL[name]
    score, dt = timed(rewards.last_number_score, completion, answer)
    assert score in (0.0, 1.0)
    assert dt <= LIMIT_S, f"{name}: {dt:.3f} s"
