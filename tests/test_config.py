"""Config: YAML round trip, overrides, and one clear error per bad input, before any model loads."""

from pathlib import Path

import pytest

from gvm_mini.config import Config, ConfigError, apply_overrides, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert cfg.budget_per_step == cfg.samples_per_prompt * cfg.prompts_per_step
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_shipped_config_validates():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files, "configs/ is empty"
    for f in files:
        load_config(f)


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ["learning_rate=1e-5", "lora=false", "max_per_prompt=null", "iterations=3",
                                     "system_prompt=null", "alpha=0.01"])
    assert cfg.learning_rate == 1e-5 and cfg.lora is False and cfg.max_per_prompt is None
    assert cfg.iterations == 3 and cfg.system_prompt is None and cfg.alpha == 0.01


BAD_YAML = [
    ("algorithm: [raftpp\n", "malformed YAML at line"),
    ("- a\n- b\n", "must be a mapping"),
    ("learning_rat: 0.1\n", "did you mean 'learning_rate'"),
    ("num_pilots: 4\n", "did you mean 'num_pilot'"),
    ("iterations: two\n", "iterations must be an integer"),
    ("iterations: 2.5\n", "iterations must be an integer"),
    ("lora: maybe\n", "lora must be true or false"),
    ("learning_rate: fast\n", "learning_rate must be a number"),
    ("alpha: 0\n", "alpha must be > 0"),
    ("alpha: -1e-3\n", "alpha must be > 0"),
    ("beta: 0.5\n", "beta must be >= 1"),
    ("num_pilot: 0\n", "num_pilot"),
    ("epsilon: 0.3\nepsilon_high: 0.2\n", "epsilon_high"),
    ("learning_rate: 0\n", "learning_rate must be > 0"),
    ("learning_rate: -1\n", "learning_rate must be > 0"),
    ("temperature: -0.5\n", "temperature must be >= 0"),
    ("top_p: 1.5\n", "top_p must be in"),
    ("min_per_prompt: 9\nsamples_per_prompt: 8\n", "min_per_prompt=9 cannot be met"),
    ("max_per_prompt: 2\nsamples_per_prompt: 8\n", "max_per_prompt=2 cannot hold"),
    ("algorithm: ppo\n", "algorithm must be one of"),
    ("allocation: gvn\n", "did you mean 'gvm'"),
    ("gradnorm_params: embeddings\n", "gradnorm_params must be one of"),
    ("loss_type: sum\n", "loss_type must be one of"),
    ("verifier: regex\n", "verifier must be one of"),
    ("dataset: jsonl:/no/such/file.jsonl\n", "dataset file not found"),
    ("dataset: s3://bucket\n", "dataset must be"),
    ("grpo_group_size: 1\n", "grpo_group_size"),
    ("lora: false\ngradnorm_params: lora\n", "gradnorm_params=lora needs lora=true"),
    ("lora: false\nload_in_4bit: true\n", "needs lora=true"),
    ("prompts_per_step: 100\ntrain_size: 50\n", "exceeds train_size"),
    ("iterations: null\n", "iterations may not be null"),
    ("kl_reference: base\n", "kl_reference must be one of"),
    ("mini_batch_size: 0\n", "mini_batch_size must be > 0"),
    ("estimator: mle\n", "estimator must be one of paper, bayes"),
    ("pilot: old\n", "pilot must be one of fresh, reuse, history"),
    ("pilot: histroy\n", "did you mean 'history'"),
    ("prompt_weighting: sample\n", "prompt_weighting must be one of tokens, prompt, lemma1"),
    ("reuse_pilot: true\npilot: history\n", "conflicts with pilot: history"),
    ("allocation: knapsak\n", "did you mean 'knapsack'"),
    ("allocation: uniform\nprompt_weighting: lemma1\n", "prompt_weighting=lemma1 .* needs the pilot"),
]


@pytest.mark.parametrize("text, message", BAD_YAML)
def test_bad_yaml_is_one_clear_error(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(f)
    assert "\n" not in str(info.value)


def test_missing_and_binary_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError):
        load_config(f)


@pytest.mark.parametrize("item, message", [("lr", "expects key=value"), ("lr=1", "did you mean 'lora_r'|unknown config key")])
def test_bad_override(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [item])


def test_allocation_lab_options_defaults_and_alias():
    cfg = load_config(None)
    # the paper's behaviour stays the default of every new option
    assert (cfg.estimator, cfg.pilot, cfg.prompt_weighting, cfg.pilot_mode) == ("paper", "fresh", "tokens", "fresh")
    cfg = apply_overrides(Config(), ["allocation=gvm_tokens", "estimator=bayes", "pilot=history", "prompt_weighting=lemma1"])
    assert (cfg.allocation, cfg.estimator, cfg.pilot_mode, cfg.prompt_weighting) == ("gvm_tokens", "bayes", "history", "lemma1")
    load_config(None, ["allocation=knapsack"])
    # reuse_pilot: true (deprecated) means pilot: reuse; both spellings validate
    assert load_config(None, ["reuse_pilot=true"]).pilot_mode == "reuse"
    assert load_config(None, ["pilot=reuse"]).pilot_mode == "reuse"
    assert load_config(None, ["reuse_pilot=true", "pilot=reuse"]).pilot_mode == "reuse"


# ---------------------------------------------------------------------------------------------
# one name, one rule: `allocation: gvm_robust` alone runs the studied rule
# ---------------------------------------------------------------------------------------------


def test_gvm_robust_alone_is_the_studied_rule():
    from gvm_mini.config import Config, validate

    cfg = validate(Config(allocation="gvm_robust"))
    got = (cfg.estimator, cfg.pilot, cfg.robust_floor, cfg.robust_cap_factor, cfg.prompt_weighting)
    assert got == ("robust", "history_reuse", 2, 2.0, "prompt")
    paper = validate(Config(allocation="gvm"))
    assert (paper.estimator, paper.pilot, paper.prompt_weighting) == ("paper", "fresh", "tokens")
    assert validate(Config(allocation="knapsack")).pilot == "history"


def test_rule_parts_stay_overridable_and_follow_a_change_of_rule(tmp_path):
    import yaml

    from gvm_mini.config import load_config, replace, save_config

    cfg = load_config(None, ["allocation=gvm_robust", "prompt_weighting=tokens"])
    assert (cfg.estimator, cfg.pilot, cfg.prompt_weighting) == ("robust", "history_reuse", "tokens")
    # naming another rule brings that rule's settings, except what the user set
    other = replace(cfg, allocation="gvm")
    assert (other.estimator, other.pilot, other.prompt_weighting) == ("paper", "fresh", "tokens")
    # an explicit value equal to another rule's default stays explicit in YAML
    (tmp_path / "a.yaml").write_text("allocation: gvm_robust\nestimator: paper\n")
    a = load_config(tmp_path / "a.yaml")
    assert (a.estimator, a.pilot) == ("paper", "history_reuse")
    # a YAML base of one rule and a child of another: the child's rule decides the unset keys
    (tmp_path / "b.yaml").write_text("base: a.yaml\nallocation: uniform\n")
    b = load_config(tmp_path / "b.yaml")
    assert (b.allocation, b.estimator, b.pilot, b.prompt_weighting) == ("uniform", "paper", "fresh", "tokens")
    # the run directory's config.yaml holds the resolved values, and nothing internal
    save_config(load_config(None, ["allocation=gvm_robust"]), tmp_path / "c.yaml")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert "rule_defaults" not in saved
    assert (saved["estimator"], saved["pilot"], saved["prompt_weighting"]) == ("robust", "history_reuse", "prompt")
    assert load_config(tmp_path / "c.yaml").estimator == "robust"


def test_dry_run_prints_the_resolved_rule(capsys, tmp_path):
    from gvm_mini.cli import main

    assert main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "allocation=gvm_robust", "--dry-run",
                 "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("rule:"))
    assert line == ("rule: allocation=gvm_robust estimator=robust (rule) pilot=history_reuse (rule) robust_floor=2 "
                    "robust_cap_factor=2.0 prompt_weighting=prompt (rule)")
