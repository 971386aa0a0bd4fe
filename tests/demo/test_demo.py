"""``stellar demo`` end to end on a tiny budget, and the report's computed verdicts."""

from __future__ import annotations

import json

import pytest
import yaml

from stellar.cli import main
from stellar.demo.report import accuracy_gap_stderr, table, verdicts


def test_demo_writes_report_metrics_and_pictures(tmp_path, samples_dir):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--eval-train",
        "64",
        "--eval-val",
        "32",
        "--probe-epochs",
        "2",
        "--seg-epochs",
        "1",
        "--no-progress",
        "--ablation",
        "--photos",
        str(samples_dir / "images224"),
        "augment.color={hue: 0.5, gray_p: 0.5}",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The recipe override reaches every variant's trainer and is stated in the report.
    assert metrics["settings"]["overrides"] == ["augment.color={hue: 0.5, gray_p: 0.5}"]
    for variant in ("train-stellar", "train-recon-only"):
        run_config = yaml.safe_load((out / variant / "config.yaml").read_text())
        assert run_config["augment"]["color"] == {"hue": 0.5, "gray_p": 0.5}
    assert set(metrics["results"]) == {"random init", "STELLAR", "recon only"}
    for result in metrics["results"].values():
        assert 0 <= result["linear_top1"] <= 1 and 0 <= result["localization"] <= 1
    report = (out / "report.md").read_text()
    assert "| STELLAR |" in report and "Ablation" in report
    command = "--ablation --steps 3 --batch-size 8 --seed 0 'augment.color={hue: 0.5, gray_p: 0.5}'"
    assert f"`stellar demo {command}`" in report
    for picture in ("concepts_scenes.png", "concepts_photos.png", "loss_curves.png"):
        assert (out / picture).stat().st_size > 1000
        assert f"]({picture})" in report


def _result(linear, loc, psnr):
    return {
        "linear_top1": linear,
        "linear_cls_top1": linear,
        "knn_top1": linear,
        "linear_colour_top1": linear,
        "seg_miou": 0.1,
        "localization": loc,
        "purity": 0.5,
        "purity_chance": 0.3,
        "psnr": psnr,
        "crop_dist_sparse": 0.1,
    }


def test_verdicts_follow_the_numbers():
    results = {"random init": _result(0.2, 0.3, 10.0), "STELLAR": _result(0.6, 0.5, 14.0)}
    lines = verdicts(results)
    assert len(lines) == 3 and all(line.startswith("- PASS") for line in lines)
    results["STELLAR"] = _result(0.25, 0.5, 14.0)
    assert verdicts(results)[0].startswith("- FAIL: trained beats random init on linear_top1")
    results["STELLAR"] = _result(0.6, 0.5, 14.0)
    results["recon only"] = _result(0.2, 0.4, 13.5)
    assert "holds at this scale" in verdicts(results)[-1]
    assert "(colour probe +40.0 points below)" in verdicts(results)[-1]
    results["recon only"] = _result(0.58, 0.4, 13.5)
    assert "does NOT hold" in verdicts(results)[-1]
    assert table(results).count("\n") == 4


def test_linear_verdict_states_the_sampling_noise_of_the_gap():
    # Two accuracies of 0.5 on 100 samples: sqrt(0.25 / 100 * 2) = 0.0707 -> 7.1 points.
    assert abs(accuracy_gap_stderr(0.5, 0.5, 100) - 0.0707) < 1e-4
    assert accuracy_gap_stderr(0.5, 0.5, 400) < accuracy_gap_stderr(0.5, 0.5, 100)
    with pytest.raises(ValueError, match="n >= 1"):
        accuracy_gap_stderr(0.5, 0.5, 0)
    results = {"random init": _result(0.5, 0.3, 10.0), "STELLAR": _result(0.5, 0.5, 14.0)}
    assert "std. error of the gap on 100 scenes: 7.1 points" in verdicts(results, 100)[0]
    assert "std. error" not in verdicts(results)[0]
