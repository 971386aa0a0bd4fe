"""Every demo metric of one model on the concept scenes (probes, localization, invariance)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from stellar.data.scenes import COLOURS, SHAPES, ConceptScenes
from stellar.demo.concepts import concept_purity, localization_scores, token_shape_labels
from stellar.demo.settings import DemoSettings
from stellar.eval.invariance import random_crops, representation_distances
from stellar.eval.knn import knn_accuracy
from stellar.eval.linear import pool_features, train_linear_probe
from stellar.eval.metrics import psnr
from stellar.eval.segmentation import train_segmentation_probe
from stellar.models.stellar import STELLAR


def eval_scenes(settings: DemoSettings) -> tuple[ConceptScenes, ConceptScenes]:
    """The probes' training scenes (another seed than training's) and the validation scenes."""
    train = ConceptScenes(size=64, length=settings.eval_train, seed=settings.seed + 1000)
    val = ConceptScenes(size=64, length=settings.eval_val, seed=settings.seed, split="val")
    return train, val


@torch.no_grad()
def encode_scenes(model: STELLAR, dataset: ConceptScenes, batch_size: int = 100) -> dict:
    """Features, maps, reconstructions' PSNR and labels of every scene of ``dataset``."""
    model.eval()
    keep = ("label", "colour", "instance_mask", "semantic_mask", "object_shapes")
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model.forward_encode(batch["image"])
        rec = model.reconstruct(out)["reconstruction"]
        values = {k: out[k] for k in ("sparse", "cls", "dense", "spatial")}
        values["psnr"] = psnr(rec, batch["image"])
        values.update({k: batch[k] for k in keep})
        for k, v in values.items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluate(model: STELLAR, train: ConceptScenes, val: ConceptScenes, s: DemoSettings) -> dict:
    """Every demo metric of one model (fractions in [0, 1], PSNR in dB)."""
    ft, fv = encode_scenes(model, train), encode_scenes(model, val)
    n_shapes = len(SHAPES)
    probe = dict(epochs=s.probe_epochs, seed=s.seed, progress=False)
    # The mean concept token, the feature of the linear, colour and kNN probes.
    tokens_train, tokens_val = pool_features(ft["sparse"]), pool_features(fv["sparse"])
    _, lin = train_linear_probe(
        tokens_train, ft["label"], tokens_val, fv["label"], n_shapes, **probe
    )
    _, lin_cls = train_linear_probe(
        ft["cls"][:, 0], ft["label"], fv["cls"][:, 0], fv["label"], n_shapes, **probe
    )
    # A diagnostic, not one of the verdicts: is there *any* object semantics in the tokens?
    _, lin_colour = train_linear_probe(
        tokens_train, ft["colour"], tokens_val, fv["colour"], len(COLOURS), **probe
    )
    knn = knn_accuracy(tokens_train, ft["label"], tokens_val, fv["label"], n_shapes)
    _, seg = train_segmentation_probe(
        ft["dense"],
        ft["semantic_mask"],
        fv["dense"],
        fv["semantic_mask"],
        1 + n_shapes,
        epochs=s.seg_epochs,
        seed=s.seed,
        progress=False,
    )
    grid = (val.size // model.patch_size,) * 2
    loc = localization_scores(fv["spatial"], grid, fv["instance_mask"])
    labels = token_shape_labels(fv["spatial"], grid, fv["instance_mask"], fv["object_shapes"])
    purity = concept_purity(fv["sparse"], labels, k=2 * n_shapes, seed=s.seed)
    invariance = crop_invariance(model, val, s.seed)
    return {
        "linear_top1": lin["top1"],
        "linear_cls_top1": lin_cls["top1"],
        "linear_colour_top1": lin_colour["top1"],
        "knn_top1": knn["top1"],
        "seg_miou": seg["miou"],
        "psnr": float(fv["psnr"].mean()),
        "localization": float(loc.mean()),
        **purity,
        **invariance,
    }


@torch.no_grad()
def crop_invariance(
    model: STELLAR, val: ConceptScenes, seed: int, n: int = 100, k: int = 4
) -> dict:
    """Mean cosine distance between an image's representation and that of random crops of it."""
    images = torch.stack([val[i]["image"] for i in range(min(n, len(val)))])
    crops = random_crops(images, k, scale=(0.3, 1.0), generator=torch.Generator().manual_seed(seed))
    distances = representation_distances(
        model.forward_encode(images), model.forward_encode(crops.flatten(0, 1)), k
    )
    return {
        "crop_dist_sparse": float(distances["sparse_matched"].mean()),
        "crop_dist_cls": float(distances["cls"].mean()),
    }
