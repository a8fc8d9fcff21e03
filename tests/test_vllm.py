"""The vLLM backend (GPU extra). Without vLLM or CUDA these tests skip with the reason; the error
path of a missing extra is tested everywhere."""

import importlib.util

import pytest
import torch

from gvm_mini.rollout import sample_vllm

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the missing-extra message cannot be shown")
def test_missing_vllm_is_one_clear_error():
    with pytest.raises(RuntimeError, match=r"pip install 'gvm-mini\[vllm\]'"):
        sample_vllm(None, ["x"], [1])


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
    r = sample_vllm(llm, ["hello", "world", "again"], [3, 0, 2], max_new_tokens=8, seed=0)
    assert r.prompt_index.tolist() == [0, 0, 0, 2, 2]
    assert all(len(lp) == len(c) for lp, c in zip(r.logprobs, r.completion_ids))
