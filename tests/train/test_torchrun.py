"""``torchrun --nproc_per_node 2 stellar train``: DDP and FSDP on CPU (gloo), with resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ARGS = [
    "--config",
    "cpu-smoke",
    "max_steps=4",
    "batch_size=4",
    "data.scenes_length=64",
    "progress=false",
    "tensorboard=false",
]


def _torchrun(out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "stellar",
        "train",
        *ARGS,
        f"out={out}",
        *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_training_resumes_exactly(tmp_path, strategy):
    straight = _torchrun(tmp_path / "a", f"strategy={strategy}")
    _torchrun(tmp_path / "b", f"strategy={strategy}", "stop_at=2")
    resumed = _torchrun(tmp_path / "b", f"strategy={strategy}", "--resume")
    assert sorted(straight) == [1, 2, 3, 4]
    assert resumed == straight


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_process_reconstruction_only_ablation_trains(tmp_path):
    # the clustering heads get no gradient here: DDP must be told, or step 2 fails
    off = ["objective.clustering=false", "objective.set_align=false", "objective.cls_align=false"]
    losses = _torchrun(tmp_path / "recon-only", "max_steps=2", *off)
    assert sorted(losses) == [1, 2]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_resume_is_exact_when_only_one_rank_skipped_a_batch(tmp_path):
    from tiny_run import photo_folder

    from stellar.data.loader import ResumableSampler

    # Rank 1's first batch of epoch 0 is all unreadable: its position runs ahead of rank 0's.
    rank1 = list(ResumableSampler(24, seed=0, rank=1, world=2))
    folder = [*photo_folder(tmp_path / "photos", 24, broken=rank1[:4]), "max_steps=2"]
    straight = _torchrun(tmp_path / "a", *folder)
    _torchrun(tmp_path / "b", *folder, "stop_at=1")
    resumed = _torchrun(tmp_path / "b", *folder, "--resume")
    assert sorted(straight) == [1, 2]
    assert resumed == straight
