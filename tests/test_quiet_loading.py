"""Notebooks stay quiet: gvm-mini's model loads and saves show no transformers progress bars
("Loading weights", "Writing model shards"), and leave the user's setting as it was."""

from __future__ import annotations

import pytest
from transformers.utils import logging as hf_logging

from gvm_mini.models import add_lora, load_model, offline_tokenizer, quiet_loading, tiny_model
from gvm_mini.rundir import save_adapter


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tok = offline_tokenizer()
    with quiet_loading():
        tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_transformers_shows_the_bar_without_us(model_dir, capfd):
    """The control: a plain from_pretrained prints the bar this module suppresses."""
    from transformers import AutoModelForCausalLM

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    AutoModelForCausalLM.from_pretrained(model_dir)
    assert "Loading weights" in capfd.readouterr().err


def test_load_and_save_are_quiet_and_restore_the_setting(model_dir, tmp_path, capfd):
    capfd.readouterr()
    model, _ = load_model(str(model_dir))
    save_adapter(tmp_path, add_lora(model, r=2, lora_alpha=4))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err and "it/s" not in err, err
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert hf_logging.is_progress_bar_enabled()  # switched back on for the user's own calls
    hf_logging.disable_progress_bar()
    try:
        load_model(str(model_dir))
        assert not hf_logging.is_progress_bar_enabled()  # a user who turned them off keeps them off
    finally:
        hf_logging.enable_progress_bar()


def test_lora_is_added_without_the_bitsandbytes_kernels_warning():
    """peft imports bitsandbytes (when installed) on its first use; on a CPU with AVX-512 BF16 that import
    logs "Failed to load CPU gemm_4bit_forward from kernels-community ..." (the optional `kernels`
    package). models.add_lora imports peft after bitsandbytes under a quieted logger: a fresh process
    adds LoRA and prints nothing about it."""
    import subprocess
    import sys

    code = ("from gvm_mini import models; from gvm_mini.standins import offline_tokenizer, tiny_model; "
            "tok = offline_tokenizer(); models.add_lora(tiny_model(tok), r=4)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "kernels" not in out.stderr + out.stdout, out.stderr
