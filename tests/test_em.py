"""The EM loop end to end on tiny models, and the real-model smoke test with SmolLM2-135M-Instruct."""

import json

import numpy as np
import pytest

from gvm_mini.config import load_config, replace
from gvm_mini.em import iteration_prompt_indices, run
from gvm_mini.mstep import group_index


def _records(path):
    return [json.loads(x) for x in open(path)]


def test_tiny_config_runs_two_iterations(tmp_path):
    cfg = replace(load_config("configs/tiny.yaml"), progress=False)
    state = run(cfg, tmp_path)  # (its speed is a benchmark's business, not a unit test's: this machine is shared)
    assert state.iteration == 2 and state.global_step == 4
    for name in ("config.yaml", "metrics.jsonl", "allocations.jsonl", "checkpoint/state.json", "checkpoint/trainable.safetensors"):
        assert (tmp_path / name).exists(), name
    recs = _records(tmp_path / "metrics.jsonl")
    kinds = [r["kind"] for r in recs]
    assert kinds.count("step") == 4 and kinds.count("iteration") == 2 and kinds.count("eval") == 3
    # compute accounting: pilots are counted, tokens only grow
    tokens = [r["tokens"] for r in recs]
    assert tokens == sorted(tokens) and recs[-1]["pilot_samples"] == 2 * 16 * cfg.num_pilot
    allocs = _records(tmp_path / "allocations.jsonl")
    assert [sum(a["n"]) for a in allocs] == [cfg.samples_per_prompt * 16] * 2


def test_gvm_allocation_follows_pilot_pass_rates(tmp_path, monkeypatch):
    """A verifier that accepts everything for even prompts and nothing for odd ones: p = 1 / 0, so GVM
    drops the odd prompts (n = 0) and gives the even ones the whole budget."""
    import gvm_mini.rewards as rewards

    cfg = replace(load_config("configs/tiny.yaml"), progress=False, iterations=1, eval_every=0)
    from gvm_mini.em import load_problems

    train, test = load_problems(cfg)
    for i, p in enumerate(train):
        p.meta["even"] = i % 2 == 0
    answer_ok = {p.answer: p.meta["even"] for p in train}
    monkeypatch.setattr(rewards, "get_verifier", lambda name: (lambda text, ans: float(answer_ok.get(ans, False))))
    run(cfg, tmp_path, problems=(train, test))
    a = _records(tmp_path / "allocations.jsonl")[0]
    idx = np.array(a["prompt_ids"])
    even = np.array([train[i].meta["even"] for i in idx])
    assert np.all(np.array(a["p"])[even] == 1.0) and np.all(np.array(a["p"])[~even] == 0.0)
    assert np.all(np.array(a["n"])[~even] == 0)
    assert sum(a["n"]) == cfg.samples_per_prompt * len(idx)


def test_prompt_order_is_a_seeded_epoch_shuffle():
    cfg = replace(load_config("configs/tiny.yaml"), train_size=40, prompts_per_step=8, steps_per_iteration=2)
    its = [iteration_prompt_indices(40, cfg, t) for t in range(5)]  # 80 prompts = two epochs
    first_epoch = np.concatenate(its[:2] + [its[2][:8]])
    assert sorted(first_epoch.tolist()) == list(range(40))
    assert (iteration_prompt_indices(40, cfg, 3) == its[3]).all()


def test_grpo_sub_groups_of_four():
    # prompt 7 has 6 samples, prompt 3 has 2 -> groups (7,0) x4, (7,1) x2, (3,0) x2
    g = group_index(np.array([7, 7, 7, 7, 7, 7, 3, 3]), 4)
    assert len(set(g[:4])) == 1 and len(set(g[4:6])) == 1 and g[0] != g[4] and g[6] == g[7] != g[0]
    assert (group_index(np.array([1, 2]), None) == [1, 2]).all()


@pytest.mark.realmodel
def test_smollm2_one_iteration(tmp_path):
    """Real-model smoke: load SmolLM2-135M-Instruct, pilot, p_i and G_i on LoRA, allocation, one LoRA update."""
    cfg = replace(load_config("configs/smollm2_cpu.yaml"), progress=False)
    state = run(cfg, tmp_path)
    assert state.iteration == 1 and state.updates >= 1
    a = _records(tmp_path / "allocations.jsonl")[0]
    assert sum(a["n"]) == cfg.samples_per_prompt * cfg.prompts_per_step
    assert all(0 <= p <= 1 for p in a["p"])
    # SmolLM2 answers some one-digit sums: at least one accepted pilot, hence a positive G
    assert max(a["G"]) > 0
    step = [r for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "step"][0]
    assert step["skipped_updates"] == 0 and np.isfinite(step["loss"])


def test_behaviour_logprobs_give_the_same_update_as_recomputing_them():
    """old_logprobs="behaviour" reuses the log-probs the HF sampler recorded instead of a forward pass;
    for fresh samples at temperature 1 the two M-steps must agree (the recorded values match a
    recompute to ~1e-6), across several mini-batches so that later ones are off-policy."""
    import copy

    import torch

    from gvm_mini.config import Config
    from gvm_mini.mstep import m_step
    from gvm_mini.models import load_model
    from gvm_mini.rollout import sample_hf

    model, tok = load_model("tiny-qwen2")
    prompts = [f"Compute {a}+{a + 1}." for a in range(4)]
    ro = sample_hf(model, tok, prompts, [4] * 4, temperature=1.0, max_new_tokens=8, seed=0)
    rewards = (np.arange(len(ro)) % 3 == 0).astype(float)
    after = {}
    for mode in ("recompute", "behaviour"):
        m = copy.deepcopy(model)
        cfg = Config(lora=False, algorithm="grpo", mini_batch_size=4, learning_rate=1e-3, kl_coef=0.0, old_logprobs=mode)
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.learning_rate)
        st = m_step(cfg, m, opt, ro, rewards, tok.pad_token_id, None, seed=0)
        assert st["updates"] == 4
        after[mode] = torch.cat([p.detach().flatten() for p in m.parameters()])
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (after["recompute"] - before).abs().max()
    assert moved > 1e-4  # the updates did something
    assert (after["behaviour"] - after["recompute"]).abs().max() < 1e-2 * moved  # Adam amplifies ~1e-6 noise a little


# ---------------------------------------------------------------------------------------------
# gvm_tokens, knapsack, estimator, pilot, prompt_weighting in the loop (tiny config)
# ---------------------------------------------------------------------------------------------


def _tiny(**kw):
    base = dict(progress=False, iterations=1, eval_every=0, steps_per_iteration=1, train_size=16, test_size=4,
                max_completion_length=16)
    return replace(load_config("configs/tiny.yaml"), **{**base, **kw})


@pytest.fixture(scope="module")
def tiny_policy():
    """One tiny LoRA policy for the module; each run gets a deep copy (building one costs seconds)."""
    from gvm_mini.em import build_policy

    return build_policy(_tiny())


def _run(cfg, out, policy, **kw):
    import copy

    return run(cfg, out, model=copy.deepcopy(policy[0]), tokenizer=policy[1], **kw)


def _three_kinds(monkeypatch, train):
    """Prompt j of the training set is always solved (j % 3 == 0), solved when the completion has an
    even number of characters (j % 3 == 1), or never solved (j % 3 == 2)."""
    import gvm_mini.rewards as rewards

    kind = {p.answer: j % 3 for j, p in enumerate(train)}
    assert len(kind) == len(train)  # answers identify prompts in the tiny task

    def verify(text, ans):
        k = kind.get(ans, 2)
        return float(k == 0 or (k == 1 and len(text) % 2 == 0))

    monkeypatch.setattr(rewards, "get_verifier", lambda name: verify)
    return kind


def _problems(cfg):
    from gvm_mini.em import load_problems

    train, test = load_problems(cfg)
    # the tiny arithmetic task can repeat an answer; make answers unique so the verifier can key on them
    for j, p in enumerate(train):
        p.answer = f"{p.answer}#{j}"
    return train, test


def test_gvm_tokens_spends_the_uniform_token_budget(tmp_path, monkeypatch, tiny_policy):
    cfg = _tiny(allocation="gvm_tokens")
    train, test = _problems(cfg)
    kind = _three_kinds(monkeypatch, train)
    _run(cfg, tmp_path, tiny_policy, problems=(train, test))
    a = _records(tmp_path / "allocations.jsonl")[0]
    n, c = np.array(a["n"]), np.array(a["cost"])
    never = np.array([kind[train[i].answer] == 2 for i in a["prompt_ids"]])
    B = cfg.samples_per_prompt * len(n) * c.mean()  # token budget of an iteration: N * mean_i(c_i)
    assert n @ c <= B + 1e-6 and B - n @ c < c.max()  # the integer rule's guarantee
    assert np.all(n[never] == 0)  # p = 0: dropped, as in the paper's rule
    it = [r for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "iteration"][0]
    assert it["expected_tokens"] == pytest.approx(n @ c) and it["uniform_expected_tokens"] == pytest.approx(B)


def test_knapsack_rule_in_the_loop_matches_the_function(tmp_path, monkeypatch, tiny_policy):
    from gvm_mini.allocation import knapsack

    cfg = _tiny(allocation="knapsack", algorithm="grpo")
    train, test = _problems(cfg)
    kind = _three_kinds(monkeypatch, train)
    _run(cfg, tmp_path, tiny_policy, problems=(train, test))
    a = _records(tmp_path / "allocations.jsonl")[0]
    kinds = np.array([kind[train[i].answer] for i in a["prompt_ids"]])
    p = np.array(a["p"])
    # the p the rule was fed is the pilots' acceptance rate: 1 for always-solved, 0 for never-solved prompts
    assert np.all(p[kinds == 0] == 1.0) and np.all(p[kinds == 2] == 0.0)
    n = np.array(a["n"])
    assert n.tolist() == knapsack(p, a["G"], cfg.samples_per_prompt * len(n)).tolist()


def test_bayes_estimator_gives_unsolved_prompts_samples(tmp_path, monkeypatch, tiny_policy):
    out = {}
    for est in ("paper", "bayes"):
        cfg = _tiny(estimator=est)
        train, test = _problems(cfg)
        kind = _three_kinds(monkeypatch, train)
        _run(cfg, tmp_path / est, tiny_policy, problems=(train, test))
        a = _records(tmp_path / est / "allocations.jsonl")[0]
        never = np.array([kind[train[i].answer] == 2 for i in a["prompt_ids"]])
        out[est] = (np.array(a["p"]), np.array(a["G"]), np.array(a["n"]), never)
    p, G, n, never = out["paper"]
    assert never.any() and np.all(p[never] == 0) and np.all(G[never] == 0) and np.all(n[never] == 0)
    p, G, n, never = out["bayes"]
    assert np.all(p[never] > 0) and np.all(G[never] > 0) and n.sum() == 4 * len(n)
    assert n[never].sum() > 0  # the paper's rule gives these prompts nothing; the shrunk estimates give some
    assert np.all(G[never] == G[never][0])  # one pooled G for all of them


def test_pilot_history_skips_seen_prompts_and_survives_a_resume(tmp_path, monkeypatch, tiny_policy):
    cfg = _tiny(pilot="history", steps_per_iteration=2)  # 16 prompts per iteration = the whole train set
    train, test = _problems(cfg)
    _three_kinds(monkeypatch, train)
    _run(cfg, tmp_path, tiny_policy, problems=(train, test))  # epoch 0: every prompt gets a fresh pilot
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["state"]
    assert len(state["history"]) == 16 and all(r["n"] >= cfg.num_pilot for r in state["history"].values())
    st = _run(replace(cfg, iterations=2), tmp_path, tiny_policy, resume=True, problems=(train, test))  # epoch 1, restarted
    assert st.pilot_samples == 16 * cfg.num_pilot  # no pilot in the second epoch
    it = [r for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "iteration"]
    assert [r["history_prompts"] for r in it] == [0, 16]
    a = _records(tmp_path / "allocations.jsonl")[1]
    assert sum(a["n"]) == cfg.samples_per_prompt * 16 and all(0 < p < 1 for p in a["p"])  # shrunk, never 0 or 1


def test_pilot_reuse_is_the_old_reuse_pilot(tmp_path, tiny_policy):
    recs = {}
    for name, kw in (("new", dict(pilot="reuse")), ("old", dict(reuse_pilot=True))):
        _run(_tiny(**kw), tmp_path / name, tiny_policy)
        recs[name] = [r for r in _records(tmp_path / name / "metrics.jsonl") if r["kind"] == "step"]
    assert recs["new"][0]["pilot_reused"] > 0
    assert [(r["pilot_reused"], r["tokens"], r["loss"]) for r in recs["new"]] == \
        [(r["pilot_reused"], r["tokens"], r["loss"]) for r in recs["old"]]


@pytest.mark.parametrize("weighting", ["prompt", "lemma1"])
def test_prompt_weighting_runs_and_changes_the_update(tmp_path, monkeypatch, tiny_policy, weighting):
    """Same samples (same seeds), one update: the re-weighted M-step moves the weights differently, while
    its first-update loss equals the token mean's (RAFT++ at ratio 1: -accepted tokens / all tokens), because
    the weights are scaled to give the accepted samples the same total weight."""
    import copy

    import torch

    res = {}
    for w in ("tokens", weighting):
        cfg = _tiny(prompt_weighting=w, mini_batch_size=64)  # one mini-batch: the weighting is exact
        train, test = _problems(cfg)
        _three_kinds(monkeypatch, train)
        model = copy.deepcopy(tiny_policy[0])
        run(cfg, tmp_path / w, model=model, tokenizer=tiny_policy[1], problems=(train, test))
        step = [r for r in _records(tmp_path / w / "metrics.jsonl") if r["kind"] == "step"][0]
        assert step["updates"] == 1 and step["skipped_updates"] == 0 and np.isfinite(step["loss"])
        res[w] = (step["pg_loss"], torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]))
    assert res["tokens"][0] == pytest.approx(res[weighting][0], rel=1e-5)
    assert (res["tokens"][1] - res[weighting][1]).abs().max() > 1e-6


def test_step_records_count_accepted_samples_that_were_truncated(tmp_path, monkeypatch):
    """RAFT trains on accepted samples cut at max_completion_length without their end token (SmolLM2's
    chatter after a correct answer): each step record counts them. A verifier that accepts everything
    makes the count equal the number of truncated samples; one that accepts nothing makes it 0."""
    import gvm_mini.rewards as rewards

    for accept, sub in ((1.0, "all"), (0.0, "none")):
        monkeypatch.setattr(rewards, "get_verifier", lambda name, a=accept: (lambda text, ans: a))
        cfg = replace(load_config("configs/tiny.yaml"), progress=False, iterations=1, eval_every=0,
                      allocation="uniform", max_completion_length=3)
        run(cfg, tmp_path / sub)
        steps = [r for r in _records(tmp_path / sub / "metrics.jsonl") if r["kind"] == "step"]
        assert steps
        for st in steps:
            truncated = round(st["truncated_frac"] * st["step_samples"])
            assert st["accepted"] == (st["step_samples"] if accept else 0)
            assert st["accepted_truncated"] == (truncated if accept else 0)
        if accept:
            assert sum(st["accepted_truncated"] for st in steps) > 0  # 3 tokens: most samples are cut


@pytest.mark.parametrize("allocation,unit,per_update", [("gvm", "responses", 32), ("gvm", "fork", 8),
                                                         ("uniform", "fork", 32)])
def test_mini_batch_unit_fork_reproduces_the_official_update_count(tmp_path, monkeypatch, tiny_policy,
                                                                   allocation, unit, per_update):
    """mini_batch_unit: fork gives a non-uniform arm mini_batch_size / samples_per_prompt responses per
    update (32 / 4 = 8 here), as the official fork's rollout.n = 1 does; uniform arms keep 32. Each step
    record's update count is ceil(step samples / responses per update)."""
    cfg = _tiny(allocation=allocation, mini_batch_unit=unit, mini_batch_size=32)
    train, test = _problems(cfg)
    _three_kinds(monkeypatch, train)
    _run(cfg, tmp_path, tiny_policy, problems=(train, test))
    steps = [r for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(r["updates"] + r["skipped_updates"] == -(-r["step_samples"] // per_update) for r in steps)
    assert sum(r["updates"] for r in steps) > 0


def test_gvm_robust_in_the_loop(tmp_path, monkeypatch, tiny_policy):
    """allocation: gvm_robust with its parts (estimator: robust, pilot: history_reuse): every prompt gets
    at least the floor (2) and at most the cap (4 x uniform = 16), never-solved prompts included; the
    pilots are trained on; the second epoch draws no pilot and its estimates come from the accumulated
    history (every sample of both visits counted)."""
    cfg = _tiny(allocation="gvm_robust", estimator="robust", pilot="history_reuse", steps_per_iteration=2)
    train, test = _problems(cfg)
    kind = _three_kinds(monkeypatch, train)
    st = _run(replace(cfg, iterations=2), tmp_path, tiny_policy, problems=(train, test))
    allocs = _records(tmp_path / "allocations.jsonl")
    for a in allocs:
        n = np.array(a["n"])
        assert n.sum() == cfg.samples_per_prompt * len(n) and n.min() >= 2 and n.max() <= 16
        assert all(0 < p < 1 for p in a["p"])  # a posterior mean is never 0 or 1
    never = np.array([kind[train[i].answer] == 2 for i in allocs[0]["prompt_ids"]])
    assert never.any() and np.all(np.array(allocs[0]["n"])[never] >= 2)  # the paper's rule gives them 0
    steps = [r for r in _records(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert steps[0]["pilot_reused"] > 0  # the first epoch's pilots are trained on
    assert st.pilot_samples == 16 * cfg.num_pilot  # one pilot per prompt, in the first epoch only
    hist = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["state"]["history"]
    first = {str(i): n for i, n in zip(allocs[0]["prompt_ids"], allocs[0]["n"])}
    second = {str(i): n for i, n in zip(allocs[1]["prompt_ids"], allocs[1]["n"])}
    # accumulated: the pilot (4, reused towards n_i) plus every training sample of both visits
    assert all(hist[i]["n"] == max(first[i], cfg.num_pilot) + second[i] for i in first)
