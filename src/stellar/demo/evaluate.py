"""Every demo probe of one model on the concept scenes, with the per-sample values behind it."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from stellar.data.scenes import COLOURS, SHAPES, ConceptScenes
from stellar.demo.concepts import localization_scores
from stellar.demo.stats import pooled_miou
from stellar.demo.training import DemoSettings
from stellar.eval.knn import knn_classify
from stellar.eval.linear import SCHEDULE as LINEAR_SCHEDULE
from stellar.eval.linear import pool_features, train_linear_probe
from stellar.eval.probe import predict
from stellar.eval.recon_probe import psnr
from stellar.eval.segmentation import SCHEDULE as SEG_SCHEDULE
from stellar.eval.segmentation import confusion, train_segmentation_probe
from stellar.models.stellar import STELLAR

SEG_CLASSES = 1 + len(SHAPES)
"""Background + one class per shape."""


def eval_scenes(settings: DemoSettings) -> tuple[ConceptScenes, ConceptScenes]:
    """The probes' training scenes (another seed than training's) and the validation scenes."""
    train = ConceptScenes(size=64, length=settings.eval_train, seed=settings.seed + 1000)
    val = ConceptScenes(size=64, length=settings.eval_val, seed=settings.seed, split="val")
    return train, val


@torch.no_grad()
def encode_scenes(model: STELLAR, dataset: ConceptScenes, reconstruct: bool = True) -> dict:
    """Features, maps, reconstructions' PSNR (if ``reconstruct``) and labels of every scene."""
    model.eval()
    keep = ("label", "colour", "instance_mask", "semantic_mask")
    parts: dict[str, list[Tensor]] = {}
    for batch in DataLoader(dataset, batch_size=100):
        out = model.forward_encode(batch["image"])
        values = {k: out[k] for k in ("sparse", "cls", "dense", "spatial")}
        if reconstruct:
            values["psnr"] = psnr(model.reconstruct(out)["reconstruction"], batch["image"])
        values.update({k: batch[k] for k in keep})
        for k, v in values.items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def scene_confusions(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-scene confusion matrices: (N, H, W) predicted and target labels -> (N, C, C)."""
    return torch.stack([confusion(p, t, num_classes) for p, t in zip(pred, target, strict=True)])


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(1) == labels).float()


def chance_samples(train: ConceptScenes, val: ConceptScenes) -> dict[str, Tensor]:
    """Per-sample values of feature-free predictions, for the "learnable at all?" test.

    Classification probes: the most frequent class of the probes' training scenes, predicted
    for every validation scene; segmentation: background everywhere.
    """
    keys = ("label", "colour", "semantic_mask")
    ft = {k: torch.stack([train[i][k] for i in range(len(train))]) for k in keys[:2]}
    fv = {k: torch.stack([val[i][k] for i in range(len(val))]) for k in keys}
    shape = torch.bincount(ft["label"], minlength=len(SHAPES)).argmax()
    colour = torch.bincount(ft["colour"], minlength=len(COLOURS)).argmax()
    shape_ok = (fv["label"] == shape).float()
    masks = fv["semantic_mask"]
    return {
        "linear_top1": shape_ok,
        "knn_top1": shape_ok,
        "linear_colour_top1": (fv["colour"] == colour).float(),
        "seg_miou": scene_confusions(torch.zeros_like(masks), masks, SEG_CLASSES),
    }


def evaluate(
    model: STELLAR,
    train: ConceptScenes,
    val: ConceptScenes,
    s: DemoSettings,
    reconstruct: bool = True,
) -> tuple[dict[str, float | None], dict[str, Tensor]]:
    """Every probe of one model: ``(metrics, per-sample values)``.

    ``reconstruct=False`` (a model whose decoder was never trained) leaves PSNR out (None).
    """
    ft = encode_scenes(model, train, reconstruct=False)
    fv = encode_scenes(model, val, reconstruct=reconstruct)
    n_shapes = len(SHAPES)
    schedule = replace(LINEAR_SCHEDULE, epochs=s.probe_epochs, seed=s.seed)
    samples: dict[str, Tensor] = {}
    # The mean concept token is the feature of the linear, colour and kNN probes.
    tokens_train, tokens_val = pool_features(ft["sparse"]), pool_features(fv["sparse"])
    # The colour probe is a diagnostic of what the tokens do encode (docs/CONCEPTS.md).
    for key, target, classes in (
        ("linear_top1", "label", n_shapes),
        ("linear_colour_top1", "colour", len(COLOURS)),
    ):
        head, _ = train_linear_probe(
            tokens_train, ft[target], tokens_val, fv[target], classes, schedule, progress=False
        )
        samples[key] = _correct(predict(head, tokens_val, 1024, "cpu"), fv[target])
    votes = knn_classify(tokens_train, ft["label"], tokens_val, n_shapes)
    samples["knn_top1"] = _correct(votes.cpu(), fv["label"])
    seg_probe, _ = train_segmentation_probe(
        ft["dense"],
        ft["semantic_mask"],
        None,
        None,
        SEG_CLASSES,
        replace(SEG_SCHEDULE, epochs=s.seg_epochs, seed=s.seed),
        progress=False,
    )
    masks = fv["semantic_mask"]
    size = tuple(masks.shape[-2:])
    pred = predict(seg_probe, fv["dense"], 100, "cpu", lambda x: seg_probe(x, size).argmax(1))
    samples["seg_miou"] = scene_confusions(pred, masks, SEG_CLASSES)
    grid = (val.size // model.patch_size,) * 2
    samples["localization"] = localization_scores(fv["spatial"], grid, fv["instance_mask"])
    if reconstruct:
        samples["psnr"] = fv["psnr"].double()
    metrics: dict[str, float | None] = {
        k: float(v.double().mean()) for k, v in samples.items() if k != "seg_miou"
    }
    metrics["seg_miou"] = pooled_miou(samples["seg_miou"])
    metrics.setdefault("psnr", None)
    return metrics, samples
