"""The vLLM backend (GPU extra).

vLLM cannot be installed in CI, so the glue (``rollout.sample_vllm``, ``vllm_engine``,
``sample_vllm_policy`` and ``train`` with ``backend=vllm``) is tested against a stand-in ``vllm``
package with vLLM's call and output shapes, as documented for vLLM's offline API:

* ``LLM(model=..., enable_lora=True, max_lora_rank=..., gpu_memory_utilization=..., ...)``;
* ``LLM.generate(prompts, sampling_params, *, use_tqdm, lora_request) -> list[RequestOutput]``, one
  per prompt in order; a prompt may be a ``{"prompt_token_ids": [...]}`` dict (TokensPrompt);
* ``SamplingParams(n, temperature, top_p, max_tokens, logprobs, seed)``; ``logprobs=0`` returns the
  sampled token's log-prob only;
* ``RequestOutput.prompt_token_ids``, ``.outputs: list[CompletionOutput]`` (``n`` of them);
  ``CompletionOutput.text``, ``.token_ids``, ``.logprobs: list[dict[token_id, Logprob]]`` (one dict
  per generated token, ``Logprob.logprob``), ``.finish_reason`` in ``"stop" | "length"``;
* ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``.

The stand-in samples with gvm-mini's own HF decode loop from the base model with the adapter found at
``lora_path`` loaded by PEFT, so a run through it trains exactly as a run on vLLM would be wired. The
real engine is exercised only by the GPU test at the end (skipped here); this path has not run on a
GPU in this project's CI.
"""

import importlib.machinery
import importlib.util
import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from gvm_mini.config import Config, ConfigError, validate
from gvm_mini.models import load_model
from gvm_mini.rollout import sample_hf, sample_vllm

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------------------------------------
# the stand-in
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    logprobs: int | None = None
    seed: int | None = None
    stop_token_ids: list | None = None  # vLLM's SamplingParams takes the extra end ids under this name


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    outputs: list
    finished: bool = True


class FakeLLM:
    """``vllm.LLM`` stand-in: loads the base named by ``model`` with gvm-mini, applies the adapter of
    each ``lora_request`` with PEFT, samples with ``sample_hf``; records every call."""

    instances: list = []

    def __init__(self, model, **kwargs):
        self.model_name, self.kwargs = model, kwargs
        self.base, self.tok = load_model(model)
        self.calls = []
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        from peft import PeftModel

        assert len(prompts) == len(sampling_params)
        policy = self.base
        adapter = None
        if lora_request is not None:
            from safetensors.torch import load_file

            adapter = load_file(f"{lora_request.lora_path}/adapter_model.safetensors")
            cfg = json.load(open(f"{lora_request.lora_path}/adapter_config.json"))
            policy = PeftModel.from_pretrained(self.base, lora_request.lora_path)
        self.calls.append({"prompts": prompts, "params": sampling_params, "lora": lora_request,
                           "adapter": adapter, "adapter_config": cfg if lora_request else None})
        outs = []
        for k, (p, sp) in enumerate(zip(prompts, sampling_params)):
            ids = p["prompt_token_ids"] if isinstance(p, dict) else self.tok(p)["input_ids"]
            text = self.tok.decode(ids)
            r = sample_hf(policy, _IdsTokenizer(self.tok, ids), [text], [sp.n], temperature=sp.temperature,
                          top_p=sp.top_p, max_new_tokens=sp.max_tokens, seed=sp.seed)
            comps = []
            for j in range(len(r)):
                toks, lps = r.completion_ids[j], r.logprobs[j]
                comps.append(CompletionOutput(
                    index=j, text=r.texts[j], token_ids=toks, cumulative_logprob=float(np.sum(lps)),
                    logprobs=[{t: Logprob(float(lp), 1)} for t, lp in zip(toks, lps)] if sp.logprobs is not None else None,
                    finish_reason="length" if r.truncated[j] else "stop"))
            outs.append(RequestOutput(str(k), None if isinstance(p, dict) else p, list(ids), comps))
        if lora_request is not None:
            policy.unload()  # the base goes back to what it was
        return outs


class _IdsTokenizer:
    """Encodes the one prompt text as the given ids (vLLM takes token ids as they are)."""

    def __init__(self, tok, ids):
        self._tok, self._ids = tok, list(ids)
        self.eos_token_id, self.pad_token_id = tok.eos_token_id, tok.pad_token_id

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self._ids}

    def decode(self, *a, **k):
        return self._tok.decode(*a, **k)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    vllm.LLM, vllm.SamplingParams = FakeLLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    import gvm_mini.rollout as rollout

    monkeypatch.setattr(rollout, "_VLLM_ENGINES", {})
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # restored after the test
    FakeLLM.instances = []
    return vllm


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the missing-extra message cannot be shown")
def test_missing_vllm_is_one_clear_error():
    with pytest.raises(RuntimeError, match=r"pip install 'gvm-mini\[vllm\]'"):
        sample_vllm(None, ["x"], [1])


def test_sample_vllm_ragged_counts_token_prompts_and_logprobs(fake_vllm):
    llm = FakeLLM("tiny-qwen2")
    tok = llm.tok
    prompts = ["hello there", "world", "again and again"]
    r = sample_vllm(llm, prompts, [3, 0, 2], max_new_tokens=6, seed=5, tokenizer=tok)
    call = llm.calls[-1]
    assert r.prompt_index.tolist() == [0, 0, 0, 2, 2]
    assert [sp.n for sp in call["params"]] == [3, 2] and all(sp.logprobs == 0 for sp in call["params"])
    assert [sp.seed for sp in call["params"]] == [5, 7]  # seed + prompt index
    # prompts go as token ids, encoded without special tokens (as sample_hf does)
    assert call["prompts"][0] == {"prompt_token_ids": tok("hello there", add_special_tokens=False)["input_ids"]}
    assert r.prompt_ids[0] == call["prompts"][0]["prompt_token_ids"]
    assert all(len(lp) == len(c) and np.isfinite(lp).all() for lp, c in zip(r.logprobs, r.completion_ids))
    assert r.truncated.tolist() == [len(c) == 6 and c[-1] != tok.eos_token_id for c in r.completion_ids]
    assert len(sample_vllm(llm, prompts, [0, 0, 0], tokenizer=tok)) == 0  # nothing asked, nothing generated


def test_config_rules_for_vllm():
    with pytest.raises(ConfigError, match="lora=true"):
        validate(Config(backend="vllm", lora=False))
    with pytest.raises(ConfigError, match="old_logprobs=behaviour needs backend=hf"):
        validate(Config(backend="vllm", lora=True, old_logprobs="behaviour"))
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        validate(Config(backend="vllm", lora=True, vllm_gpu_memory_utilization=1.2))
    assert validate(Config(backend="vllm", lora=True)).old_logprobs == "recompute"


def test_backend_vllm_needs_cuda_device(fake_vllm):
    from gvm_mini.em import check_model_request

    with pytest.raises(ConfigError, match="CUDA GPU"):
        check_model_request(validate(Config(backend="vllm", lora=True, model="tiny-qwen2", device="cpu")))


def test_train_with_backend_vllm_sends_the_current_adapter_each_time(fake_vllm, tmp_path):
    """A whole GVM-RAFT++ run through the stand-in: one engine for the run, built on the base with
    LoRA enabled and the configured GPU share; every sampling call (pilot and each M-step's rollout)
    gets a LoRARequest with a new id whose saved adapter equals the policy's adapter at that moment."""
    import gvm_mini.em as em
    from gvm_mini.config import load_config, replace

    cfg = replace(load_config("configs/tiny.yaml"), backend="vllm", progress=False, eval_every=0, iterations=2,
                  train_size=32, prompts_per_step=4, max_completion_length=8, vllm_gpu_memory_utilization=0.25)
    cfg = validate(cfg)
    seen = []
    real = em.m_step

    def spy_m_step(cfg_, model, *a, **k):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return real(cfg_, model, *a, **k)

    em.m_step = spy_m_step
    try:
        model, tok = em.build_policy(cfg)
        state = em.run(cfg, tmp_path, model=model, tokenizer=tok)
    finally:
        em.m_step = real
    assert state.iteration == 2
    (llm,) = FakeLLM.instances  # one engine for the whole run
    import os

    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # engine core in-process (no re-run of __main__)
    assert llm.kwargs["enable_lora"] and llm.kwargs["gpu_memory_utilization"] == 0.25
    assert llm.kwargs["max_lora_rank"] >= cfg.lora_r and llm.kwargs["max_loras"] == 1
    assert llm.kwargs["max_model_len"] == cfg.max_prompt_length + cfg.max_completion_length
    calls = llm.calls
    per_iteration = 1 + cfg.steps_per_iteration  # pilot + one rollout per M-step
    assert len(calls) == cfg.iterations * per_iteration
    assert [c["lora"].lora_int_id for c in calls] == list(range(1, len(calls) + 1))  # fresh id: vLLM caches by id
    assert all(c["adapter_config"]["r"] == cfg.lora_r for c in calls)
    # the adapter of each M-step's rollout is the policy the M-step then starts from
    rollouts = [c for i, c in enumerate(calls) if i % per_iteration != 0]
    assert len(rollouts) == len(seen)
    for call, params in zip(rollouts, seen):
        saved = {k.replace(".weight", ""): v for k, v in call["adapter"].items()}
        for name, value in params.items():
            key = next(k for k in saved if name.replace(".default.weight", "").endswith(k.split("base_model.model.", 1)[-1]))
            torch.testing.assert_close(saved[key].float(), value.float().cpu())
    # the adapter moved between calls: the weights the engine sees follow training
    first, last = rollouts[0]["adapter"], rollouts[-1]["adapter"]
    assert any(not torch.equal(first[k], last[k]) for k in first)
    steps = [json.loads(x) for x in open(tmp_path / "metrics.jsonl") if '"kind": "step"' in x]
    assert len(steps) == cfg.iterations * cfg.steps_per_iteration and all(s["skipped_updates"] == 0 for s in steps)


def test_memory_plan_accounts_for_the_colocated_engine():
    """The dry-run plan with backend=vllm gives the engine's share, its weights (bf16 base, 1.5B
    twin: ~2.9 GiB; 4-bit: about a third) and the smallest GPU on which trainer and engine fit."""
    from gvm_mini.config import load_config, replace
    from gvm_mini.plan import make_plan

    base = load_config("configs/qwen2.5-math-1.5b_gvm-raftpp.yaml")
    hf = make_plan(base)
    assert "vllm_weights_gb" not in hf
    for u in (0.3, 0.5):
        plan = make_plan(replace(base, backend="vllm", vllm_gpu_memory_utilization=u))
        assert plan["vllm_gpu_memory_utilization"] == u
        assert 2.8 < plan["vllm_weights_gb"] < 3.2  # 1.54B parameters + the r=64 adapter, 2 bytes each
        trainer = max(plan["train_peak_gb"], plan["sample_peak_gb"])
        assert plan["min_gpu_gb"] >= round(trainer / (1 - u), 2) - 0.01
        assert plan["min_gpu_gb"] >= round(plan["vllm_weights_gb"] / u, 2) - 0.01
    q = make_plan(replace(base, backend="vllm", load_in_4bit=True))
    assert q["vllm_weights_gb"] < 0.6 * plan["vllm_weights_gb"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is a GPU extra (pip install 'gvm-mini[vllm]'), not installed")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")
def test_vllm_ragged_counts(tmp_path):  # pragma: no cover - GPU only
    from vllm import LLM

    from gvm_mini.models import offline_tokenizer, tiny_model

    tok = offline_tokenizer()
    model = tiny_model(tok, hidden_size=64, num_layers=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path), gpu_memory_utilization=0.2, enforce_eager=True)
    r = sample_vllm(llm, ["hello", "world", "again"], [3, 0, 2], max_new_tokens=8, seed=0, tokenizer=tok)
    assert r.prompt_index.tolist() == [0, 0, 0, 2, 2]
    assert all(len(lp) == len(c) for lp, c in zip(r.logprobs, r.completion_ids))
