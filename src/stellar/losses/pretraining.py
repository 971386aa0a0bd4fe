"""The release's pretraining call: ``load_stellar(name, purpose="pretrain")(batch)``."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from stellar.data.augment import MultiViewAugment
from stellar.losses.objective import ObjectiveConfig, StellarObjective, total_loss
from stellar.models.config import StellarConfig
from stellar.models.stellar import STELLAR

# The release's local views: 96 px at 224 px (its view counts are MultiViewAugment's defaults).
LOCAL_FRACTION = 96 / 224


class StellarForPretraining(STELLAR):
    """A ``purpose="pretrain"`` STELLAR (decoder and clustering heads) whose call takes the
    model card's batch dict; everything else, state dict included, is STELLAR's.

    ``objective_config`` says which loss terms, with which weights (default: the paper's); the
    masked views are masked with :class:`~stellar.data.augment.MultiViewAugment`'s defaults.
    """

    def __init__(self, config: StellarConfig, purpose: str = "pretrain") -> None:
        super().__init__(config, purpose)
        self.objective_config = ObjectiveConfig()
        p, size = self.patch_size, self.image_size
        self.augment = MultiViewAugment(
            global_size=size,
            local_size=p * max(1, round(size * LOCAL_FRACTION / p)),
        )

    @property
    def objective(self) -> StellarObjective:
        """The objective the trainer runs, on this model (held outside the module tree)."""
        return StellarObjective(self, self.objective_config)

    def forward(
        self, inputs: dict[str, Tensor], mode: Literal["train", "eval"] = "train"
    ) -> dict[str, dict[str, Tensor]]:
        """One pretraining forward pass on the model card's batch (images alone: :meth:`encode`).

        ``mode`` is the release's: ``"train"`` as below, ``"eval"`` only :meth:`encode`'s
        features of ``image``, under ``predictions``.

        Args:
            inputs: ``image`` (B, 3, H, W) in [0, 1], the main view and reconstruction target;
                optionally ``global_views`` (B, G, 3, H, W) without colour augmentation (view 0
                is the image's crop), ``local_views`` (B, L, 3, h, w) colour-augmented, and
                ``labels`` (returned as ``gold_labels``, unused). Views of a kind not given are
                made from ``image`` by our augmentation.

        Returns:
            ``{"predictions": ...}`` with the main view's ``sparse`` (B, r, d), ``spatial``
            (B, n, r), ``concat`` (B, r, d + n), ``lowrank`` (B, n, d), ``dense`` (B, n, d),
            ``cls`` (B, 1, d), ``peak_dist`` (B, r) and the loss terms ``MSE`` or ``VQ-CE``,
            ``koleo_loss``, ``clustering_loss``, ``cls_clustering_loss``, ``mask_loss``,
            ``cls_loss`` (those the objective enables); :meth:`loss` sums them.
        """
        if not isinstance(inputs, dict):
            return self.encode(inputs)
        if "image" not in inputs:
            raise ValueError("expected the model card's batch dict, with at least 'image'")
        if mode == "eval":
            return {"predictions": self.encode(inputs["image"])}
        if mode != "train":
            raise ValueError(f"expected mode 'train' or 'eval', got {mode!r}")
        self.check_images(inputs["image"])
        for key in ("global_views", "local_views"):
            if (views := inputs.get(key)) is None:
                continue
            if views.ndim != 5 or views.shape[0] != len(inputs["image"]):
                raise ValueError(
                    f"expected {key} of shape (B, V, 3, H, W) with B = {len(inputs['image'])}, "
                    f"got {tuple(views.shape)}"
                )
            try:  # as the image: floats in [0, 1], sides multiples of the patch, V >= 1
                self.check_images(views.flatten(0, 1))
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        main, terms = self.objective.compute(self.views(inputs))
        predictions = {**main, **terms}
        if "spatial" in main:
            spatial = main["spatial"].transpose(1, 2).to(main["sparse"].dtype)
            predictions["concat"] = torch.cat([main["sparse"], spatial], -1)
        if "labels" in inputs:
            predictions["gold_labels"] = inputs["labels"]
        return {"predictions": predictions}

    def loss(self, predictions: dict[str, Tensor]) -> Tensor:
        """The release's total: rec_coeff x (``MSE`` or ``VQ-CE``) + every ``*loss*`` term."""
        return total_loss(predictions, self.objective_config.recon_weight)

    def views(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The objective's batch: the main view and the views its enabled terms read, those of
        a kind not given made from ``image`` by our augmentation."""
        image = inputs["image"]
        plan = self.objective.config.views(self.augment.n_masked, self.augment.n_local)
        given = inputs.get("global_views"), inputs.get("local_views")
        missing = dataclasses.replace(
            plan,
            masked=plan.masked if given[0] is None else 0,
            second=plan.second and given[0] is None,
            local=plan.local if given[1] is None else 0,
        )
        batch = {}
        if missing.masked or missing.second or missing.local:
            size = torch.tensor(image.shape[-2:], device=image.device).expand(len(image), 2)
            batch = self.augment.make(image, size, missing)
        batch |= {**self.augment.colored(*given, plan), "image": image}
        return self.augment.mask(batch, self.patch_size)
