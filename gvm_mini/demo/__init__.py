"""``python -m gvm_mini demo``: RL that visibly learns on a CPU in minutes, and what the allocation buys.

1. **Task** (``--task rules``, the default; :func:`gvm_mini.demo.task.rule_problems`) - prompts ``rule X: a b``
   in eight families A-H. Each family is solved by one short named procedure written out before the
   answer (``dbl: 2*7+3=17. \\boxed{17}``); the eight procedures disagree on every operand pair, so a
   completion is correct iff it writes its family's procedure and computes it right.
2. **Starting policy** (:class:`~gvm_mini.demo.warmstart.RuleSFT`) - a 0.15M-parameter Qwen2-shaped model (2 layers, width 64)
   with an offline tokenizer, SFT-warmed for 400 steps on data in which each family writes its correct
   procedure only a family-specific share of the time (0.97 for A down to 0.06 for G) and a plausible
   wrong one otherwise; family H's procedure never appears. Temperature-1 pass rates then spread from
   about 0.8 (A) through a few percent (E, F, G) to 0 (H): the regime the paper is about, with both ends
   of its Figure 2 crowded. What RL must learn is *which* procedure each family needs, a skill that does
   not transfer between families, so a hard family learns only from its own accepted samples. Cached
   after the first run, keyed by every setting that shapes it.
3. **Runs** (:data:`~gvm_mini.demo.runner.METHODS`) - RAFT++ and GRPO, each with uniform budgets, GVM's Proposition 1 (the
   paper's settings, N' = 4) and the DAPO-style filter, full fine-tuning of the tiny policy, all stopped
   at the same number of generated tokens (pilot samples counted, checked after every M-step), three
   seeds, in parallel worker processes.
4. **Outputs** - ``curves.png`` (test accuracy against generated tokens, training wall time and M-steps,
   mean and spread over seeds, one row per algorithm), ``families.png`` (the same per family),
   ``allocation.png`` (n_i against p_i coloured by family, the paper's Figure 2) and ``summary.md`` /
   ``summary.json``: every arm read at equal tokens (curves interpolated) and at equal M-steps (the
   paper's accounting), tokens and M-steps to reach the uniform baseline's final accuracy and their
   ratios, per-family accuracy and budget, the GVM stage's share of wall time, the truncation rate.

``--task chains`` keeps the previous demo as the counter-example: chains of 1-7 one-digit additions and
subtractions with slips that grow along the chain (:data:`~gvm_mini.demo.task.TASK`, :class:`~gvm_mini.demo.warmstart.SFT`), where G_i of the summed
log-probability grows with the chain length and Proposition 1 sends the budget to the longest, most
expensive samples.

Why a tiny SFT-warmed model rather than SmolLM2-135M with LoRA: SmolLM2 samples at 20-100 tokens/s on
this CPU; the tiny model at about 10k tokens/s per core, which is what a learning curve in minutes needs.

The demo is an application built on the library, not part of it: ``task`` (the rule task, registered
as ``dataset: rules``), ``warmstart`` (the SFT warm starts), ``runner`` (configs, worker processes,
``run_demo``) and ``report`` (the table and figures). Nothing in the library imports it.
"""

from .report import BASELINE_OF, MIN_GAIN, summarize_runs
from .runner import BUDGET, CHAINS_METHODS, METHODS, QUICK_BUDGET, demo_config, run_demo, run_jobs
from .task import RULE_FAMILIES, RULE_PROCEDURES, TASK, rule_problems, rule_solution
from .warmstart import SFT, RuleSFT, rule_sft_solution, slipped_solution, warm_start

__all__ = ["TASK", "SFT", "RuleSFT", "METHODS", "CHAINS_METHODS", "BUDGET", "QUICK_BUDGET", "MIN_GAIN", "BASELINE_OF",
           "RULE_FAMILIES", "RULE_PROCEDURES", "rule_problems", "rule_solution", "rule_sft_solution",
           "slipped_solution", "warm_start", "demo_config", "run_demo", "run_jobs", "summarize_runs"]
