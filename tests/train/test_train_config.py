"""Training-config checks: value types when the config is built, ranges before any work starts."""

from __future__ import annotations

import importlib
import re

import pytest
import yaml
from tiny_run import TINY as TINY_RUN

from stellar.cli import main
from stellar.data.augment import ColorAugment
from stellar.errors import UsageError
from stellar.train import train
from stellar.train.config import load_config, read_yaml
from stellar.train.trainer import Trainer

TINY = [*TINY_RUN]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_steps=abc", "max_steps: expected an integer or null, got 'abc'"),
        ("augment.n_local=abc", "augment.n_local: expected an integer, got 'abc'"),
        ("batch_size=abc", "batch_size: expected an integer, got 'abc'"),
        ("batch_size=4.5", "batch_size: expected an integer, got 4.5"),
        ("epochs=null", r"epochs: expected an integer \(null is not allowed here\), got None"),
        ("compile=maybe", "compile: expected true or false, got 'maybe'"),
        ("ema.enabled=abc", "ema.enabled: expected true or false, got 'abc'"),
        ("ema.enabled=1", "ema.enabled: expected true or false, got 1"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.betas=[0.9,x]", r"optim.betas\[1\]: expected a number, got 'x'"),
        ("optim.betas=[0.9]", r"optim.betas: expected a list of 2 values, got \[0.9\]"),
        ("augment.color=3", "section augment.color: expected a mapping, got int 3"),
        # The enums: each a Literal on its field, so a typo fails when the config is built.
        ("precision=fp16", "precision: expected one of 'auto', 'bf16'.*, got 'fp16'"),
        ("strategy=zero", "strategy: expected one of 'ddp', 'fsdp', got 'zero'"),
        ("data.source=web", "data.source: expected one of 'scenes', 'folder', got 'web'"),
        ("nonfinite=ignore", "nonfinite: expected one of 'stop', 'skip', got 'ignore'"),
        ("augment.focal_mode=foo", "augment.focal_mode: expected one of 'gaussian', 'block' or"),
    ],
)
def test_wrong_value_types_fail_when_the_config_is_built(override, message):
    with pytest.raises(UsageError, match=message):
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
        ("ckpt_every=0", "ckpt_every: expected an integer >= 1, got 0"),
        ("log_every=0", "log_every: expected an integer >= 1, got 0"),
        ("data.scenes_size=8", "data.scenes_size: expected an integer >= 16, got 8"),
        ("max_steps=0", "max_steps: expected an integer >= 1 or null, got 0"),
        ("stop_at=0", "stop_at: expected an integer >= 1 or null, got 0"),
        ("augment.mask_ratio=1.5", r"augment.mask_ratio: expected a number in \[0, 1\), got 1.5"),
        ("optim.lr=-1", "optim.lr: expected a number > 0, got -1.0"),
        ("optim.lr=.inf", "optim.lr: expected a number > 0, got inf"),
        ("ema.final_momentum=2", r"ema.final_momentum: expected a number in \[0, 1\] or null"),
        ("optim.lr=0", "optim.lr: expected a number > 0, got 0.0"),
        ("objective.koleo_weight=-1", "objective.koleo_weight: expected a number >= 0, got -1.0"),
        ("objective.recon_weight=-1", "objective.recon_weight: expected a number >= 0 or null"),
        ("augment.global_size=70", "augment.global_size: expected a multiple of the patch size 8"),
        ("augment.local_size=36", "augment.local_size: expected a multiple of the patch size 8"),
        ("model_overrides.spatial_temp=0", r"spatial_temp: expected a number > 0 or null, got 0"),
        ("model_overrides.encoder.patch_size=0", "encoder.patch_size: expected an integer >= 1"),
        ("model_overrides.encoder.patch_size=7", "image_size 64 is not divisible by patch_size 7"),
    ],
)
def test_out_of_range_values_fail_when_the_config_is_built(tmp_path, override, message):
    with pytest.raises(UsageError, match=message):
        load_config("cpu-smoke", [*TINY, f"out={tmp_path / 'run'}", "max_steps=2", override])


def test_a_config_edited_in_python_is_checked_before_anything_is_written(tmp_path):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path / 'run'}", "max_steps=2"])
    cfg.augment.mask_ratio = 1.0
    with pytest.raises(UsageError, match=r"augment.mask_ratio: expected a number in \[0, 1\)"):
        train(cfg)
    cfg.augment.mask_ratio, cfg.precision = 0.5, "half"
    with pytest.raises(UsageError, match="precision: expected one of"):
        load_config(cfg)
    assert not (tmp_path / "run").exists()


def test_fsdp_with_an_ema_teacher_is_rejected(tmp_path):
    with pytest.raises(UsageError, match="ema.enabled=true is not supported with strategy=fsdp"):
        load_config("cpu-smoke", [*TINY, f"out={tmp_path}", "strategy=fsdp", "ema.enabled=true"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init.checkpoint=/some/run", "model_overrides.num_sparse_tokens=12"], "init.checkpoint"),
        (["data.root=/photos"], "add data.source=folder"),
        (["model_overrides.num_sparse_tokens=1"], "needs at least 2 of them"),
    ],
)
def test_settings_that_would_be_silently_ignored_are_rejected(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        load_config("cpu-smoke", [*TINY, f"out={tmp_path}", *overrides])


def test_shipped_presets_pass_the_checks():
    from stellar.train.config import preset_names

    for name in preset_names():
        cfg = load_config(name)
        assert not (cfg.strategy == "fsdp" and cfg.ema.enabled), name


def test_unknown_model_override_keys_are_rejected(tmp_path):
    with pytest.raises(UsageError, match=r"key\(s\) model_overrides.num_sparse_token; valid keys"):
        load_config("cpu-smoke", ["model_overrides.num_sparse_token=12"])
    with pytest.raises(
        UsageError, match=r"model_overrides.encoder.patch_sz; valid keys under .*patch_size"
    ):
        load_config("cpu-smoke", ["model_overrides.encoder.patch_sz=4"])
    with pytest.raises(UsageError, match="model: expected a registered model name"):
        load_config("cpu-smoke", ["model=stellar-tinyy"])
    # A config edited in Python is checked when it is rebuilt (as train(cfg) does).
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}"])
    cfg.model_overrides = {"num_sparse_token": 12}
    with pytest.raises(UsageError, match="num_sparse_token; valid keys under model_overrides"):
        load_config(cfg)
    # Known keys, nested ones included, reach the model, converted to their types.
    cfg = load_config(
        "cpu-smoke",
        [*TINY, "model_overrides.num_sparse_tokens=4", "model_overrides.encoder.hidden_size=64"],
    )
    cfg.model_overrides["spatial_temp"] = 1  # an int for a float field
    model = Trainer(load_config(cfg)).model
    assert model.config.num_sparse_tokens == 4 and model.config.encoder.hidden_size == 64
    assert type(model.config.spatial_temp) is float


def test_a_section_given_as_a_mapping_is_merged_into_the_preset() -> None:
    preset = load_config("cpu-smoke").augment
    for overrides in (["augment={n_local: 3}"], {"augment": {"n_local": 3}}):
        a = load_config("cpu-smoke", overrides).augment
        assert a.n_local == 3 and a.global_size == preset.global_size != 224  # not the default
        assert a.local_size == preset.local_size
    # a nested section merges too, and {} restores its defaults
    colour = load_config(
        load_config("cpu-smoke", ["augment.color={hue: 0.3}"]), ["augment.color={gray_p: 0}"]
    ).augment.color
    assert (colour.hue, colour.gray_p, colour.contrast) == (0.3, 0, ColorAugment().contrast)
    reset = load_config({"augment": {"color": {"hue": 0.3}}}, ["augment.color={}"])
    assert reset.augment.color == ColorAugment()


def test_a_yaml_merge_key_is_not_a_key_written_twice(tmp_path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("augment:\n  color:\n    <<: {hue: 0.3, gray_p: 0.5}\n    hue: 0.2\n")
    colour = load_config(str(file)).augment.color
    assert (colour.hue, colour.gray_p) == (0.2, 0.5)
    nested = "x:\n  <<: &b\n    <<: {p: 1}\n    p: 2\ny: *b\n"  # b is flattened, then aliased
    file.write_text(nested)
    assert read_yaml(file) == yaml.safe_load(nested) == {"x": {"p": 2}, "y": {"p": 2}}


def test_train_overrides_may_follow_the_flags(monkeypatch):
    from stellar.train import command

    seen = []
    monkeypatch.setattr(command, "run", lambda args: seen.append(args) or 0)
    assert main(["train", "out=/tmp/x", "--resume", "max_steps=1", "--config", "cpu-demo"]) == 0
    (args,) = seen
    assert args.resume and args.config == "cpu-demo"
    assert args.overrides == ["out=/tmp/x", "max_steps=1"]


class _FakeTrainer:
    """Records the configuration ``stellar train`` would train with (no model, no data)."""

    seen: list = []
    model = None

    def __init__(self, cfg, dist=None, resume=False):
        self.cfg, self.resume = cfg, resume

    def train(self, overwrite=False):
        _FakeTrainer.seen.append((self.cfg, self.resume, overwrite))
        return {}


def _saved_run(out, *overrides):
    """A run folder as a run with ``overrides`` leaves it: config.yaml and a last checkpoint."""
    cfg = load_config("cpu-smoke", [f"out={out}", *overrides])
    last = out / "checkpoints" / "step-00000002"
    last.mkdir(parents=True)
    (last / "trainer_state.pt").write_bytes(b"")
    (last / "model.safetensors").write_bytes(b"")
    (out / "checkpoints" / "last").symlink_to(last.name)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


@pytest.fixture
def fake_trainer(monkeypatch):
    _FakeTrainer.seen = []
    # the package module (stellar.train may also name the function re-exported by stellar)
    monkeypatch.setattr(importlib.import_module("stellar.train"), "Trainer", _FakeTrainer)
    return _FakeTrainer.seen


def test_a_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    out = tmp_path / "run"
    _saved_run(out)
    with pytest.raises(UsageError, match=r"already holds a run .*pass --resume .*--overwrite"):
        main(["train", f"out={out}", *TINY])
    assert (out / "checkpoints" / "last").is_symlink()


def test_overwrite_and_resume_reach_the_trainer(tmp_path, fake_trainer):
    out = tmp_path / "run"
    _saved_run(out)
    assert main(["train", f"out={out}", "--overwrite"]) == 0
    ((cfg, resume, overwrite),) = fake_trainer  # the trainer deletes (tests/train/test_resume.py)
    assert not resume and overwrite and cfg.out == str(out)
    with pytest.raises(UsageError, match="pick one"):
        main(["train", f"out={out}", "--overwrite", "--resume"])


def test_resume_takes_the_saved_settings_and_allows_the_resumable_changes(tmp_path, fake_trainer):
    out = tmp_path / "run"
    _saved_run(out, "optim.lr=1e-3", "max_steps=2", "stop_at=1", "seed=7")
    # The original overrides are not repeated: the saved ones hold (lr, seed), not the preset's.
    # (The trainer logs the changes, against its checkpoint: tests/train/test_resume.py.)
    assert main(["train", f"out={out}", "--resume", "max_steps=5", "log_every=3"]) == 0
    ((cfg, resume, _),) = fake_trainer
    assert resume and cfg.optim.lr == 1e-3 and cfg.seed == 7
    assert cfg.max_steps == 5 and cfg.log_every == 3 and cfg.stop_at is None
    # An override equal to the saved value is no change.
    assert main(["train", f"out={out}", "--resume", "optim.lr=0.001"]) == 0


def test_resume_compares_the_keys_a_saved_config_lacks_as_their_defaults(tmp_path, fake_trainer):
    out = tmp_path / "run"
    _saved_run(out, "augment.color.hue=0.3")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["augment"]["color"] = {"hue": 0.3}  # as a version that wrote only the changed ones
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["train", f"out={out}", "--resume"]) == 0
    with pytest.raises(UsageError, match=r"these differ: augment.color.gray_p 0.2 -> 0.0\."):
        main(["train", f"out={out}", "--resume", "augment.color.gray_p=0"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optim.lr=5e-4"], r"these differ: optim.lr 0.001 -> 0.0005\. A resume may change only"),
        (["batch_size=2", "seed=3"], "batch_size 8 -> 2; seed 0 -> 3"),
        (
            ["model_overrides.num_sparse_tokens=4"],
            r"a changed architecture .*model_overrides.num_sparse_tokens None -> 4",
        ),
        # With --config, the whole configuration is compared (this preset has other sizes).
        (["--config", "cpu-demo"], "these differ: .*batch_size"),
    ],
)
def test_resume_refuses_other_changes_naming_the_keys(tmp_path, fake_trainer, argv, message):
    out = tmp_path / "run"
    _saved_run(out, "optim.lr=1e-3")
    with pytest.raises(UsageError, match=message):
        main(["train", f"out={out}", "--resume", *argv])
    assert not fake_trainer


def test_resume_without_a_saved_config_is_refused(tmp_path, fake_trainer):
    out = tmp_path / "run"
    _saved_run(out)
    (out / "config.yaml").unlink()
    with pytest.raises(UsageError, match=r"config.yaml does not exist"):
        main(["train", f"out={out}", "--resume"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "{bad}"], r"bad.yaml: invalid YAML at line 2"),
        (["--config", "{twice}"], r"twice.yaml: invalid YAML at line 2.*key augment written twice"),
        (["optim.lr=[1"], r"override 'optim.lr=\[1': invalid YAML"),
        (["out={file}"], r"out= '.*file' is a file"),
        (["out={file}/run"], r"out= '.*run' is not a writable folder \(Not a directory"),
        (["augment.color.hue=0.7"], r"augment.color.hue: expected a number in \[0, 0.5\]"),
        (["augment.global_scale=[0.5,3.0]"], r"augment.global_scale: .*<= 1"),
        (["augment.color.blur_kernel=65"], r"augment.color.blur_kernel: expected at most 63"),
        (["model_overrides.decoder_head=vq"], r"vq_model=.*objective.recon=false"),
        (["augment.mask_ratio=0.99"], r"augment.mask_ratio: .*keeps no patch of 64"),
        (["init.checkpoint={file}", "init.encoder={file}"], r"init.checkpoint .*: pass one of"),
        (  # a folder, not the weights file in it
            ["model_overrides.decoder_head=vq", "vq_model={folder}"],
            r"expected the MaskGIT-VQGAN weights file, but .* is a folder",
        ),
        (  # a learning rate that makes the loss NaN: after its steps, still one line
            ["optim.lr=1e4", "optim.clip_grad=null", "optim.warmup=0", "max_steps=8"],
            r"step \d: non-finite .*optim.lr",
        ),
        (
            [f"objective.{k}=false" for k in ("recon", "clustering", "set_align", "cls_align")]
            + ["objective.koleo=false"],
            r"objective: no loss term is on .*nothing to train",
        ),
        (
            ["objective.global_align=true", "objective.clustering=false"],
            r"objective.clustering is off: set objective.global_align=false too",
        ),
        (  # set alignment on, but no masked views to align
            [f"objective.{k}=false" for k in ("recon", "clustering", "cls_align", "koleo")]
            + ["augment.n_masked=0"],
            r"objective: no loss term is on with the views it needs",
        ),
    ],
)
def test_user_errors_of_stellar_train_are_one_line(tmp_path, capsys, args, expected):
    """Issue 22, item 8: broken YAML and an impossible out= name the file or key, no traceback."""
    from stellar.cli import console

    bad, file, twice = tmp_path / "bad.yaml", tmp_path / "file", tmp_path / "twice.yaml"
    bad.write_text("optim: {lr: [1\n")
    twice.write_text("augment: {color: {hue: 0.2}}\naugment: {mask_ratio: 0.5}\n")
    file.write_text("not a folder")
    args = [a.format(bad=bad, file=file, folder=tmp_path, twice=twice) for a in args]
    out = [] if any(a.startswith("out=") for a in args) else [f"out={tmp_path / 'run'}"]
    steps = [] if any(a.startswith("max_steps=") for a in args) else ["max_steps=1"]
    assert console(["train", *TINY, *args, *out, *steps]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err) and "Traceback" not in err and len(err.splitlines()) == 1
