"""The HF decode loop of ``rollout.sample_hf``: one prefill per prompt, finished rows dropped
from the batch, behaviour log-probs as ``logit - logsumexp``. Checked against a forward recompute and
against the former ``generate`` path (tests/frozen_reference.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gvm_mini.losses import token_logprobs
from gvm_mini.models import load_model
from gvm_mini.rollout import sample_hf, to_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frozen_reference import sample_hf_generate  # noqa: E402

PROMPTS = [f"Compute {a}+{a * 13 + 1}." + " ok" * (a % 3) for a in range(5)]  # ragged prompt lengths
COUNTS = [3, 0, 5, 1, 2]


@pytest.fixture(scope="module", params=["tiny-qwen2", "tiny-llama"])
def policy(request):
    """A random tiny model whose end-of-sequence token gets a logit bias of +5 (about 1 in 4 per step
    at temperature 1), so that samples end at different steps and the decode loop drops rows."""
    model, tok = load_model(request.param)
    head = model.get_output_embeddings()
    bias = torch.zeros(head.out_features)
    bias[tok.eos_token_id] = 5.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return model, tok


def test_behaviour_logprobs_match_a_forward_recompute(policy):
    model, tok = policy
    ro = sample_hf(model, tok, PROMPTS, COUNTS, temperature=1.0, max_new_tokens=12, seed=0)
    assert ro.prompt_index.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3, 4, 4]
    lengths = [len(c) for c in ro.completion_ids]
    assert len(set(lengths)) > 2 and ro.truncated.sum() < len(ro)  # ragged, most ended on eos
    for c, tr in zip(ro.completion_ids, ro.truncated):
        assert (c[-1] == tok.eos_token_id) != tr and tok.eos_token_id not in c[:-1]
        assert tr == (len(c) == 12 and c[-1] != tok.eos_token_id)
    ids, am, cm, blogp = to_batch(ro, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, ids, am)
    assert ((lp - blogp) * cm).abs().max().item() < 1e-6


def test_temperature_logprobs_are_those_of_the_scaled_distribution(policy):
    model, tok = policy
    ro = sample_hf(model, tok, PROMPTS, COUNTS, temperature=0.7, max_new_tokens=10, seed=1)
    ids, am, cm, blogp = to_batch(ro, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, ids, am, temperature=0.7)
    assert ((lp - blogp) * cm).abs().max().item() < 1e-6


def test_same_seed_same_samples_and_top_p_never_draws_a_dropped_token(policy):
    model, tok = policy
    a = sample_hf(model, tok, PROMPTS, COUNTS, temperature=1.0, top_p=0.5, max_new_tokens=10, seed=7)
    b = sample_hf(model, tok, PROMPTS, COUNTS, temperature=1.0, top_p=0.5, max_new_tokens=10, seed=7)
    assert a.completion_ids == b.completion_ids and a.texts == b.texts
    assert all(np.array_equal(x, y) for x, y in zip(a.logprobs, b.logprobs))
    # top-p keeps the tokens up to and including the one crossing 0.5: a kept token has log-prob
    # >= log of the smallest kept probability after renormalisation, finite in any case
    assert all(np.isfinite(x).all() and (x <= 0).all() for x in a.logprobs)
    c = sample_hf(model, tok, PROMPTS, COUNTS, temperature=1.0, top_p=0.5, max_new_tokens=10, seed=8)
    assert c.completion_ids != a.completion_ids


def test_greedy_equals_the_former_generate_path(policy):
    model, tok = policy
    kw = dict(temperature=0.0, max_new_tokens=10, seed=0)
    new = sample_hf(model, tok, PROMPTS, COUNTS, **kw)
    old = sample_hf_generate(model, tok, PROMPTS, COUNTS, **kw)
    assert new.completion_ids == old.completion_ids and new.truncated.tolist() == old.truncated.tolist()
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(new.logprobs, old.logprobs))


def test_chunks_and_token_bound(policy):
    """Chunks split a prompt's samples across batches (each chunk prefills the prompts it holds)."""
    model, tok = policy
    ro = sample_hf(model, tok, PROMPTS, COUNTS, temperature=1.0, max_new_tokens=6, batch_size=4,
                   max_batch_tokens=40, seed=0)
    assert ro.prompt_index.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3, 4, 4]
    ids, am, cm, blogp = to_batch(ro, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, ids, am)
    assert ((lp - blogp) * cm).abs().max().item() < 1e-6
    empty = sample_hf(model, tok, PROMPTS[:2], [0, 0], max_new_tokens=6, seed=0)
    assert len(empty) == 0


def test_gradient_checkpointing_in_train_mode_does_not_drop_the_cache(policy):
    """HF layers ignore the KV cache when checkpointing in train mode; the sampler turns checkpointing
    off while it samples (and back on), so a model sampled between updates samples correctly."""
    model, tok = policy
    kw = dict(temperature=0.0, max_new_tokens=8, seed=0)
    want = sample_hf(model, tok, PROMPTS, COUNTS, **kw)
    model.gradient_checkpointing_enable()
    model.train()
    try:
        got = sample_hf(model, tok, PROMPTS, COUNTS, **kw)
        assert model.is_gradient_checkpointing and model.training
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    assert got.completion_ids == want.completion_ids


def test_draws_follow_the_model_distribution(policy):
    """The first token of 3000 samples of one prompt: its empirical distribution is within a small
    total-variation distance of softmax(logits / T) (later steps use the same code on the cached
    conditionals, whose log-probs are checked against a recompute above)."""
    model, tok = policy
    n, T = 3000, 1.5
    ro = sample_hf(model, tok, PROMPTS[:1], [n], temperature=T, max_new_tokens=1, batch_size=n, seed=3)
    ids = torch.tensor([tok(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        p = torch.softmax(model(input_ids=ids).logits[0, -1].float() / T, -1)
    emp = torch.bincount(torch.tensor([c[0] for c in ro.completion_ids]), minlength=p.numel()).float() / n
    tv = 0.5 * (emp - p).abs().sum().item()
    # a multinomial sample of 3000 over this distribution has E[TV] of about 0.1-0.2 by sampling noise alone
    # (hundreds of tokens); compare with a draw of the same size from the exact distribution
    ref = torch.bincount(torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(0)),
                         minlength=p.numel()).float() / n
    tv_ref = 0.5 * (ref - p).abs().sum().item()
    assert tv < 1.3 * tv_ref + 0.02, (tv, tv_ref)


def test_decode_loop_syncs_with_the_host_once_per_check(policy, monkeypatch):
    """No per-token host sync: tokens and log-probs stay on the model's device, and the loop looks at
    which rows have ended only every CHECK_EVERY steps. Counted here as the calls that copy a tensor
    to the host (``.cpu()``, ``.item()``, ``.tolist()``, ``.numpy()``, ``int()``, ``bool()``, ``float()``)
    during a 32-token decode of 6 rows that never end: 2 on the host-built prompt lengths, 32 / 8 - 1 = 3
    checks, 2 final copies (the former loop made 3 per token: 96). The prompts have equal lengths: with
    ragged ones transformers' mask builder checks the padding mask once per step (its own sync)."""
    from gvm_mini import rollout

    model, tok = policy
    calls = []
    for name in ("cpu", "item", "tolist", "numpy", "__int__", "__bool__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    prompts = [tok(p, add_special_tokens=False)["input_ids"][:4] for p in PROMPTS[:3]]
    with torch.no_grad():
        tokens, logps = rollout._decode(model, prompts, np.array([0, 0, 1, 1, 2, 2]), ends=torch.tensor([-1]),
                                        pad=tok.pad_token_id, temperature=1.0, top_p=0.9, max_new_tokens=32,
                                        device=torch.device("cpu"))
    monkeypatch.undo()
    assert tokens.shape == (6, 32) and bool((logps < 0).all())
    assert rollout.CHECK_EVERY == 8 and len(calls) <= 2 + 3 + 2, calls


def test_samples_do_not_depend_on_when_finished_rows_are_dropped(policy, monkeypatch):
    """Each sample draws its own uniform at every step whether or not other rows are still in the
    batch, so checking for ended rows every step or every 8 gives the same samples (the matmuls of
    different batch widths round differently, so a tie within ~1e-6 could in principle flip a draw)."""
    from gvm_mini import rollout

    model, tok = policy
    runs = []
    for every in (1, 8):
        monkeypatch.setattr(rollout, "CHECK_EVERY", every)
        monkeypatch.setattr(rollout._decode, "__kwdefaults__", {"check_every": every})
        runs.append(sample_hf(model, tok, PROMPTS, COUNTS, temperature=1.0, top_p=0.9, max_new_tokens=16, seed=3))
    a, b = runs
    assert a.completion_ids == b.completion_ids  # log-probs to float rounding: the batch widths differ
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a.logprobs, b.logprobs))
    assert len({len(c) for c in a.completion_ids}) > 2  # rows ended at different steps: some were dropped


def _lora_policy(seed=0):
    from gvm_mini.config import Config, validate
    from gvm_mini.em import build_policy

    cfg = validate(Config(model="tiny-llama", lora=True, lora_r=4, device="cpu", dtype="float32", progress=False, seed=seed))
    model, tok = build_policy(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a fresh adapter is the identity: make B non-zero so the merge matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return cfg, model, tok


def test_sampling_model_merges_the_adapter_into_a_copy_in_sample_dtype():
    """sample_dtype=auto samples the policy itself; bfloat16 a merged bf16 copy whose logits are the
    float32 policy's up to bf16 rounding (and far from the base's without the adapter), the policy untouched."""
    from gvm_mini.config import replace
    from gvm_mini.rollout import sampling_model

    cfg, model, tok = _lora_policy()
    assert sampling_model(cfg, model) is model
    twin = sampling_model(replace(cfg, sample_dtype="bfloat16"), model)
    assert twin is not model and not hasattr(twin, "peft_config")
    assert {p.dtype for p in twin.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32} and hasattr(model, "peft_config")
    ids = torch.tensor([tok("What is 3+4?")["input_ids"]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float().log_softmax(-1)
        got = twin(input_ids=ids).logits.float().log_softmax(-1)
        with model.disable_adapter():
            base = model(input_ids=ids).logits.float().log_softmax(-1)
    gap, adapter = (got - ref).abs().mean().item(), (base - ref).abs().mean().item()
    assert gap < 0.05 and adapter > 5 * gap, (gap, adapter)


def test_sample_dtype_needs_recompute_and_is_the_hf_samplers_only():
    from gvm_mini.config import Config, ConfigError, validate

    validate(Config(sample_dtype="bfloat16"))
    for bad in (dict(sample_dtype="int8"), dict(sample_dtype="bfloat16", old_logprobs="behaviour")):
        with pytest.raises(ConfigError):
            validate(Config(**bad))
    validate(Config(sample_dtype="bfloat16", load_in_4bit=True, lora=True))  # the 4-bit policy samples itself
    validate(Config(sample_dtype="bfloat16", backend="vllm", lora=True))  # the HF sampler's: vLLM has vllm_dtype
