"""``stellar demo`` end to end on a tiny budget, and the report's computed verdicts."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from stellar.cli import main
from stellar.demo.ablation import ABLATIONS, orderings
from stellar.demo.report import (
    SUPERVISED,
    TRANSFORMS,
    equivariance_section,
    full_command,
    table,
    verdicts,
)
from stellar.demo.training import DemoSettings

TINY = [
    "--steps",
    "2",
    "--batch-size",
    "4",
    "--eval-train",
    "32",
    "--eval-val",
    "16",
    "--probe-epochs",
    "1",
    "--seg-epochs",
    "1",
    "--no-progress",
]


def test_demo_writes_report_metrics_and_pictures(tmp_path):
    out = tmp_path / "demo"
    override = "augment.color={hue: 0.5, gray_p: 0.5}"
    assert main(["demo", "--out", str(out), *TINY, override]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The recipe override reaches the trainer and is stated in the report.
    assert metrics["settings"]["overrides"] == [override]
    run_config = yaml.safe_load((out / "train-stellar" / "config.yaml").read_text())
    colour = run_config["augment"]["color"]
    assert (colour["hue"], colour["gray_p"], colour["jitter_p"]) == (0.5, 0.5, 0.8)
    assert list(metrics["results"]) == ["random init", "STELLAR", SUPERVISED]
    for result in metrics["results"].values():
        assert 0 <= result["linear_top1"] <= 1 and 0 <= result["localization"] <= 1
        # The what/where numbers are one run_invariance pass (flip and shifts by 1 and 2).
        inv = result["invariance"]
        assert list(inv["equivariance"]) == ["flip", "shift 1", "shift 2"]
        for shares in inv["equivariance"].values():
            assert 0 <= shares["l_share_mid"] <= 1 and shares["s_cos_change"] >= 0
        assert inv["num_images"] == 16 and inv["distances"]["lowrank_mean"]["between"] > 0
    # The supervised reference's decoder never trains: its PSNR is not reported.
    assert metrics["results"][SUPERVISED]["psnr"] is None
    report = (out / "report.md").read_text()
    assert "| STELLAR |" in report and "| supervised reference |" in report
    assert "equivariance partition" in report and "Ablation" not in report
    assert "shift 2 patches: L share" in report and "lowrank: crop / between" in report
    # The Command line reproduces the run: every flag, with the preset's budget resolved.
    command = (
        f"stellar demo --out {out} --seed 0 --steps 2 --batch-size 4 --eval-train 32 "
        "--eval-val 16 --probe-epochs 1 --seg-epochs 1 --no-progress "
        "'augment.color={hue: 0.5, gray_p: 0.5}'"
    )
    assert f"Command: `{command}`" in report and metrics["command"] == command
    assert f"stellar viz --model {out / 'train-stellar'} " in report  # maps of one's own photos
    for picture in ("concepts_scenes.png", "loss_curves.png"):
        assert (out / picture).stat().st_size > 1000
        assert f"]({picture})" in report


@pytest.mark.slow
def test_demo_ablation_trains_the_four_paper_variants(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY, "--ablation"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["results"]) == ["random init", "STELLAR", SUPERVISED, *ABLATIONS]
    for name, extra in ABLATIONS.items():
        run_config = yaml.safe_load((out / f"train-{name[0].lower()}" / "config.yaml").read_text())
        for override in extra:
            key, value = override.removeprefix("objective.").split("=")
            assert run_config["objective"][key] == (value == "true")
    report = (out / "report.md").read_text()
    assert "## Ablation" in report and report.count("- (") == 4


def test_full_command_names_every_flag_and_quotes_overrides():
    s = DemoSettings(out="o", steps=5, batch_size=2, ablation=True, overrides=("a.b={c: 1}",))
    assert full_command(s) == (
        "stellar demo --out o --seed 0 --steps 5 --batch-size 2 --eval-train 2000 "
        "--eval-val 500 --probe-epochs 30 --seg-epochs 10 --ablation 'a.b={c: 1}'"
    )


def _samples(n: int, **means: float) -> dict[str, torch.Tensor]:
    """Per-sample values with the given means: 0/1 correctness, PSNR, IoU and confusions."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, mean in means.items():
        if key == "psnr":
            out[key] = mean + torch.randn(n, generator=g, dtype=torch.float64)
        else:
            out[key] = (torch.rand(n, generator=g) < mean).float()
    return out


def _seg(n: int, right: float) -> torch.Tensor:
    """(n, 2, 2) confusions: a share ``right`` of 100 pixels per scene on the diagonal."""
    cm = torch.zeros(n, 2, 2, dtype=torch.int64)
    cm[:, 0, 0] = cm[:, 1, 1] = int(50 * right)
    cm[:, 0, 1] = cm[:, 1, 0] = 50 - int(50 * right)
    return cm + torch.randint(0, 3, (n, 2, 2), generator=torch.Generator().manual_seed(1))


PROBES = ("linear_top1", "knn_top1", "linear_colour_top1")


def _model(n, probe, loc, psnr, seg):
    s = _samples(n, localization=loc, psnr=psnr, **dict.fromkeys(PROBES, probe))
    s["seg_miou"] = _seg(n, seg)
    return s


def _results(samples):
    results = {}
    for name, s in samples.items():
        results[name] = {k: float(v.double().mean()) for k, v in s.items() if k != "seg_miou"}
        results[name]["seg_miou"] = 0.5
    return results


def test_verdicts_pass_fail_and_not_learnable_follow_the_numbers():
    n = 400
    samples = {
        "random init": _model(n, 0.2, 0.3, 10.0, 0.5),
        "STELLAR": _model(n, 0.6, 0.5, 14.0, 0.9),
        SUPERVISED: _model(n, 0.8, 0.3, 10.0, 0.9),
    }
    chance = {k: _samples(n, x=0.2)["x"] for k in PROBES}
    chance["seg_miou"] = _seg(n, 0.5)
    lines = verdicts(_results(samples), samples, chance)
    assert len(lines) == 6 and all(line.startswith("- PASS") for line in lines)
    # A probe the supervised reference does not lift above chance is no failure.
    samples[SUPERVISED]["linear_top1"] = chance["linear_top1"].clone()
    samples["STELLAR"]["linear_top1"] = samples["random init"]["linear_top1"].clone()
    lines = verdicts(_results(samples), samples, chance)
    assert lines[2].startswith("- not learnable at this scale: linear_top1")
    value = f"{samples['STELLAR']['linear_top1'].mean() * 100:.1f} %"
    assert lines[2].endswith(f"STELLAR {value} vs random init {value}")
    # A learnable probe STELLAR does not lift is a failure; so is a localization within noise.
    samples["STELLAR"]["knn_top1"] = samples["random init"]["knn_top1"].clone()
    samples["STELLAR"]["localization"] = samples["random init"]["localization"].clone()
    lines = verdicts(_results(samples), samples, chance)
    assert lines[0].startswith("- FAIL: trained beats random init on localization")
    assert lines[3].startswith("- FAIL: trained beats random init on knn_top1")
    assert "learnable here" in lines[3]
    assert table(_results(samples)).count("\n") == 4


def test_what_vs_where_holds_only_above_half_and_above_random_init():
    def result(*shares: float) -> dict:
        eq = {
            t: {"l_share_mid": v, "s_cos_change": 0.1}
            for t, v in zip(TRANSFORMS, shares, strict=True)
        }
        return {"invariance": {"equivariance": eq}}

    def claim(trained: tuple, random: tuple) -> str:
        lines = equivariance_section({"random init": result(*random), "STELLAR": result(*trained)})
        return next(line for line in lines if line.startswith("STELLAR's claim"))

    assert " holds here" in claim((0.9, 0.8, 0.7), (0.6, 0.5, 0.4))
    assert "does NOT hold" in claim((0.9, 0.8, 0.4), (0.6, 0.5, 0.3))  # one share under half
    assert "does NOT hold" in claim((0.91, 0.68, 0.52), (0.91, 0.84, 0.71))  # random init's


def test_ablation_orderings_say_whether_each_holds():
    n = 400
    names = ["STELLAR", *ABLATIONS]
    # The paper's pattern: A ~ STELLAR > B > D > C on semantics; B keeps the PSNR, C loses it.
    levels = dict(zip(names, [(0.7, 14.0, 0.9), (0.7, 14.0, 0.9), (0.5, 14.0, 0.7),
                              (0.05, 10.0, 0.3), (0.35, 13.5, 0.6)], strict=True))  # fmt: skip
    samples = {k: _model(n, p, 0.5, psnr, seg) for k, (p, psnr, seg) in levels.items()}
    results = _results(samples)
    lines = orderings(results, samples)
    assert len(lines) == 4 and all(line.endswith("holds.") for line in lines), lines
    # Swap B and D: the (D) ordering no longer holds.
    b, d = "B: reconstruction + KoLeo only", "D: no clustering"
    samples[b], samples[d] = samples[d], samples[b]
    lines = orderings(_results(samples), samples)
    assert lines[3].endswith("does NOT hold.")
