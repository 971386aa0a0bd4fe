"""The STELLAR pretraining objective: one place that computes, weights and sums every term,
and its numerics (KoLeo, Sinkhorn-Knopp clustering targets, the OT matching of set alignment).

:class:`StellarObjective` wraps the model so that one ``forward(batch)`` is the whole training
computation (DDP and ``torch.compile`` see a single module call). The batch holds views that
are already augmented and the kept-patch indices of the masked views; randomness lives in the
data pipeline, so the objective is a deterministic function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from stellar.data.augment import ViewPlan
from stellar.errors import UsageError
from stellar.models.stellar import STELLAR
from stellar.schema import bounded

# Profiler labels of the step's phases (``benchmarks/bench_train.py --breakdown``).
PHASE = "phase/"
PIXEL_RECON_WEIGHT = 10.0
VQ_RECON_WEIGHT = 0.05
KOLEO_EPS = 1e-8
# Offset added after subtracting the column max: keeps exp() far from underflow for the
# best-scoring entries while exp(50) ~ 5e21 leaves fp32 ample headroom for the column sums.
_EXP_OFFSET = 50.0
_SUM_EPS = 1e-8


def koleo_loss(x: Tensor) -> Tensor:
    """KoLeo, the Kozachenko-Leonenko entropy estimate, spreading the concept tokens ``x``
    (B, r, d), r >= 2, of each image apart (from each one's nearest other token of the same
    image): a scalar fp32 loss, autocast off."""
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"koleo_loss expects (B, r, d) with r >= 2, got {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        xn = F.normalize(x.float(), dim=-1, eps=KOLEO_EPS)
        with torch.no_grad():
            sim = xn @ xn.transpose(1, 2)
            eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
            nn_idx = sim.masked_fill(eye, float("-inf")).argmax(dim=-1)  # (B, r)
        neighbours = torch.gather(xn, 1, nn_idx.unsqueeze(-1).expand_as(xn))
        dist = F.pairwise_distance(xn, neighbours, eps=KOLEO_EPS)
        return -torch.log(0.5 * dist + KOLEO_EPS).mean()


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, n_iterations: int = 3) -> torch.Tensor:
    """Balance temperature-scaled scores (N, K) into detached fp32 soft cluster assignments
    (N, K), rows summing to 1, autocast off.

    Under ``torch.distributed`` the column max and sums are all-reduced, so each rank's rows
    equal those of one process run on all the rows (each rank holds at least one, any number).
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with torch.autocast(device_type=scores.device.type, enabled=False):
        q = scores.detach().float()
        col_max = q.amax(dim=0)
        if distributed:
            dist.all_reduce(col_max, op=dist.ReduceOp.MAX)
        q = torch.exp(q - col_max + _EXP_OFFSET)
        for _ in range(n_iterations):
            col_sum = q.sum(dim=0)
            if distributed:
                dist.all_reduce(col_sum, op=dist.ReduceOp.SUM)
            q = q / (col_sum + _SUM_EPS)
            q = q / (q.sum(dim=1, keepdim=True) + _SUM_EPS)
    return q


@torch.no_grad()
def clustering_targets(
    logits: torch.Tensor, sk_temp: float = 0.06, n_iterations: int = 3
) -> torch.Tensor:
    """Detached Sinkhorn-Knopp targets (..., K), fp32, rows summing to 1, of cluster logits
    (..., K): every leading dim is a row of ``sinkhorn_knopp(logits / sk_temp)``."""
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    return sinkhorn_knopp(flat / sk_temp, n_iterations=n_iterations).reshape(logits.shape)


def cross_entropy_soft(
    logits: torch.Tensor, targets: torch.Tensor, temp: float = 0.12
) -> torch.Tensor:
    """Soft-target cross-entropy of ``logits / temp`` (..., K) against ``targets`` (same shape),
    averaged over every row (matches ``cluster.loss``/``cls_cluster.loss``); fp32 with autocast
    off; pass detached targets.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        rows = logits.float().flatten(0, -2) / temp
        return F.cross_entropy(rows, targets.float().flatten(0, -2))


def _image_of_view(n_pred: int, n_images: int, device: torch.device) -> torch.Tensor:
    """The image of each of ``n_pred`` image-major views (``p // V``, as the fixture has them)."""
    if n_images < 1 or n_pred % n_images != 0:
        raise ValueError(
            f"expected the number of predicted views ({n_pred}) to be a multiple of the "
            f"number of target images ({n_images})"
        )
    return torch.arange(n_pred, device=device) // (n_pred // n_images)


@torch.no_grad()
def sinkhorn_match(
    preds: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 0.1,
    n_iterations: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match each predicted token ``preds`` (P, r, d), P = B·V image-major views, to a token
    of its image's ``targets`` (B, r_t, d) by entropic OT on the Euclidean cost: log-domain
    Sinkhorn from ``u = v = 0``, match = argmax of the plan over targets; fp32, autocast off.

    Returns ``index`` (P, r) int64 in [0, r_t) and the detached ``plan`` (P, r, r_t).
    """
    img = _image_of_view(preds.shape[0], targets.shape[0], preds.device)
    with torch.autocast(device_type=preds.device.type, enabled=False):
        p = preds.detach().float()
        t = targets.detach().float()[img]  # (P, r_t, d) image-major
        # The direct difference kernel: the matmul shortcut loses precision for near-equal
        # tokens, and the full (P, r, r_t, d) difference tensor would not fit for real sizes.
        cost = torch.cdist(p, t, compute_mode="donot_use_mm_for_euclid_dist")  # (P, r, r_t)
        u = cost.new_zeros(cost.shape[:2])
        v = cost.new_zeros(cost.shape[0], cost.shape[2])
        for _ in range(n_iterations):
            u = -eps * torch.logsumexp((v.unsqueeze(1) - cost) / eps, dim=2)
            v = -eps * torch.logsumexp((u.unsqueeze(2) - cost) / eps, dim=1)
        plan = torch.exp((u.unsqueeze(2) + v.unsqueeze(1) - cost) / eps)
    return plan.argmax(dim=2), plan


def set_alignment_loss(
    pred_logits: torch.Tensor,
    target_assignments: torch.Tensor,
    match_index: torch.Tensor,
    temp: float = 0.12,
) -> torch.Tensor:
    """:func:`cross_entropy_soft` of the masked-view tokens' logits ``pred_logits`` (P, r, K)
    against the detached Sinkhorn targets ``target_assignments`` (B, r_t, K) of the main-view
    tokens they are matched to (``match_index`` (P, r), from :func:`sinkhorn_match`); a scalar
    fp32 loss."""
    img = _image_of_view(match_index.shape[0], target_assignments.shape[0], match_index.device)
    matched = target_assignments.detach()[img.unsqueeze(1), match_index.long()]  # (P, r, K)
    return cross_entropy_soft(pred_logits, matched, temp)


@dataclass
class ObjectiveConfig:
    """Switches and weights of the loss terms; each ablation of the paper (arXiv 2602.01905)
    is one flag.

    ``recon_weight=None`` takes the paper's weight for the head (pixel 10, vq 0.05).
    """

    recon: bool = True
    recon_weight: float | None = bounded(None, low=0)
    clustering: bool = True
    set_align: bool = True
    cls_align: bool = True
    koleo: bool = True
    koleo_weight: float = bounded(0.1, low=0)
    global_align: bool = False

    def views(self, n_masked: int = 1, n_local: int = 1) -> ViewPlan:
        """The views the enabled terms need, given the counts per image; a UsageError when no
        enabled term has its views."""
        plan = ViewPlan(
            masked=n_masked if self.set_align or self.cls_align or self.koleo else 0,
            local=n_local if self.cls_align else 0,
            second=self.global_align and self.clustering,
        )
        aligned = self.set_align and plan.masked or self.cls_align and (plan.masked or plan.local)
        if not (self.recon or self.clustering or self.koleo or aligned):
            raise UsageError(
                "objective: no loss term is on with the views it needs: nothing to train"
            )
        return plan


def total_loss(terms: dict[str, Tensor], rec_coeff: float | None = None) -> Tensor:
    """The release's total, a 0-dim fp32 tensor: ``rec_coeff`` x (``MSE`` or ``VQ-CE``) + every
    term named ``*loss*`` of ``terms`` (:meth:`StellarObjective.compute`, or the ``predictions``
    of a pretraining call); by default the paper's ``rec_coeff``, 10 for ``MSE``, 0.05 for
    ``VQ-CE``.
    """
    weights = {"MSE": PIXEL_RECON_WEIGHT, "VQ-CE": VQ_RECON_WEIGHT}
    parts = [
        (weights[k] if rec_coeff is None else rec_coeff) * terms[k].float()
        for k in weights
        if k in terms
    ]
    parts += [v.float() for k, v in terms.items() if "loss" in k]
    return torch.stack(parts).sum()


class StellarObjective(nn.Module):
    """Model + objective: ``forward(batch) -> (total, {name: detached term})``.

    Batch keys (B images; V masked views; L local views):
        ``image`` (B, 3, G, G) main view, no colour augmentation (reconstruction target);
        ``masked_views`` (B·V, 3, G, G) colour-augmented copies, image-major, with
        ``keep_idx`` (B·V, k) the patches each keeps; ``local_views`` (B·L, 3, l, l);
        ``second_view`` (B, 3, G, G) for global alignment. Absent keys switch terms off, and
        a view no enabled term reads is ignored.

    ``model`` is a ``purpose="pretrain"`` STELLAR; an EMA ``teacher`` supplies the clustering
    targets.
    """

    def __init__(
        self, model: STELLAR, config: ObjectiveConfig, teacher: STELLAR | None = None
    ) -> None:
        super().__init__()
        if model.clustering_head is None or model.decoder is None:
            raise ValueError("the objective needs a model built with purpose='pretrain'")
        if config.recon and model.config.decoder_head == "vq" and model.tokenizer is None:
            raise UsageError(
                "this model reconstructs MaskGIT-VQGAN codes: pass vq_model=/path/to/"
                "maskgit-vqgan-imagenet-f16-256.bin (or 'maskgit-vqgan'), or switch reconstruction "
                "off (objective.recon=false; model.objective_config.recon = False in Python)"
            )
        self.model = model
        self.config = config
        # Outside the module tree: the teacher has no gradients and is not DDP-synced.
        object.__setattr__(self, "teacher", teacher)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute every enabled term on one batch: ``(total, {term: detached value})``."""
        _, terms = self.compute(batch)
        total = total_loss(terms, self.config.recon_weight)
        return total, {name: t.detach().float() for name, t in terms.items()}

    def compute(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The main view's encoding and the loss terms, under the release's names.

        Returns:
            ``main``: :meth:`STELLAR.forward_encode` of ``batch["image"]`` (only ``cls``,
            ``dense``, ``sparse`` when reconstruction is off); ``terms``: the unweighted
            reconstruction term ``MSE`` (pixel head) or ``VQ-CE`` (vq head), and the weighted
            ``koleo_loss`` (every view's), ``clustering_loss``, ``cls_clustering_loss``,
            ``mask_loss`` (set alignment), ``cls_loss`` (masked and local views' CLS
            alignment); switched-off terms are absent. :func:`total_loss` sums them.
        """
        cfg, model = self.config, self.model
        temp = model.config.logits_temp
        plan = cfg.views("masked_views" in batch, "local_views" in batch)  # the views it has
        masked, local = bool(plan.masked), bool(plan.local)
        second = plan.second and "second_view" in batch
        want_targets = cfg.clustering or (cfg.set_align and masked)
        want_cls_targets = cfg.clustering or (cfg.cls_align and (masked or local))

        terms: dict[str, Tensor] = {}

        def add(more: dict[str, Tensor]) -> None:  # a term of several views is their sum
            for name, value in more.items():
                terms[name] = terms[name] + value if name in terms else value

        image = batch["image"]
        with record_function(PHASE + "main encode"):
            main = model.forward_encode(image) if cfg.recon else model.forward_tokens(image)
        if cfg.recon:
            with record_function(PHASE + "decoder"):
                add(self.reconstruction_loss(main, image))
        if cfg.koleo:
            add({"koleo_loss": cfg.koleo_weight * koleo_loss(main["sparse"])})
        with record_function(PHASE + "heads and Sinkhorn"):
            logits = model.clustering_head(main["sparse"]) if cfg.clustering else None
            cls_logits = model.cls_cluster_head(main["cls"]) if cfg.clustering else None
            targets, cls_targets = self.targets(
                image, main, want_targets, want_cls_targets, logits, cls_logits
            )
            if cfg.clustering and not second:
                add({"clustering_loss": cross_entropy_soft(logits, targets, temp)})
                add({"cls_clustering_loss": cross_entropy_soft(cls_logits, cls_targets, temp)})
        if second:
            with record_function(PHASE + "second view"):
                add(self.global_alignment(batch, main, logits, cls_logits, targets, cls_targets))
        if masked:
            with record_function(PHASE + "masked views"):
                add(self.masked_terms(batch, main, targets, cls_targets))
        if local:
            with record_function(PHASE + "local views"):
                out = model.forward_tokens(batch["local_views"])
                add({"cls_loss": self.cls_alignment(out["cls"], cls_targets)})
        return main, terms

    # ------------------------------------------------------------------ terms
    def reconstruction_loss(self, main: dict[str, Tensor], image: Tensor) -> dict[str, Tensor]:
        """The term under the release's name: ``MSE`` of the pixel head against the [0, 1] image,
        or ``VQ-CE`` against the tokenizer's codes (B, h*w) of the image resized to grid·16."""
        grid = self.model.grid(image)
        out = self.model.decode(main["lowrank"], grid)
        if "x_hat" in out:
            return {"MSE": F.mse_loss(out["x_hat"].float(), image.float())}
        tokenizer = self.model.tokenizer
        size = (grid[0] * tokenizer.downsample_factor, grid[1] * tokenizer.downsample_factor)
        with torch.no_grad():
            if tuple(image.shape[-2:]) != size:
                image = F.interpolate(image.float(), size, mode="bicubic", align_corners=False)
            codes = tokenizer.encode(image.clamp(0, 1))
        return {"VQ-CE": F.cross_entropy(out["logits"].float().flatten(0, 1), codes.flatten())}

    @torch.no_grad()
    def targets(
        self,
        image: Tensor,
        encoded: dict[str, Tensor],
        sparse: bool = True,
        cls: bool = True,
        logits: Tensor | None = None,
        cls_logits: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Sinkhorn targets of a view's concept tokens and CLS token (None where not wanted):
        from the EMA teacher if any (it encodes ``image`` itself), else from the model's own
        heads on ``encoded`` (reusing ``logits`` / ``cls_logits`` when already computed)."""
        if not (sparse or cls):
            return None, None
        source = self.model
        if self.teacher is not None:
            source, encoded = self.teacher, self.teacher.forward_tokens(image)
            logits = cls_logits = None
        if sparse and logits is None:
            logits = source.clustering_head(encoded["sparse"])
        if cls and cls_logits is None:
            cls_logits = source.cls_cluster_head(encoded["cls"])
        mc = self.model.config
        sk = dict(sk_temp=mc.sk_temp, n_iterations=mc.n_sk_iter)
        return (
            clustering_targets(logits, **sk) if sparse else None,
            clustering_targets(cls_logits, **sk) if cls else None,
        )

    def masked_terms(
        self,
        batch: dict[str, Tensor],
        main: dict[str, Tensor],
        targets: Tensor | None,
        cls_targets: Tensor | None,
    ) -> dict[str, Tensor]:
        """KoLeo, set alignment and CLS alignment of the masked views (one encoder batch)."""
        cfg, model = self.config, self.model
        out = model.encode_masked(batch["masked_views"], batch["keep_idx"])
        terms = {}
        if cfg.koleo:
            terms["koleo_loss"] = cfg.koleo_weight * koleo_loss(out["sparse"])
        if cfg.set_align:
            with record_function(PHASE + "OT matching"):
                index, _ = sinkhorn_match(out["sparse"], main["sparse"])
            logits = model.clustering_head(out["sparse"])
            terms["mask_loss"] = set_alignment_loss(
                logits, targets, index, model.config.logits_temp
            )
        if cfg.cls_align:
            terms["cls_loss"] = self.cls_alignment(out["cls"], cls_targets)
        return terms

    def cls_alignment(self, cls_tokens: Tensor, cls_targets: Tensor) -> Tensor:
        """CE of views' CLS logits (B·V, 1, d) against their image's main-view CLS targets."""
        img = _image_of_view(cls_tokens.shape[0], cls_targets.shape[0], cls_tokens.device)
        logits = self.model.cls_cluster_head(cls_tokens)
        return cross_entropy_soft(logits, cls_targets[img], self.model.config.logits_temp)

    def global_alignment(
        self,
        batch: dict[str, Tensor],
        main: dict[str, Tensor],
        logits: Tensor,
        cls_logits: Tensor,
        targets: Tensor,
        cls_targets: Tensor,
    ) -> dict[str, Tensor]:
        """Symmetric cross-view clustering between the main and the second global view: each
        view's Sinkhorn targets supervise the other's matched logits, directions averaged."""
        cfg, model = self.config, self.model
        temp, second_view = model.config.logits_temp, batch["second_view"]
        other = model.forward_tokens(second_view)
        logits2 = model.clustering_head(other["sparse"])
        cls_logits2 = model.cls_cluster_head(other["cls"])
        targets2, cls_targets2 = self.targets(second_view, other, True, True, logits2, cls_logits2)
        to_first, _ = sinkhorn_match(other["sparse"], main["sparse"])
        to_second, _ = sinkhorn_match(main["sparse"], other["sparse"])
        cluster = 0.5 * (
            set_alignment_loss(logits2, targets, to_first, temp)
            + set_alignment_loss(logits, targets2, to_second, temp)
        )
        cls = 0.5 * (
            cross_entropy_soft(cls_logits2, cls_targets, temp)
            + cross_entropy_soft(cls_logits, cls_targets2, temp)
        )
        terms = {"clustering_loss": cluster, "cls_clustering_loss": cls}
        if cfg.koleo:
            terms["koleo_loss"] = cfg.koleo_weight * koleo_loss(other["sparse"])
        return terms
