"""Evaluation metrics: Average@k and unbiased pass@k over a [problems x samples] score matrix (theory/algorithm.md).

The official eval (``eval/gen.py`` + ``eval/aggregate.py``) samples k = 8 completions per problem,
scores each 0/1 with Math-Verify, and reports per benchmark

- Average@k = mean_i mean_j score_ij  (:func:`average_at_k`), and
- pass@k    = mean_i [1 - C(n_i - c_i, k) / C(n_i, k)]  (:func:`pass_at_k`, Chen et al. 2021, with
  ``n_i`` samples of which ``c_i`` are correct; for k = n it is "any sample correct"),

then the unweighted mean over MATH500, Minerva Math, OlympiadBench ("3 average", the curves of
Figs. 3-5) and over all five benchmarks ("5 average"): :func:`summarize`.

The model-driven loop (sampling the completions) lives with the sampler; everything here is pure.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from gvm_mini.data import HUB_DATASETS, HubSpec
from gvm_mini.rewards import get_verifier

__all__ = [
    "evaluate_policy",
    "BENCHMARKS",
    "THREE_AVERAGE",
    "FIVE_AVERAGE",
    "score_matrix",
    "average_at_k",
    "pass_at_k",
    "summarize",
]

BENCHMARKS: dict[str, HubSpec] = {
    name: HUB_DATASETS[name] for name in ("math500", "minerva_math", "olympiad_bench", "aime24", "amc23")
}
"""The five evaluation benchmarks: name -> hub id, split, columns and size (500/272/675/30/40)."""
THREE_AVERAGE = ("math500", "minerva_math", "olympiad_bench")
FIVE_AVERAGE = tuple(BENCHMARKS)


def score_matrix(
    completions: Sequence[Sequence[str]],
    answers: Sequence[str],
    verifier: str | Callable[[object, object], float] = "math_verify",
) -> np.ndarray:
    """Scores ``[P, k]``: ``verifier(completions[i][j], answers[i])`` for P problems with k samples each.

    ``verifier`` is a callable or a name for :func:`gvm_mini.rewards.get_verifier`. ValueError if the
    lengths differ or the problems do not all have the same number of samples.
    """
    if isinstance(verifier, str):
        verifier = get_verifier(verifier)
    if len(completions) != len(answers):
        raise ValueError(
            f"completions has {len(completions)} problems but answers has {len(answers)}"
        )
    ks = {len(c) for c in completions}
    if len(ks) > 1:
        raise ValueError(f"every problem needs the same number of samples, got {sorted(ks)}")
    k = ks.pop() if ks else 0
    scores = np.zeros((len(completions), k), dtype=np.float64)
    for i, (samples, answer) in enumerate(zip(completions, answers)):
        for j, completion in enumerate(samples):
            scores[i, j] = float(verifier(completion, answer))
    return scores


def _scores(scores) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [problems, samples] matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("scores must be finite")
    return a


def average_at_k(scores) -> float:
    """Average@k (theory/algorithm.md): the mean over problems of the mean score over each problem's k samples."""
    return float(_scores(scores).mean(axis=1).mean())


def pass_at_k(scores, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): mean over problems of ``1 - C(n - c, k) / C(n, k)``.

    ``n`` is the number of samples per problem (columns) and ``c`` the number with score > 0.5. The
    ratio is computed as the product ``prod_{i=n-c+1}^{n} (1 - k / i)`` (no huge binomials); it is 0
    when ``n - c < k``. ValueError unless ``1 <= k <= n``.
    """
    a = _scores(scores)
    n = a.shape[1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (samples per problem), got {k!r}")
    per_problem = []
    for c in (a > 0.5).sum(axis=1):
        if n - c < k:
            per_problem.append(1.0)
        else:
            per_problem.append(1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1))))
    return float(np.mean(per_problem))


def summarize(results_by_benchmark: Mapping[str, object], *, k: int | None = None) -> dict[str, dict]:
    """Per-benchmark Average@k and pass@k plus the official "3 average" and "5 average".

    ``results_by_benchmark`` maps a benchmark name to its ``[P, n]`` score matrix. Each entry of the
    result has ``average@k``, ``pass@k`` (``k`` defaults to the number of samples ``n``),
    ``n_problems``, ``samples`` and ``expected_size`` (from :data:`BENCHMARKS`, ``None`` for other
    names). ``"3 average"`` (MATH500, Minerva Math, OlympiadBench) and ``"5 average"`` (all five) are
    unweighted means of the per-benchmark numbers, present only when all their benchmarks are.
    """
    out: dict[str, dict] = {}
    for name, scores in results_by_benchmark.items():
        a = _scores(scores)
        kk = a.shape[1] if k is None else k
        spec = BENCHMARKS.get(name)
        out[name] = {
            "average@k": average_at_k(a),
            "pass@k": pass_at_k(a, kk),
            "k": kk,
            "n_problems": a.shape[0],
            "samples": a.shape[1],
            "expected_size": spec.size if spec else None,
        }
    for label, names in (("3 average", THREE_AVERAGE), ("5 average", FIVE_AVERAGE)):
        if all(name in out for name in names):
            out[label] = {
                metric: float(np.mean([out[name][metric] for name in names]))
                for metric in ("average@k", "pass@k")
            }
            out[label]["benchmarks"] = list(names)
    return out


def evaluate_policy(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    verifier: str | Callable[[object, object], float] = "math_verify",
    *,
    k: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 3072,
    batch_size: int = 64,
    seed: int | None = None,
    progress: bool = False,
    cfg=None,
) -> dict:
    """Sample ``k`` completions per chat-formatted prompt and report Average@k and pass@k: with the HF
    decode loop, or through the run's vLLM engine when ``cfg`` (the run's config) has ``backend: vllm``
    (:func:`gvm_mini.rollout.sample_vllm_policy`, the current adapter as a LoRA request; ``batch_size``
    is then the engine's, ``cfg.sample_batch_size``).

    The official evaluation (theory/algorithm.md) is ``k=8`` at temperature 1.0 (0.7 for 7B models),
    3072 new tokens, Math-Verify. Returns ``avg_at_k``, ``pass_at_k``, ``pass_at_1``, ``k``,
    ``problems``, ``eval_tokens`` (generated tokens), ``truncated_frac``, ``per_problem``
    (mean score of each problem) and ``per_draw`` (the accuracy of the j-th sample of every problem,
    j < k: their mean is Average@k, their spread is the spread over evaluation draws).
    """
    from gvm_mini.rollout import sample_hf, sample_vllm_policy, sampling_model, vllm_engine

    if len(prompts) != len(answers):
        raise ValueError(f"prompts has {len(prompts)} entries but answers has {len(answers)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(verifier, str):
        verifier = get_verifier(verifier)
    if cfg is not None and cfg.backend == "vllm":
        r = sample_vllm_policy(vllm_engine(cfg), model, tokenizer, prompts, [k] * len(prompts), temperature=temperature,
                               top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    else:
        r = sample_hf(
            sampling_model(cfg, model) if cfg is not None else model, tokenizer, prompts, [k] * len(prompts), temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress, desc="eval",
        )
    scores = np.zeros((len(prompts), k))
    slot = np.zeros(len(prompts), dtype=np.int64)
    for text, i in zip(r.texts, r.prompt_index):
        scores[i, slot[i]] = float(verifier(text, answers[i]))
        slot[i] += 1
    return {
        "avg_at_k": average_at_k(scores),
        "pass_at_k": pass_at_k(scores, k),
        "pass_at_1": pass_at_k(scores, 1),
        "k": k,
        "problems": len(prompts),
        "eval_tokens": r.num_tokens,
        "truncated_frac": float(r.truncated.mean()) if len(r) else 0.0,
        "per_problem": scores.mean(axis=1).round(4).tolist(),
        "per_draw": scores.mean(axis=0).round(4).tolist(),  # accuracy of draw j over all problems: the spread over evaluation draws
    }
