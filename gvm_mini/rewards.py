"""Answer extraction and verification: the 0/1 reward of theory/algorithm.md, never raising.

The official code scores a completion with Math-Verify (``verl/utils/reward_score/math_verify.py``,
``em/utils.compute_score_math_verify``)::

    verify_func = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                              pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))
    score, _ = verify_func(["\\boxed{" + answer + "}"], [completion])     # exceptions -> 0

:func:`math_verify_score` does the same with ``math_verify.parse`` / ``math_verify.verify`` (what
``math_metric`` calls inside), but with Math-Verify's own ``signal.alarm`` timeouts switched off
(``parsing_timeout=None``, ``timeout_seconds=None``): ``signal.alarm`` raises outside the main
thread and only has whole-second resolution. Time is bounded here instead, in three layers:

1. **Bounded input.** ``None`` and non-text score 0; bytes are decoded (invalid UTF-8 replaced), lone
   surrogates and control characters are dropped, and only the last :data:`MAX_COMPLETION_CHARS`
   characters are kept (the final answer is at the end of a chain of thought).
2. **Cheap pre-screen** (linear time, works in any thread): text that would make sympy or the LaTeX
   parser explode scores 0 without being parsed: bracket nesting deeper than
   :data:`MAX_BRACKET_DEPTH` (the LaTeX parser is exponential in depth: 12 nested braces take ~2 s),
   numeric power towers (``10^{10^{10}}``, ``9**9**9``), numeric exponents above
   :data:`MAX_EXPONENT`, factorials of numbers above :data:`MAX_FACTORIAL` or of towers.
3. **Deadline.** In the main thread a ``signal.setitimer`` deadline of ``timeout_s`` (sub-second
   resolution) interrupts whatever is left (CPython big-integer arithmetic and sympy both stop at it);
   the previous ``SIGALRM`` handler and timer are restored afterwards. Outside the main thread no
   signal can be used, so the call goes to a small pool of worker processes instead and waits at most
   ``timeout_s`` for the answer; a worker that misses it is killed and replaced, and the call scores
   0 (:class:`_VerifyPool`). The main thread keeps the in-process timer, the faster path: over 300
   varied answers on a 2-core CPU a call cost 1.87 ms median (3.66 ms mean) there against 1.99 ms
   (3.94 ms mean) through a worker, the difference being the pipe round trip.

:func:`exact_match_score` is the cheap verifier for the generated arithmetic task (``data.py``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import signal
import sys
import threading
import time
from typing import Callable

__all__ = [
    "MAX_COMPLETION_CHARS",
    "MAX_BRACKET_DEPTH",
    "MAX_EXPONENT",
    "MAX_FACTORIAL",
    "extract_boxed",
    "sanitize",
    "explosive_reason",
    "math_verify_score",
    "exact_match_score",
    "warm_up_verify_pool",
    "VERIFIERS",
    "get_verifier",
    "ACCEPT_ABOVE",
    "accepted",
    "score_rollout",
]

MAX_COMPLETION_CHARS = 32_768
"""Only this many trailing characters of a completion are looked at (3072 tokens is ~12k chars)."""
MAX_BRACKET_DEPTH = 8
"""Deeper nesting of ``{ ( [`` anywhere in the kept text scores 0 without parsing."""
MAX_EXPONENT = 10_000
"""A purely numeric exponent larger than this scores 0 without parsing (``2^{2024}`` is allowed)."""
MAX_FACTORIAL = 5_000
"""``n!`` with a literal ``n`` larger than this scores 0 without parsing."""
_MAX_ANSWER_CHARS = 1_000  # a gold answer longer than this is malformed data, not math

Verifier = Callable[[object, object], float]


# ----------------------------------------------------------------------------------------------
# layer 1: bounded, clean text
# ----------------------------------------------------------------------------------------------

# C0 and C1 control characters except tab, newline and carriage return.
_CONTROL = {c: None for c in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)]}


def sanitize(text, *, max_chars: int = MAX_COMPLETION_CHARS) -> str | None:
    """Model output -> clean ``str`` of at most ``max_chars`` trailing characters, or ``None``.

    ``bytes`` are decoded as UTF-8 with invalid sequences replaced; lone surrogates (from
    ``surrogateescape`` decoding) and control characters are removed. Anything that is not ``str`` or
    ``bytes`` (``None``, numbers, lists) gives ``None``. Work is bounded by ``max_chars``, not by the
    input length.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text[-4 * max_chars :]).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return None
    text = text[-max_chars:]
    text = text.encode("utf-8", errors="ignore").decode("utf-8")  # drops lone surrogates
    return text.translate(_CONTROL)


def _answer_text(answer) -> str | None:
    """Gold answer -> string: lists/tuples give their first element, numbers are cast (theory/algorithm.md)."""
    if isinstance(answer, (list, tuple)):
        answer = answer[0] if answer else None
    if isinstance(answer, bool) or answer is None:
        return None
    if isinstance(answer, float) and math.isfinite(answer) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, (int, float)):
        answer = str(answer)
    text = sanitize(answer, max_chars=_MAX_ANSWER_CHARS + 1)
    if text is None or not text.strip() or len(text) > _MAX_ANSWER_CHARS:
        return None
    return text.strip()


# ----------------------------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------------------------

_BOX_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")


def extract_boxed(text) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, nested braces handled.

    "Last" is the box that opens last (the convention of the MATH reference code
    ``last_boxed_only_string``), so ``\\boxed{a} ... \\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``.
    Escaped braces ``\\{ \\}`` are literal characters, not grouping. A box that is never closed (a
    truncated completion) is skipped. One left-to-right pass over the brace tokens with a stack:
    linear time; inputs longer than :data:`MAX_COMPLETION_CHARS` are cut to their tail first.
    Returns ``None`` when there is no closed box or ``text`` is not text.
    """
    text = sanitize(text)
    if text is None or ("boxed" not in text and "fbox" not in text):
        return None
    stack: list[int] = []  # for each open brace: content start if it opened a box, else -1
    best_start, best = -1, None
    for m in _BOX_TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == "\\" and len(tok) == 2:  # \{ or \}: literal
            continue
        if tok == "}":
            if stack:
                start = stack.pop()
                if start > best_start:
                    best_start, best = start, text[start : m.start()]
            continue
        stack.append(m.end() if tok != "{" else -1)
    return best


# ----------------------------------------------------------------------------------------------
# layer 2: pre-screen for inputs that make sympy / the LaTeX parser explode
# ----------------------------------------------------------------------------------------------

_OPEN, _CLOSE = frozenset("{(["), frozenset("})]")
_POWER = re.compile(r"\^|\*\*")
_NUMERIC_TOWER = re.compile(r"\d\s*\}?\s*(?:\^|\*\*)\s*\{?\s*[\d.]+\s*\}?\s*(?:\^|\*\*)")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_INT = re.compile(r"\d[\d,]*")
_FACTORIAL_ARG = re.compile(r"(\d[\d,]*)\s*$")


def _bracket_depth_exceeds(text: str, limit: int) -> bool:
    depth = 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif ch in _CLOSE and depth > 0:
            depth -= 1
    return False


def _group_after(text: str, i: int, limit: int = 200) -> str:
    """The exponent starting at ``text[i]``: a balanced ``{...}`` / ``(...)`` group or one token."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return ""
    if text[i] in "{(":
        depth, j = 0, i
        while j < len(text) and j - i < limit:
            depth += text[j] in "{("
            depth -= text[j] in "})"
            j += 1
            if depth == 0:
                break
        return text[i + 1 : j - 1] if depth == 0 else text[i + 1 : j]
    m = re.compile(r"[-+]?[\d.,]+|\\?[A-Za-z]+").match(text, i, i + limit)
    return m.group() if m else text[i]


def _group_before(text: str, i: int, limit: int = 200) -> str:
    """The factorial argument ending just before ``text[i]``: a balanced group or trailing digits."""
    j = i - 1
    while j >= 0 and text[j] == " ":
        j -= 1
    if j < 0:
        return ""
    if text[j] in "})":
        depth, k = 0, j
        while k >= 0 and j - k < limit:
            depth += text[k] in "})"
            depth -= text[k] in "{("
            if depth == 0:
                return text[k + 1 : j]
            k -= 1
        return text[max(k, 0) : j]
    m = _FACTORIAL_ARG.search(text, max(0, j + 1 - limit), j + 1)
    return m.group(1) if m else ""


def _is_numeric(group: str) -> bool:
    return not re.search(r"[A-Za-z]", _LATEX_CMD.sub(" ", group))


def _max_int(group: str) -> int:
    best = 0
    for m in _INT.finditer(group):
        digits = m.group().replace(",", "")
        if len(digits) > 12:
            return 10**12
        best = max(best, int(digits))
    return best


def explosive_reason(text: str) -> str | None:
    """Why ``text`` would make the parser or sympy explode (a short reason), or ``None`` if it is safe.

    Checks, all linear in ``len(text)``: bracket nesting deeper than :data:`MAX_BRACKET_DEPTH`; a
    numeric power tower (``10^{10^{10}}``, ``9^9^9``, ``10**10**10``); a numeric exponent above
    :data:`MAX_EXPONENT` on a base that is not a letter; a factorial of a number above
    :data:`MAX_FACTORIAL` or of an expression containing a power or factorial. Symbolic powers
    (``x^{100000}``, ``e^{-x^2}``, ``2^{n}``) are allowed: sympy keeps them unevaluated.
    """
    if _bracket_depth_exceeds(text, MAX_BRACKET_DEPTH):
        return f"bracket nesting deeper than {MAX_BRACKET_DEPTH}"
    if _NUMERIC_TOWER.search(text):
        return "numeric power tower"
    for m in _POWER.finditer(text):
        exponent = _group_after(text, m.end())
        if not _is_numeric(exponent):
            continue
        if _POWER.search(exponent) or "!" in exponent:
            return "numeric power tower"
        j = m.start() - 1
        while j >= 0 and text[j] == " ":
            j -= 1
        base_is_symbol = j >= 0 and text[j].isalpha()  # x^{100000} stays symbolic
        if not base_is_symbol and _max_int(exponent) > MAX_EXPONENT:
            return f"numeric exponent above {MAX_EXPONENT}"
    for i in (m.start() for m in re.finditer("!", text)):
        arg = _group_before(text, i)
        if not arg or not _is_numeric(arg):
            continue
        if _POWER.search(arg) or "!" in arg or _max_int(arg) > MAX_FACTORIAL:
            return f"factorial of a number above {MAX_FACTORIAL}"
    return None


# ----------------------------------------------------------------------------------------------
# layer 3: a sub-second deadline in the main thread
# ----------------------------------------------------------------------------------------------


class _Deadline(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that Math-Verify's ``except Exception`` lets it pass."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise :class:`_Deadline` after ``seconds`` (main thread on POSIX only; otherwise a no-op)."""
    if (
        seconds is None
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    armed = [True]

    def _handler(signum, frame):
        if armed[0]:
            raise _Deadline()

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, _handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # give the caller's own timer back what is left of it
            remaining = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


# ----------------------------------------------------------------------------------------------
# verifiers
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _math_verify():
    """Import Math-Verify once; silence its 'timeout disabled' warning (we bound time ourselves)."""
    import importlib

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    for module in ("math_verify.parser", "math_verify.grader"):
        with contextlib.suppress(Exception):
            importlib.import_module(module).TIMEOUT_WARNING_SHOWN = True
    gold_cfg = (LatexExtractionConfig(),)
    pred_cfg = (ExprExtractionConfig(), LatexExtractionConfig())
    # Warm-up outside any deadline: the first LaTeX parse builds the parser (~1 s), which must not be
    # charged to (and time out) the first real call.
    with contextlib.suppress(Exception):
        gold = parse("\\boxed{\\frac{1}{2}}", gold_cfg, parsing_timeout=None)
        verify(gold, parse("x = 0.5", pred_cfg, parsing_timeout=None), 6, timeout_seconds=None)
    return parse, verify, gold_cfg, pred_cfg


def math_verify_score(completion, answer, *, timeout_s: float = 1.0) -> float:
    """Math-Verify reward in {0.0, 1.0} exactly as the official code (theory/algorithm.md); never raises.

    The gold ``answer`` is wrapped as ``\\boxed{answer}`` and parsed with ``LatexExtractionConfig``;
    the completion with ``(ExprExtractionConfig, LatexExtractionConfig)``; the score is 1 iff some
    parsed prediction verifies against the gold (``math_metric``'s aggregation, precision 6). Gold
    lists give their first element and numbers are cast to ``str`` (official eval). Malformed input
    (``None``, non-text, no parsable answer, an explosive expression, an error inside Math-Verify)
    scores 0. ``timeout_s`` bounds the call in any thread (see the module docstring): in the main
    thread by a timer, elsewhere by running Math-Verify in a worker process that is killed at the
    deadline; ``None`` disables the deadline (and the worker processes). The very first call also
    imports Math-Verify and warms its LaTeX parser up (about 1 s, untimed; off the main thread: the
    first worker's start-up, about 2 s, untimed) so that the deadline only ever measures scoring.
    """
    try:
        gold_text = _answer_text(answer)
        pred_text = sanitize(completion)
        if gold_text is None or pred_text is None or not pred_text.strip():
            return 0.0
        gold_text = "\\boxed{" + gold_text + "}"
        if explosive_reason(pred_text) or explosive_reason(gold_text):
            return 0.0
        if timeout_s is not None and threading.current_thread() is not threading.main_thread():
            return _POOL.score(gold_text, pred_text, timeout_s)  # no signals here: a killable worker process
        _math_verify()  # first call: import + warm-up, untimed
        # Leave a small margin for unwinding after the alarm so the whole call stays within timeout_s.
        remaining = None if timeout_s is None else timeout_s - min(0.05, 0.1 * timeout_s)
        if remaining is not None and remaining <= 0:
            return 0.0
        with _deadline(remaining):
            return _verify_texts(gold_text, pred_text)
    except (Exception, _Deadline):
        return 0.0


def _verify_texts(gold_text: str, pred_text: str) -> float:
    """Math-Verify on already sanitised, pre-screened texts (gold wrapped in ``\\boxed{}``); no deadline."""
    parse, verify, gold_cfg, pred_cfg = _math_verify()
    gold = parse(gold_text, gold_cfg, parsing_timeout=None)
    if not gold:  # math_metric raises "No gold targets found" -> official code scores 0
        return 0.0
    preds = parse(pred_text, pred_cfg, parsing_timeout=None)
    for pred in preds:
        if verify(gold, pred, 6, timeout_seconds=None):
            return 1.0
    return 0.0


# ----------------------------------------------------------------------------------------------
# off the main thread: a small pool of worker processes with a hard deadline per call
# ----------------------------------------------------------------------------------------------


def _worker_main() -> None:  # pragma: no cover - runs in the worker process
    """Worker loop over stdin/stdout: warm Math-Verify up, print ``ready``, then answer each JSON line
    ``[gold, pred]`` with one line holding the score."""
    import json
    import sys

    with contextlib.suppress(Exception):
        _math_verify()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the answer channel
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold_text, pred_text = json.loads(line)
            score = _verify_texts(gold_text, pred_text)
        except Exception:
            score = 0.0
        out.write(f"{score}\n")
        out.flush()


class _Worker:
    """One ``python -m gvm_mini.rewards`` process (a plain subprocess: unlike multiprocessing's spawn
    it never re-imports the caller's ``__main__``, so scripts without a main guard are safe)."""

    def __init__(self):
        import os
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gvm_mini.rewards", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, text=True, encoding="ascii", bufsize=1,
        )
        self.ready = False

    def _readline(self, timeout: float) -> str | None:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0.0))
        return self.proc.stdout.readline() if ready else None

    def wait_ready(self, timeout: float) -> bool:
        if not self.ready:
            self.ready = self._readline(timeout) == "ready\n"
        return self.ready

    def ask(self, gold_text: str, pred_text: str, timeout: float) -> float | None:
        import json

        self.proc.stdin.write(json.dumps([gold_text, pred_text]) + "\n")
        self.proc.stdin.flush()
        line = self._readline(timeout)
        return float(line) if line else None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()


class _VerifyPool:
    """Worker processes that run Math-Verify for threads other than the main one.

    ``score`` hands one call to an idle worker and waits at most ``timeout_s`` for its answer; a
    worker that misses the deadline is killed (SIGKILL: pure-Python sympy loops and CPython
    big-integer arithmetic stop too), a fresh one is started in its place at once, and the call scores
    0. Workers warm Math-Verify up before they take work; that start-up (about 2 s, once per worker)
    is not charged to any call's deadline, but a call that comes right after a kill may wait for the
    successor to finish starting. At most ``max_workers`` workers run; callers beyond that wait for an
    idle one. Workers end when the process ends (their stdin closes).
    """

    def __init__(self, max_workers: int | None = None):
        import os
        import queue

        self.max_workers = max_workers or max(1, min(4, os.cpu_count() or 1))
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._count = 0

    def _take(self) -> _Worker:
        import queue

        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._count < self.max_workers:
                self._count += 1
                try:
                    return _Worker()
                except BaseException:
                    self._count -= 1
                    raise
        return self._idle.get()

    def _replace(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._count -= 1
            if self._count < self.max_workers:  # start the successor now, so the next call finds it warm
                self._count += 1
                try:
                    self._idle.put(_Worker())
                except Exception:
                    self._count -= 1

    def warm_up(self, n: int = 1) -> None:
        """Start ``n`` workers (at most ``max_workers``) and wait until they are ready."""
        got = [self._take() for _ in range(min(n, self.max_workers))]
        for w in got:
            w.wait_ready(120)
            self._idle.put(w)

    def score(self, gold_text: str, pred_text: str, timeout_s: float) -> float:
        w = self._take()
        if not w.wait_ready(120):  # a worker that cannot even start: replace it, score 0
            self._replace(w)
            return 0.0
        try:
            score = w.ask(gold_text, pred_text, timeout_s)
        except (OSError, ValueError):
            score = None
        if score is None:
            self._replace(w)
            return 0.0
        self._idle.put(w)
        return score

    def close(self) -> None:
        import queue

        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break


_POOL = _VerifyPool()


def warm_up_verify_pool(n: int = 1) -> None:
    """Start ``n`` Math-Verify worker processes now (about 2 s) rather than at the first call made
    from a thread other than the main one."""
    _POOL.warm_up(n)


_INT_ANSWER = re.compile(r"[+-]?\d+")
_EXACT_STRIP = re.compile(r"\s+|\\[,;:!]|\\(?:text|mathrm)\{\s*\}|\$")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def _normalize_number(text: str) -> str:
    """Spaces, LaTeX thin spaces and ``$`` removed, the Unicode minus made ``-``, a leading ``+``
    dropped; commas removed only when they group thousands (``1,234`` and ``-1,000.5``, but not
    ``1,2`` or ``12,34``, which stay as they are and so never equal a number)."""
    text = _EXACT_STRIP.sub("", text).replace("\u2212", "-")
    if "," in text and _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text[1:] if text.startswith("+") else text


def exact_match_score(completion, answer) -> float:
    """1.0 iff the last ``\\boxed{}`` of ``completion`` equals ``answer`` (for the generated arithmetic task).

    Tolerant of spaces, LaTeX thin spaces, ``$``, a leading ``+``, the Unicode minus and commas that
    separate thousands (groups of three digits): ``\\boxed{ +1,234 }`` matches ``1234``, while
    ``\\boxed{1,2}`` (a list of two numbers) does not match ``12``. Integers compare by value (``007`` equals ``7``);
    anything else compares as the normalised string. Never raises; malformed input scores 0.
    """
    try:
        gold = _answer_text(answer)
        boxed = extract_boxed(completion)
        if gold is None or boxed is None or len(boxed) > 200:
            return 0.0
        got, want = _normalize_number(boxed), _normalize_number(gold)
        if _INT_ANSWER.fullmatch(got) and _INT_ANSWER.fullmatch(want):
            return float(int(got) == int(want))
        return float(bool(got) and got == want)
    except Exception:
        return 0.0


# a number literal in free text: optional sign (not a binary minus: no letter, digit or dot just before it),
# thousands commas, decimals; "16-53 = -37." -> "16", "53", "-37"
_FREE_NUMBER = re.compile(r"(?<![\w.])[+\-\u2212]?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number_score(completion, answer) -> float:
    """1.0 iff the last number literal of ``completion`` (of its last ``\\boxed{}`` when it has one) equals
    ``answer``: the verifier for generated arithmetic answered in free text (SmolLM2 never writes ``\\boxed{}``).

    Unlike ``math_verify`` it never evaluates an expression: Math-Verify reads ``"9+5 is a number."`` as
    ``9+5 = 14`` and accepts it for the answer 14, so on a task whose question *is* the expression a policy
    learns to restate the question (measured with SmolLM2-135M-Instruct: greedy "accuracy" 0.19 -> 1.00 while
    the completions read "92+33 is a number."; bench/README.md). Here ``"9+5 is a number."`` -> 5, wrong;
    ``"9 + 5 = 14."`` -> 14, right; ``"16-53 = -37"`` -> -37 (a minus after a digit is a binary minus, so
    ``"9-5"`` ends in 5). Integers compare by value, with the tolerance of :func:`exact_match_score` (spaces,
    ``$``, thousands commas, the Unicode minus); decimals compare as normalised strings. Never raises.
    """
    try:
        gold = _answer_text(answer)
        text = sanitize(completion)
        if gold is None or text is None:
            return 0.0
        text = extract_boxed(text) or text
        found = _FREE_NUMBER.findall(text)
        if not found:
            return 0.0
        got, want = _normalize_number(found[-1]), _normalize_number(gold)
        if _INT_ANSWER.fullmatch(got) and _INT_ANSWER.fullmatch(want):
            return float(int(got) == int(want))
        return float(got == want)
    except Exception:
        return 0.0


VERIFIERS: dict[str, Verifier] = {"exact": exact_match_score, "math_verify": math_verify_score,
                                  "last_number": last_number_score}
"""Verifier name -> ``fn(completion, answer) -> float`` in {0, 1}."""


def get_verifier(name: str) -> Verifier:
    """The verifier called ``name`` (``"math_verify"``, ``"exact"`` or ``"last_number"``); ValueError listing the choices otherwise."""
    try:
        return VERIFIERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown verifier {name!r}; choose one of {', '.join(sorted(VERIFIERS))}"
        ) from None


ACCEPT_ABOVE = 0.5
"""RAFT's rejection step accepts a sample whose reward is above this (the verifiers return 0 or 1)."""


def accepted(rewards):
    """The rejection step: True where a sample is accepted (reward > :data:`ACCEPT_ABOVE`)."""
    return rewards > ACCEPT_ABOVE


def score_rollout(rollout, problems, verifier: Verifier):
    """Rewards of a rollout's samples, a NumPy float array: ``verifier(text, answer)`` of sample ``s``
    against ``problems[rollout.prompt_index[s]].answer``."""
    import numpy as np

    return np.array([verifier(t, problems[i].answer) for t, i in zip(rollout.texts, rollout.prompt_index)],
                    dtype=np.float64)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:  # pragma: no cover - the worker process
    _worker_main()
