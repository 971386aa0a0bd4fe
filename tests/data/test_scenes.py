"""Tests for the procedural concept-scenes dataset (stellar.data.scenes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stellar.data.scenes import SHAPES, ConceptScenes, export_scenes, render_scene
from stellar.data.scenes.geometry import SHAPE_AREA, SHAPE_EXTENT, shape_sdf
from stellar.data.scenes.render import BACKGROUNDS, COLOUR_RGB, COLOURS, FILLS


def _assert_items_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def samples() -> list[dict[str, torch.Tensor]]:
    ds = ConceptScenes(size=32, length=300, seed=7, split="train")
    return [ds[i] for i in range(len(ds))]


def test_deterministic_and_order_independent() -> None:
    ds = ConceptScenes(size=40, length=20, seed=3)
    forward = [ds[i] for i in range(6)]
    again = ConceptScenes(size=40, length=20, seed=3)
    for i in reversed(range(6)):
        _assert_items_equal(again[i], forward[i])
    direct = render_scene(3, 4, 40)
    assert torch.equal(direct["image"], forward[4]["image"])
    assert torch.equal(direct["instance_mask"], forward[4]["instance_mask"])


def test_dataloader_workers_match_direct_access() -> None:
    ds = ConceptScenes(size=32, length=8, seed=11, split="val")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    masks = torch.cat([b["instance_mask"] for b in batches])
    for i in range(len(ds)):
        assert torch.equal(images[i], ds[i]["image"])
        assert torch.equal(masks[i], ds[i]["instance_mask"])
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(8))


def test_index_seed_and_split_change_the_scene() -> None:
    base = render_scene(0, 5, 32)["image"]
    assert not torch.equal(base, render_scene(0, 6, 32)["image"])
    assert not torch.equal(base, render_scene(1, 5, 32)["image"])
    train = ConceptScenes(size=32, length=50, seed=0, split="train")
    val = ConceptScenes(size=32, length=50, seed=0, split="val")
    train_imgs = torch.stack([train[i]["image"] for i in range(50)]).flatten(1)
    val_imgs = torch.stack([val[i]["image"] for i in range(50)]).flatten(1)
    # No val image equals any train image.
    assert torch.cdist(train_imgs, val_imgs).min() > 0


def test_dtypes_shapes_and_ranges(samples: list[dict[str, torch.Tensor]]) -> None:
    item = samples[0]
    k = 4
    expected = {
        "image": ((3, 32, 32), torch.float32),
        "label": ((), torch.int64),
        "colour": ((), torch.int64),
        "count": ((), torch.int64),
        "shapes": ((len(SHAPES),), torch.float32),
        "colours": ((len(COLOURS),), torch.float32),
        "instance_mask": ((32, 32), torch.int64),
        "semantic_mask": ((32, 32), torch.int64),
        "object_shapes": ((k,), torch.int64),
        "object_colours": ((k,), torch.int64),
        "object_fills": ((k,), torch.int64),
        "object_areas": ((k,), torch.int64),
        "background": ((), torch.int64),
        "canvas": ((3, 32, 32), torch.uint8),
        "size": ((2,), torch.int64),
        "index": ((), torch.int64),
    }
    assert set(item) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(item[key].shape) == shape, key
        assert item[key].dtype == dtype, key
    images = torch.stack([s["image"] for s in samples])
    assert images.min() >= 0.0 and images.max() <= 1.0
    for s in samples[:20]:
        assert torch.equal(s["image"], s["canvas"].float() / 255.0)
        assert s["size"].tolist() == [32, 32]


def test_label_consistency(samples: list[dict[str, torch.Tensor]]) -> None:
    for s in samples:
        count = int(s["count"])
        assert 1 <= count <= 4
        inst, sem = s["instance_mask"], s["semantic_mask"]
        obj_shapes = s["object_shapes"][:count]
        # Every labelled object is visible: ids 1..count all present, nothing else.
        assert set(inst.unique().tolist()) - {0} == set(range(1, count + 1))
        assert torch.all(s["object_shapes"][count:] == -1)
        assert torch.all(s["object_colours"][count:] == -1)
        # Semantic mask is the instance mask mapped through the per-object shape class.
        lut = torch.cat([torch.zeros(1, dtype=torch.int64), obj_shapes + 1])
        assert torch.equal(sem, lut[inst])
        present = set((sem.unique() - 1).tolist()) - {-1}
        assert present == set(torch.nonzero(s["shapes"]).flatten().tolist())
        assert present == set(obj_shapes.tolist())
        colours = set(s["colours"].nonzero().flatten().tolist())
        assert colours == set(s["object_colours"][:count].tolist())
        areas = torch.bincount(inst.flatten(), minlength=count + 1)[1:]
        assert torch.equal(s["object_areas"][:count], areas)
        assert int(s["label"]) == int(obj_shapes[torch.argmax(areas)])
        assert int(s["colour"]) == int(s["object_colours"][torch.argmax(areas)])


def test_all_classes_occur(samples: list[dict[str, torch.Tensor]]) -> None:
    counts = [0] * 4
    shapes, colours, fills, backgrounds = set(), set(), set(), set()
    for s in samples:
        n = int(s["count"])
        counts[n - 1] += 1
        shapes.update(s["object_shapes"][:n].tolist())
        colours.update(s["object_colours"][:n].tolist())
        fills.update(s["object_fills"][:n].tolist())
        backgrounds.add(int(s["background"]))
    assert len(SHAPES) >= 8 and len(COLOURS) >= 8 and len(FILLS) >= 3
    assert shapes == set(range(len(SHAPES)))
    assert colours == set(range(len(COLOURS)))
    assert fills == set(range(len(FILLS)))
    assert backgrounds == set(range(len(BACKGROUNDS)))
    # Counts are (close to) uniform over 1..4: each gets a fair share of 300 draws.
    assert min(counts) > 40, counts
    assert {int(s["label"]) for s in samples} == set(range(len(SHAPES)))
    assert {int(s["colour"]) for s in samples} == set(range(len(COLOURS)))


def test_solid_objects_have_their_named_colour(samples: list[dict[str, torch.Tensor]]) -> None:
    matched, total = 0, 0
    for s in samples:
        img = s["canvas"].permute(1, 2, 0).to(torch.int64)
        for i in range(int(s["count"])):
            if int(s["object_fills"][i]) != FILLS.index("solid"):
                continue
            m = (s["instance_mask"] == i + 1).float()[None, None]
            # Interior: the whole 3x3 neighbourhood belongs to the object, so no edge blending
            # (an occluder's anti-aliased edge can still graze a pixel, hence the 99 % bound).
            core = (-F.max_pool2d(-F.pad(m, (1, 1, 1, 1)), 3, stride=1))[0, 0] > 0
            rgb = torch.tensor(COLOUR_RGB[int(s["object_colours"][i])]) * 255
            err = (img[core] - torch.round(rgb).to(torch.int64)).abs().amax(dim=-1)
            matched += int((err <= 1).sum())
            total += int(core.sum())
    assert total > 2000
    assert matched >= 0.99 * total


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_sdf_area_extent_and_distance(shape: int) -> None:
    from skimage.measure import find_contours

    radius, n = 100.0, 600
    coords = np.linspace(-150.0, 150.0, n, dtype=np.float64)
    step = coords[1] - coords[0]
    u, v = np.meshgrid(coords, coords)
    sdf = shape_sdf(shape, u, v, radius)
    inside = sdf < 0
    area = inside.sum() * step * step
    assert area == pytest.approx(SHAPE_AREA[shape] * radius**2, rel=0.02)
    assert np.hypot(u, v)[inside].max() <= SHAPE_EXTENT[shape] * radius + step
    # |sdf| is the Euclidean distance to the zero-level contour (what the anti-aliasing needs).
    contour = np.concatenate(find_contours(sdf, 0.0)) * step - 150.0  # (row, col) -> (v, u)
    rng = np.random.default_rng(shape)
    pts = rng.uniform(-150.0, 150.0, size=(400, 2))
    d_sdf = shape_sdf(shape, pts[:, 0], pts[:, 1], radius)
    d_true = np.sqrt(
        ((pts[:, None, 0] - contour[None, :, 1]) ** 2)
        + ((pts[:, None, 1] - contour[None, :, 0]) ** 2)
    ).min(axis=1)
    assert np.allclose(np.abs(d_sdf), d_true, atol=2 * step)


def test_sizes_canvas_and_max_objects() -> None:
    for size in (32, 100, 256):
        item = render_scene(2, 1, size)
        assert item["image"].shape == (3, size, size)
        assert item["instance_mask"].shape == (size, size)
    item = ConceptScenes(size=32, length=4)[1]
    assert torch.equal(item["canvas"].float() / 255.0, item["image"])
    assert item["size"].tolist() == [32, 32]
    singles = ConceptScenes(size=32, length=20, max_objects=1)
    assert all(int(singles[i]["count"]) == 1 for i in range(20))
    many = ConceptScenes(size=48, length=30, max_objects=6)
    counts = [int(many[i]["count"]) for i in range(30)]
    assert max(counts) <= 6 and max(counts) >= 5
    assert many[0]["object_shapes"].shape == (6,)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        ConceptScenes(split="training")
    with pytest.raises(ValueError, match="size"):
        render_scene(0, 0, 8)
    with pytest.raises(ValueError, match="non-negative"):
        render_scene(-1, 0, 32)
    with pytest.raises(IndexError):
        ConceptScenes(length=3)[3]


def test_export_round_trip(tmp_path) -> None:
    n = 12
    out = export_scenes(tmp_path / "scenes", split="val", n=n, size=32, seed=5)
    ds = ConceptScenes(size=32, length=n, seed=5, split="val")
    lines = (out / "labels.jsonl").read_text().splitlines()
    assert len(lines) == n
    classes = json.loads((out / "classes.json").read_text())
    assert tuple(classes["shapes"]) == SHAPES and tuple(classes["colours"]) == COLOURS
    pngs = sorted((out / "images").glob("*/*.png"))
    assert len(pngs) == n
    for line in lines:
        rec = json.loads(line)
        item = ds[rec["index"]]
        count = int(item["count"])
        assert rec["image"] == f"images/{SHAPES[int(item['label'])]}/{rec['index']:06d}.png"
        assert rec["label"] == int(item["label"]) and rec["count"] == count
        assert rec["object_shapes"] == item["object_shapes"][:count].tolist()
        assert rec["object_colours"] == item["object_colours"][:count].tolist()
        assert rec["shapes"] == torch.nonzero(item["shapes"]).flatten().tolist()
        img = torch.from_numpy(np.array(Image.open(out / rec["image"]).convert("RGB")))
        assert torch.equal(img.permute(2, 0, 1), item["canvas"])
        sem = np.asarray(Image.open(out / rec["semantic_mask"]))
        ins = np.asarray(Image.open(out / rec["instance_mask"]))
        assert sem.dtype == np.uint8 and ins.dtype == np.uint8
        assert torch.equal(torch.from_numpy(sem.astype(np.int64)), item["semantic_mask"])
        assert torch.equal(torch.from_numpy(ins.astype(np.int64)), item["instance_mask"])
    with pytest.raises(ValueError, match="already holds an export"):
        export_scenes(out, split="val", n=3, size=32, seed=6)
    assert len((out / "labels.jsonl").read_text().splitlines()) == n  # the first is untouched
    export_scenes(out, split="val", n=3, size=32, seed=6, overwrite=True)  # replaced, not mixed
    assert len((out / "labels.jsonl").read_text().splitlines()) == 3
    assert len(list((out / "images").glob("*/*.png"))) == 3


def test_export_is_a_segmentation_folder_for_eval_seg(tmp_path, capsys) -> None:
    from stellar.cli import main

    for split in ("train", "val"):
        assert main(["scenes", "--out", str(tmp_path / split), "--split", split, "-n", "6"]) == 0
    num_classes = capsys.readouterr().out.split("--num-classes ")[1].split("`")[0]  # as told
    truncated = sorted((tmp_path / "val" / "images").rglob("*.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:-40])  # skipped: not counted in num_val
    out = tmp_path / "seg"
    argv = ["eval", "seg", "--model", "stellar-tiny", "--train", str(tmp_path / "train")]
    argv += ["--val", str(tmp_path / "val"), "--num-classes", num_classes]
    assert main([*argv, "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layout"] == {"train": "simple", "val": "simple"}
    (row,) = metrics["rows"]
    assert (row["num_train"], row["num_val"]) == (6, 5) and 0 <= row["miou"] <= 1


def test_objects_stay_learnably_large(samples: list[dict[str, torch.Tensor]]) -> None:
    # The smallest legal object (R = 12 % of the side, 30 % visible) still covers a few pixels.
    min_area = 0.3 * min(SHAPE_AREA) * (0.12 * 32) ** 2 * 0.9**5
    for s in samples:
        areas = s["object_areas"][: int(s["count"])]
        assert areas.min() >= math.floor(min_area)


@pytest.mark.parametrize("bad", [["--size", "8"], ["-n", "0"], ["--seed", "-1"]])
def test_scenes_command_refuses_bad_numbers_before_writing(tmp_path, capsys, bad) -> None:
    from stellar.cli import main

    with pytest.raises(SystemExit):  # argparse's one-line usage error, not a traceback
        main(["scenes", "--out", str(tmp_path / "out"), *bad])
    assert bad[0] in capsys.readouterr().err and not (tmp_path / "out").exists()
