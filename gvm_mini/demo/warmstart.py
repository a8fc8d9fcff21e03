"""The demo's starting policies: a 0.15M-parameter Qwen2-shaped model SFT-warmed on the rule task
(:class:`RuleSFT`, the default) or on the chains task (:class:`SFT`), cached by every setting that
shapes it."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_dir
from ..data import arithmetic_problems, format_chat
from ..models import offline_tokenizer, quiet_loading, tiny_model
from .task import RULES_DATA_SEED, RULES_TEST_PER_FAMILY, TASK, rule_problems, rule_solution

__all__ = ["SFT", "RuleSFT", "SHIPPED", "rule_sft_solution", "slipped_solution", "warm_start"]


@dataclass(frozen=True)
class SFT:
    """Warm start of the chains task (``--task chains``); all settings key the cache.

    The worked solutions carry deliberate slips: step ``j`` (0-based) of a solution is off by one with
    probability ``slip_base + slip_growth * j`` (the slip is carried to the end), so a policy that
    imitates them fails more often the longer the chain: 5% on one step, 1 - prod_j (1 - 0.05 - 0.06 j)
    = 89% on seven. That is
    what makes pass rates spread across (0, 1) with difficulty, and what RL has to unlearn.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    slip_base: float = 0.05
    slip_growth: float = 0.06
    examples: int = 8000
    data_seed: int = 7
    seed: int = 0
    version: int = 3


@dataclass(frozen=True)
class RuleSFT:
    """Warm start of the rule task (the default demo); all settings key the cache.

    For each family the SFT data writes the family's correct procedure with probability ``share`` and
    otherwise one of its ``wrong`` procedures (equal parts), so the warm-started policy picks the
    correct procedure about ``share`` of the time: RL must shift each family towards its own
    procedure, a hard family from its own few accepted samples. Family H's correct procedure (``mul``)
    never appears in the data: its pass rate is 0 and stays 0. Every other procedure appears in at
    least three families, so the policy computes all of them reliably.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 400
    batch_size: int = 64
    lr: float = 6e-3
    shares: tuple = (("A", 0.97), ("B", 0.7), ("C", 0.4), ("D", 0.2), ("E", 0.12), ("F", 0.08), ("G", 0.06), ("H", 0.0))
    wrong: tuple = (("A", ("sub", "dbl", "neg")), ("B", ("add", "rsub", "dbl")), ("C", ("sub", "inc", "neg")),
                    ("D", ("add", "dec", "dbl")), ("E", ("inc", "rsub", "add")), ("F", ("add", "sub", "dec")),
                    ("G", ("add", "inc", "neg")), ("H", ("add", "sub", "inc", "dec")))
    examples: int = 8000
    data_seed: int = 7
    seed: int = 0
    version: int = 1


def rule_sft_solution(problem, rng: random.Random, sft: RuleSFT) -> str:
    """One SFT target for a rule prompt: its family's correct procedure with probability ``share``,
    else one of the family's wrong procedures (equal parts). A family's share may be a pair
    ``(share if a > b, share if a < b)``: its prompts then differ in difficulty *within* the family
    (the held-out task ``rules-within`` of bench/allocation_study.py)."""
    fam, a, b = problem.meta["family"], problem.meta["a"], problem.meta["b"]
    share, wrong = dict(sft.shares)[fam], dict(sft.wrong)[fam]
    if isinstance(share, (tuple, list)):
        share = share[0] if a > b else share[1]
    proc = problem.meta["procedure"] if rng.random() < share else rng.choice(wrong)
    return rule_solution(proc, a, b)


def _operands(expression: str) -> tuple[list[int], list[str]]:
    """``"7-5+3"`` -> ``([7, 5, 3], ["-", "+"])``."""
    tokens, cur = [], ""
    for ch in expression:
        if ch in "+-" and cur:
            tokens += [cur, ch]
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    return [int(x) for x in tokens[0::2]], tokens[1::2]


def slipped_solution(expression: str, rng: random.Random, slip_base: float, slip_growth: float) -> str:
    """A worked solution of ``expression`` in which step ``j`` slips by +-1 with probability
    ``slip_base + slip_growth * j``; a slipped value is carried into the next step and the answer."""
    nums, ops = _operands(expression)
    value, steps = nums[0], []
    for j, (op, b) in enumerate(zip(ops, nums[1:])):
        new = value + b if op == "+" else value - b
        if rng.random() < slip_base + slip_growth * j:
            new += rng.choice([-1, 1])
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return ". ".join(steps) + f". \\boxed{{{value}}}"


def _sft_data(sft) -> tuple[list, list[str]]:
    """(problems, SFT targets) of the warm start ``sft`` (its type says the task)."""
    rng = random.Random(sft.data_seed)
    if isinstance(sft, RuleSFT):
        train, _test = rule_problems(RULES_TEST_PER_FAMILY, seed=RULES_DATA_SEED)  # held-out prompts never seen
        problems = [rng.choice(train) for _ in range(sft.examples)]
        return problems, [rule_sft_solution(p, rng, sft) for p in problems]
    problems = arithmetic_problems(sft.examples, seed=sft.data_seed, **TASK)
    return problems, [slipped_solution(p.meta["expression"], rng, sft.slip_base, sft.slip_growth) for p in problems]


#: the default rule-task warm start, trained once and shipped with the package (0.6 MB of safetensors):
#: SFT on different CPUs (AVX2 / AVX-512 kernels) ends in different weights, and the demo's table with them
SHIPPED = Path(__file__).with_name("weights")


def warm_start(cache_root: Path, sft: SFT | RuleSFT = RuleSFT(), *, progress: bool = True, train: bool = False) -> Path:
    """The SFT-warmed tiny policy's directory (a local HF model dir): the shipped one when ``sft`` is
    the shipped setting (unless ``train``), else trained once on this machine and cached."""
    task = "rules" if isinstance(sft, RuleSFT) else TASK
    key = hashlib.sha256(json.dumps({"task": task, "sft": asdict(sft)}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    shipped = SHIPPED / f"demo-policy-{key}"
    if not train and (shipped / "config.json").is_file():
        return shipped
    out = cache_root / f"demo-policy-{key}"
    if (out / "config.json").is_file():
        return out
    problems, solutions = _sft_data(sft)
    tok = offline_tokenizer([p.problem + " " + s for p, s in zip(problems[:2000], solutions[:2000])], vocab_size=300)
    model = tiny_model(tok, hidden_size=sft.hidden_size, num_layers=sft.num_layers, num_heads=sft.num_heads, seed=sft.seed)
    rows = []
    for p, s in zip(problems, solutions):
        a = tok(format_chat(tok, p.problem, system=None, instruction=""), add_special_tokens=False)["input_ids"]
        b = tok(s + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((a, b))
    opt = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sft.lr, total_steps=sft.steps, pct_start=0.1)
    batch_rng = random.Random(sft.seed)
    model.train()
    threads = torch.get_num_threads()
    # one thread: the same weights as with two (checked), and no collapse when other work shares the
    # CPU (two contending threads made this loop 5x slower on a loaded 2-core machine)
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(sft.seed)
        for _ in tqdm(range(sft.steps), desc="SFT warm start (cached after the first run)", disable=not progress):
            batch = batch_rng.sample(rows, sft.batch_size)
            width = max(len(a) + len(b) for a, b in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (a, b) in enumerate(batch):
                ids[i, : len(a) + len(b)] = torch.tensor(a + b)
                labels[i, len(a) : len(a) + len(b)] = torch.tensor(b)
                attn[i, : len(a) + len(b)] = 1
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    torch.set_num_threads(threads)
    model.eval()
    cache_root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp, quiet_loading():  # a kill never leaves a half-written policy in the cache
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "gvm_mini_sft.json").write_text(json.dumps({"task": task, "sft": asdict(sft), "final_loss": float(loss.detach())}, default=str))
    return out
