"""Training-config checks: value types when the config is built, ranges before any work starts."""

from __future__ import annotations

import pytest
from tiny_run import TINY as TINY_RUN

from stellar.cli import main
from stellar.train.config import load_config
from stellar.train.trainer import Trainer

TINY = [*TINY_RUN]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_steps=abc", "max_steps expects an integer, got 'abc'"),
        ("objective.ot_iterations=abc", "objective.ot_iterations expects an integer, got 'abc'"),
        ("batch_size=abc", "batch_size expects an integer, got 'abc'"),
        ("batch_size=4.5", "batch_size expects an integer, got 4.5"),
        ("epochs=null", r"epochs expects an integer \(null is not allowed here\), got None"),
        ("compile=maybe", "compile expects true or false, got 'maybe'"),
        ("ema.enabled=abc", "ema.enabled expects true or false, got 'abc'"),
        ("ema.enabled=1", "ema.enabled expects true or false, got 1"),
        ("optim.lr=fast", "optim.lr expects a number, got 'fast'"),
        ("optim.betas=[0.9,x]", r"optim.betas\[1\] expects a number, got 'x'"),
        ("optim.betas=[0.9]", r"optim.betas expects a list of 2 values, got \[0.9\]"),
        ("augment.color=3", "augment.color expects a mapping, got 3"),
    ],
)
def test_wrong_value_types_fail_when_the_config_is_built(override, message):
    with pytest.raises(ValueError, match=f"config key {message}"):
        load_config("cpu-smoke", [override])


def test_values_are_converted_to_the_annotated_type():
    cfg = load_config(
        "cpu-smoke",
        ["out=20240101", "vq_model=010", "optim.lr=1e-3", "ema.momentum=1", "data.root=null"],
    )
    # str fields keep the text as typed (YAML reads 010 as the octal integer 8).
    assert cfg.out == "20240101" and cfg.vq_model == "010" and cfg.data.root is None
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.ema.momentum, float)
    assert cfg.optim.betas == (0.9, 0.999)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ckpt_every=0", "ckpt_every must be an integer >= 1, got 0"),
        ("log_every=0", "log_every must be an integer >= 1, got 0"),
        ("max_steps=0", "max_steps must be an integer >= 1 or null, got 0"),
        ("stop_at=0", "stop_at must be an integer >= 1 or null, got 0"),
        ("augment.mask_ratio=1.5", r"augment.mask_ratio must be in \[0, 1\), got 1.5"),
        ("augment.focal_mode=foo", "augment.focal_mode must be one of gaussian, block, null"),
        ("augment.global_size=70", "augment.global_size must be a multiple of the patch size 8"),
        ("augment.local_size=36", "augment.local_size must be a multiple of the patch size 8"),
    ],
)
def test_out_of_range_values_fail_before_anything_is_written(tmp_path, override, message):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path / 'run'}", "max_steps=2", override])
    with pytest.raises(ValueError, match=f"config key {message}"):
        Trainer(cfg).train()
    assert not (tmp_path / "run").exists()


def test_fsdp_with_an_ema_teacher_is_rejected(tmp_path):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", "strategy=fsdp", "ema.enabled=true"])
    with pytest.raises(ValueError, match="ema.enabled=true is not supported with strategy=fsdp"):
        Trainer(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init.checkpoint=/some/run", "model_overrides.num_sparse_tokens=12"], "init.checkpoint"),
        (["data.root=/photos"], "add data.source=folder"),
        (["model_overrides.num_sparse_tokens=1"], "needs at least 2 of them"),
    ],
)
def test_settings_that_would_be_silently_ignored_are_rejected(tmp_path, overrides, message):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", *overrides])
    with pytest.raises(ValueError, match=message):
        Trainer(cfg)


def test_shipped_presets_pass_the_checks():
    from stellar.train.config import preset_names

    for name in preset_names():
        cfg = load_config(name)
        assert not (cfg.strategy == "fsdp" and cfg.ema.enabled), name


def test_unknown_model_override_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"model_overrides key\(s\) num_sparse_token; .*"):
        load_config("cpu-smoke", ["model_overrides.num_sparse_token=12"])
    with pytest.raises(ValueError, match=r"encoder.patch_sz; valid keys: .*encoder.\{.*patch_size"):
        load_config("cpu-smoke", ["model_overrides.encoder.patch_sz=4"])
    # A config built in Python (not through load_config) is checked by the trainer.
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}"])
    cfg.model_overrides = {"num_sparse_token": 12}
    with pytest.raises(ValueError, match="num_sparse_token; valid keys: num_sparse_tokens"):
        Trainer(cfg)
    # Known keys, nested ones included, reach the model.
    cfg = load_config(
        "cpu-smoke",
        [*TINY, "model_overrides.num_sparse_tokens=4", "model_overrides.encoder.hidden_size=64"],
    )
    model = Trainer(cfg).model
    assert model.config.num_sparse_tokens == 4 and model.config.encoder.hidden_size == 64


def test_train_overrides_may_follow_the_flags(monkeypatch):
    import stellar.train.command as command

    seen = []
    monkeypatch.setattr(command, "run", lambda args: seen.append(args) or 0)
    assert main(["train", "out=/tmp/x", "--resume", "max_steps=1", "--config", "cpu-demo"]) == 0
    (args,) = seen
    assert args.resume and args.config == "cpu-demo"
    assert args.overrides == ["out=/tmp/x", "max_steps=1"]
