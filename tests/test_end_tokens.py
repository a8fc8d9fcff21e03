"""Every end token: the sampler stops at any id of ``rollout.end_token_ids`` (the tokenizer's eos and
every eos id of the model's generation config), and "truncated" means "no end token of any kind".

The rows are forced to end on a chosen id at a chosen step by a forward hook on the output head that
makes that id certain at that step (and every end id impossible before it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gvm_mini import models
from gvm_mini.rollout import end_token_ids, sample_hf


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    model, tok = models.load_model("tiny-qwen2")
    return model, tok


def _prompts(tok, questions=("What is 3 + 4?", "Compute 12 * 3 - 3.", "Hi")):
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


class _Force:
    """Output-head hook: before step ``k`` no id of ``banned`` can be drawn; at step ``k`` ``target`` is
    certain (``None``: never end). Step 0 is the prefill; each later model call is one more step."""

    def __init__(self, model, target: int | None, k: int, banned: list[int]):
        self.target, self.k, self.banned, self.step = target, k, torch.tensor(banned), 0
        self.handle = model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, _mod, _inp, out):
        step, self.step = self.step, self.step + 1
        if self.target is not None and step == self.k:
            forced = torch.full_like(out, float("-inf"))
            forced[..., self.target] = 0.0
            return forced
        return out.index_fill(-1, self.banned, float("-inf"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _with_end_ids(model, ids):
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = ids
    return saved


# --------------------------------------------------------------------------------------------------
# which ids end a completion
# --------------------------------------------------------------------------------------------------


def test_end_token_ids_merge_tokenizer_and_generation_config(policy):
    model, tok = policy
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert end_token_ids(model, tok) == [eos]  # tiny model: generation config eos == tokenizer eos
    saved = _with_end_ids(model, [pad, eos, 77])
    try:
        assert end_token_ids(model, tok) == [eos, pad, 77]  # tokenizer's first, duplicates dropped
        assert end_token_ids(model, None) == [pad, eos, 77]
    finally:
        model.generation_config.eos_token_id = saved
    assert end_token_ids(None, tok) == [eos]
    fresh, _ = models.load_model("tiny-qwen2")
    fresh.generation_config.eos_token_id = [pad, eos]
    peft = models.add_lora(fresh, r=4, lora_alpha=8)  # a PEFT model reads its base's generation config
    assert end_token_ids(peft, tok) == [eos, pad]


@pytest.mark.parametrize("twin, expected", [
    ("llama-3.2-1b", [128001, 128008, 128009]),  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    ("qwen2.5-math-1.5b", [151645, 151643]),  # <|im_end|>, <|endoftext|>
])
def test_shape_twins_carry_the_published_end_ids(twin, expected):
    model = models.shape_twin(twin, device="meta")
    assert end_token_ids(model, None) == expected
    assert model.generation_config.bos_token_id == models.twin_config(twin).bos_token_id
    assert max(expected) < model.config.vocab_size


# --------------------------------------------------------------------------------------------------
# sampling stops at each of them
# --------------------------------------------------------------------------------------------------


def test_rows_end_on_each_end_id_and_are_not_truncated(policy):
    model, tok = policy
    word = tok("7", add_special_tokens=False)["input_ids"][0]  # an ordinary token may be an end id too
    ends = [tok.eos_token_id, tok.pad_token_id, word]
    saved = _with_end_ids(model, ends[1:])
    try:
        assert end_token_ids(model, tok) == ends
        prompts = _prompts(tok)
        for k, end in zip((3, 1, 5), ends):
            with _Force(model, end, k, ends):
                ro = sample_hf(model, tok, prompts, [2, 1, 2], max_new_tokens=12, seed=0)
            assert not ro.truncated.any(), (end, ro.completion_ids)
            for toks, lp, text in zip(ro.completion_ids, ro.logprobs, ro.texts):
                assert len(toks) == k + 1 and toks[-1] == end  # stopped there, the end token kept
                assert not set(toks[:-1]) & set(ends)
                assert len(lp) == len(toks) and lp[-1] == pytest.approx(0.0, abs=1e-6)  # it was certain
                assert text == tok.decode(toks[:-1], skip_special_tokens=True)  # and left out of the text
        # no end token of any kind within max_new_tokens: truncated, full length
        with _Force(model, None, 0, ends):
            ro = sample_hf(model, tok, prompts, [1, 1, 1], max_new_tokens=6, seed=0)
        assert ro.truncated.all() and all(len(c) == 6 for c in ro.completion_ids)
    finally:
        model.generation_config.eos_token_id = saved


def test_rows_ending_at_different_steps_on_different_ids(policy):
    """One batch, the rows compacted as they finish: each row stops at its own first end id."""
    model, tok = policy
    ends = [tok.eos_token_id, tok.pad_token_id]
    saved = _with_end_ids(model, ends)
    try:
        bias = torch.zeros(len(tok))
        bias[ends] = 3.0  # make both end ids likely, so rows end early, at different steps
        h = model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: out + bias)
        try:
            ro = sample_hf(model, tok, _prompts(tok), [6, 6, 6], max_new_tokens=10, seed=3)
        finally:
            h.remove()
    finally:
        model.generation_config.eos_token_id = saved
    last = [c[-1] if c else None for c in ro.completion_ids]
    ended = np.array([x in ends for x in last])
    assert {x for x in last if x in ends} == set(ends)  # both ids ended some row
    assert (ro.truncated == ~ended).all()
    for toks, trunc in zip(ro.completion_ids, ro.truncated):
        assert not set(toks[:-1]) & set(ends)  # nothing after the first end token
        assert trunc == (len(toks) == 10 and toks[-1] not in ends)


# --------------------------------------------------------------------------------------------------
# a single eos: exactly the former behaviour
# --------------------------------------------------------------------------------------------------

#: sample_hf stopping at tokenizer.eos_token_id only, same call as below: token ids and truncation flags.
#: Pinned before end_token_ids existed, re-pinned once when the decode loop stopped syncing with the host
#: per token (each sample now draws its own uniform every step, so its draws no longer depend on when
#: other rows leave the batch; [417, 47, 2], [461, 2] and the first three tokens of the others are as before)
_FORMER_IDS = [[417, 47, 2], [28, 371, 323, 468, 6, 100, 2], [461, 2], [412, 508, 283, 111, 336, 228, 504, 461],
               [468, 294, 501, 2], [22, 272, 318, 393, 179, 373, 160, 288]]
_FORMER_TRUNCATED = [False, False, False, True, False, True]


def test_single_eos_sampling_is_unchanged(policy):
    model, tok = policy
    eos = tok.eos_token_id
    assert end_token_ids(model, tok) == [eos]
    h = model.get_output_embeddings().register_forward_hook(
        lambda _m, _i, o: o.index_add(-1, torch.tensor([eos]), torch.full((*o.shape[:-1], 1), 3.5)))
    try:
        ro = sample_hf(model, tok, _prompts(tok), [2, 1, 3], temperature=1.0, max_new_tokens=8, seed=5)
    finally:
        h.remove()
    assert ro.completion_ids == _FORMER_IDS
    assert ro.truncated.tolist() == _FORMER_TRUNCATED
    assert ro.texts == [tok.decode(c, skip_special_tokens=True) for c in _FORMER_IDS]
