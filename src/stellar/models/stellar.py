"""STELLAR: a ViT with r concept queries, factorised into "what" (S) and "where" (L).

``encode`` turns images into concept tokens ``sparse`` (S, B x r x d) and a localisation matrix
``spatial`` (L, B x n x r, rows on the simplex); ``lowrank = L @ S`` is the dense feature map the
decoder turns back into the image (``reconstruct``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stellar.checkpoint.io import save_pretrained as write_pretrained
from stellar.errors import UsageError
from stellar.images import ImageInput, preprocess
from stellar.models.config import StellarConfig
from stellar.models.init import init_vit_layers_
from stellar.models.networks import OnlineClustering, ReconstructionDecoder, ViTEncoder
from stellar.models.vqgan import check_tokenizer
from stellar.outputs import output_folder

if TYPE_CHECKING:
    from stellar.models.vqgan import MaskGITVQGAN

logger = logging.getLogger(__name__)

Purpose = Literal["encode", "reconstruct", "pretrain"]
PURPOSES: tuple[str, ...] = ("encode", "reconstruct", "pretrain")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inputs may overshoot [0, 1] by this much (resampling, bf16 rounding) before we refuse them.
RANGE_TOLERANCE = 1e-3


class STELLAR(nn.Module):
    """The STELLAR model of ``config``; ``purpose`` says which modules exist: ``"encode"``:
    encoder, concept tokens and the two projections; ``"reconstruct"``: also the decoder;
    ``"pretrain"``: also the two online-clustering heads."""

    # The outputs of encode() a probe may read (the evaluation protocols' encoder contract).
    feature_keys: tuple[str, ...] = ("sparse", "cls", "dense", "lowrank")

    def __init__(self, config: StellarConfig, purpose: Purpose = "encode") -> None:
        super().__init__()
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        self.config = config
        self.purpose = purpose
        enc = config.encoder
        d = enc.hidden_size
        self.patch_size = enc.patch_size
        self.encoder = ViTEncoder(enc)
        self.sparse_tokens = nn.Parameter(torch.empty(config.num_sparse_tokens, d))
        self.dense_proj = nn.Linear(d, d)
        self.sparse_proj = nn.Linear(d, d)
        self.decoder: ReconstructionDecoder | None = None
        self.clustering_head: OnlineClustering | None = None
        self.cls_cluster_head: OnlineClustering | None = None
        self.tokenizer: MaskGITVQGAN | None = None
        if purpose in ("reconstruct", "pretrain"):
            self.decoder = ReconstructionDecoder(config)
        if purpose == "pretrain":
            head = dict(hidden_dim=config.predictor_hidden_dim, proto_dim=config.prototype_dim)
            self.clustering_head = OnlineClustering(d, config.num_clusters, **head)
            self.cls_cluster_head = OnlineClustering(d, config.num_clusters, **head)
        # The submodules initialise themselves when built (HF-ViT rules); these are STELLAR's.
        with torch.no_grad():
            self.sparse_tokens.normal_().mul_(d**-0.5)
        init_vit_layers_(self.dense_proj)
        init_vit_layers_(self.sparse_proj)

    # ------------------------------------------------------------------ properties
    @property
    def num_tokens(self) -> int:
        """r, the number of concept tokens."""
        return self.sparse_tokens.shape[0]

    @property
    def embed_dim(self) -> int:
        """d, the width of every token (``sparse``, ``dense``, ``lowrank``, ``cls``)."""
        return self.sparse_tokens.shape[1]

    @property
    def num_features(self) -> int:
        """d, as timm names it: the size of a pooled feature."""
        return self.embed_dim

    @property
    def image_size(self) -> int:
        """The side the model was trained at; :meth:`preprocess` resizes to it."""
        return self.config.encoder.image_size

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the encoder's weights."""
        return self.sparse_tokens.dtype

    @property
    def device(self) -> torch.device:
        """The device of the encoder's weights."""
        return self.sparse_tokens.device

    def extra_repr(self) -> str:
        enc = self.config.encoder
        return (
            f"purpose={self.purpose!r}, image_size={enc.image_size}, patch_size={enc.patch_size}, "
            f"embed_dim={self.embed_dim}, num_tokens={self.num_tokens}"
        )

    def grid(self, images: Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of an image batch (B, 3, H, W)."""
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    # ------------------------------------------------------------------ encoding
    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless ``images`` is a non-empty (B, 3, H, W) float batch in [0, 1]
        with H and W divisible by the patch size."""
        p = self.patch_size
        if not isinstance(images, Tensor):
            raise ValueError(f"expected a torch.Tensor of images, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(
                f"expected images of shape (B, 3, H, W), got {images.ndim} dims "
                f"{tuple(images.shape)}; add a batch dimension with images[None]"
            )
        if images.shape[1] != 3:
            raise ValueError(f"expected 3 RGB channels, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("expected a non-empty batch, got 0 images")
        if not images.is_floating_point():
            raise ValueError(
                f"expected floating-point images in [0, 1], got dtype {images.dtype}; "
                "convert uint8 with images.float() / 255"
            )
        h, w = images.shape[-2:]
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {p}; resize or crop "
                f"to a multiple of {p} (e.g. {h // p * p}x{w // p * p})"
            )
        if torch.compiler.is_compiling():  # reading values would break the compiled graph
            return
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images contain NaN or infinite values")
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"expected RGB values in [0, 1], got range [{lo:.4g}, {hi:.4g}]; the ImageNet "
                "normalisation is applied inside the model, pass unnormalised images"
            )

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] RGB -> ImageNet-normalised pixels in the model's dtype."""
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return ((images - mean) / std).to(self.dtype)

    def preprocess(self, images: ImageInput) -> Tensor:
        """PIL images or image files (any mode and size) -> the (B, 3, S, S) batch in [0, 1] on
        the model's device, S its image size, as the release prepares them (:func:`preprocess`)."""
        return preprocess(images, self.image_size).to(self.device)

    def encode(self, images: Tensor | ImageInput) -> dict[str, Tensor]:
        """Encode a batch of images into concept tokens and their spatial maps.

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H, W multiples of the patch size p (positions
                are interpolated for sizes other than the native one); or what
                :meth:`preprocess` takes (a PIL image, a file path, a list of them), which it
                turns into such a batch first.

        Returns:
            ``cls`` (B, 1, d), ``dense`` (B, n, d), ``sparse`` (B, r, d),
            ``spatial`` (B, n, r) fp32, rows summing to 1, ``lowrank`` (B, n, d) = spatial @ sparse,
            ``peak_dist`` (B, r) the max of each concept's map, ``concat`` (B, r, d + n)
            = [sparse ; spatialᵀ]. n = (H/p)·(W/p), row-major. ``grid`` (B, 2) int64, (H/p, W/p)
            per image (a row per image, so the dict can be sliced or joined per key), so that
            :meth:`reconstruct` lays the patches out as they were encoded.
        """
        if isinstance(images, dict):
            raise TypeError(
                "encode() takes images; the model card's batch dict goes to a model loaded with "
                "purpose='pretrain'"
            )
        if not isinstance(images, Tensor):
            images = self.preprocess(images)
        self.check_images(images)
        out = self.forward_encode(images)
        out["concat"] = torch.cat(
            [out["sparse"], out["spatial"].transpose(1, 2).to(out["sparse"].dtype)], -1
        )
        grid = torch.tensor(self.grid(images), device=images.device)
        out["grid"] = grid.expand(images.shape[0], 2).contiguous()
        return out

    def forward_encode(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`encode` without input checks (the training hot path)."""
        out = self.forward_tokens(images)
        return {**out, **self.factorize(out["dense"], out["sparse"])}

    def forward_tokens(self, images: Tensor) -> dict[str, Tensor]:
        """The encoder's ``cls`` (B, 1, d), ``dense`` (B, n, d) and ``sparse`` (B, r, d) tokens
        without the factorization, for views whose spatial maps nobody reads; no checks."""
        tokens = self.encoder.forward_features(self.normalize(images), self.batch_sparse(images))
        n = tokens.shape[1] - 1 - self.num_tokens
        cls, dense, sparse = tokens.split([1, n, self.num_tokens], dim=1)
        return {"cls": cls, "dense": dense, "sparse": sparse}

    def encode_masked(self, images: Tensor, keep_idx: Tensor) -> dict[str, Tensor]:
        """Encode CLS + the kept patches (``keep_idx`` (B, k), indices in the row-major grid) +
        the concept tokens of images (B, 3, H, W) in [0, 1] (the masked views; no checks):
        ``cls`` (B, 1, d), ``dense`` (B, k, d) the kept patches' outputs, ``sparse`` (B, r, d).
        """
        patches = self.encoder.patch_tokens(self.normalize(images))
        index = keep_idx.long().unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        kept = patches.gather(1, index)
        tokens = self.encoder.run(kept, self.batch_sparse(images))
        cls, dense, sparse = tokens.split([1, kept.shape[1], self.num_tokens], dim=1)
        return {"cls": cls, "dense": dense, "sparse": sparse}

    def batch_sparse(self, images: Tensor) -> Tensor:
        """The concept queries expanded over the batch, (B, r, d)."""
        return self.sparse_tokens.unsqueeze(0).expand(images.shape[0], -1, -1)

    def factorize(self, dense: Tensor, sparse: Tensor) -> dict[str, Tensor]:
        """Localisation L and the low-rank map L·S from patch tokens ``dense`` (B, n, d) and
        concept tokens ``sparse`` (B, r, d): ``spatial`` (B, n, r) fp32, softmax over r;
        ``lowrank`` (B, n, d) in sparse's dtype; ``peak_dist`` (B, r) fp32, detached.

        The similarity and softmax run in fp32 whatever the model's or autocast's dtype.
        """
        keys = self.dense_proj(dense).float()
        queries = self.sparse_proj(sparse).float()
        with torch.autocast(device_type=dense.device.type, enabled=False):
            temp = self.config.spatial_temp
            if temp is None:
                logits = keys @ queries.transpose(1, 2) / math.sqrt(keys.shape[-1])
            else:
                keys = F.normalize(keys, dim=-1, eps=1e-7)
                queries = F.normalize(queries, dim=-1, eps=1e-7)
                logits = keys @ queries.transpose(1, 2) / temp
            spatial = logits.softmax(dim=-1)
            lowrank = (spatial @ sparse.float()).to(sparse.dtype)
        return {
            "spatial": spatial,
            "lowrank": lowrank,
            "peak_dist": spatial.detach().amax(dim=1),
        }

    # ------------------------------------------------------------------ reconstruction
    def decode(self, lowrank: Tensor, grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """Run the decoder on a low-rank feature map (the reconstruction loss's forward).

        Args:
            lowrank: (B, n, d) = spatial @ sparse, row-major over the patch grid.
            grid: (h, w) patch grid with h·w = n; default: square.

        Returns:
            ``decoder_output`` (B, n, C) the tokens before the head, and the pixel head's
            ``x_hat`` (B, 3, h·p, w·p) (unclamped) or the vq head's ``logits`` (B, n, V).
        """
        if self.decoder is None:
            raise ValueError(
                "this model has no decoder: load it with purpose='reconstruct' (a checkpoint "
                "that carries the decoder weights) to use decode() or reconstruct()"
            )
        grid = grid or _square_grid(lowrank.shape[1])
        if grid[0] * grid[1] != lowrank.shape[1]:
            raise ValueError(f"grid {grid} does not hold {lowrank.shape[1]} patches")
        return self.decoder(lowrank, grid)

    def reconstruct(
        self,
        encoded: dict[str, Tensor] | Tensor,
        spatial: Tensor | None = None,
        grid: tuple[int, int] | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Rebuild images from ``encode``'s output, or from ``(sparse, spatial)``.

        From a dict it reads ``sparse`` (S) and ``spatial`` (L) and recomputes L·S, so edits
        to the concepts or their maps take effect, and ``grid``, which :meth:`encode` records.

        Args:
            encoded: the dict returned by :meth:`encode`, or the concept tokens (B, r, d).
            spatial: (B, n, r) when ``encoded`` is the concept tokens.
            grid: (h, w) patch grid, or encode's ``grid`` tensor; default: the dict's
                ``grid``, else a square grid (an error when n is not a square).

        Returns:
            :meth:`decode`'s outputs plus ``reconstruction`` (B, 3, H, W) in [0, 1]: the
            clamped ``x_hat`` for the pixel head; for the vq head the tokenizer's decoding of
            the argmax ``tokens`` (B, n), also returned.
        """
        if grid is None and isinstance(encoded, dict) and "grid" in encoded:
            grid = encoded["grid"]
        if isinstance(grid, Tensor):
            grid = _recorded_grid(grid)
        if isinstance(encoded, dict):
            if "sparse" not in encoded or "spatial" not in encoded:
                raise UsageError("reconstruct(dict) needs its 'sparse' and 'spatial' entries")
            encoded, spatial = encoded["sparse"], encoded["spatial"]
        if spatial is None or spatial.ndim != 3 or spatial.shape[-1] != encoded.shape[1]:
            raise ValueError(
                f"reconstruct(sparse, spatial) expects sparse (B, r, d) and spatial (B, n, r), "
                f"got {tuple(encoded.shape)} and {spatial if spatial is None else spatial.shape}"
            )
        lowrank = (spatial.float() @ encoded.float()).to(self.dtype)  # stored fp16 features too
        out = self.decode(lowrank, grid)
        if "x_hat" in out:
            return {**out, "reconstruction": out["x_hat"].clamp(0, 1)}
        if self.tokenizer is None:
            raise ValueError(
                "the vq head predicts MaskGIT-VQGAN codes; turning them into pixels needs the "
                "tokenizer: load with vq_model='path/to/maskgit-vqgan-imagenet-f16-256.bin'"
            )
        tokens = out["logits"].argmax(dim=-1)
        reconstruction = self.tokenizer.decode(tokens, grid=grid)
        return {**out, "tokens": tokens, "reconstruction": reconstruction}

    def set_tokenizer(self, tokenizer: MaskGITVQGAN) -> None:
        """Attach the frozen VQ tokenizer (not part of STELLAR's checkpoint), checked by
        :func:`~stellar.models.vqgan.check_tokenizer`."""
        check_tokenizer(self.config, tokenizer)
        self.tokenizer = tokenizer.requires_grad_(False).eval()

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` (official key layout) and, where the folder
        has none, ``README.md``, a model card (architecture, how to load), so the folder can be
        pushed to the hub; a folder that holds a training run or another job's results is refused.

        The file holds the modules this model has: ``purpose="encode"`` the encoder side,
        ``"reconstruct"`` also the decoder, ``"pretrain"`` also the clustering heads (all).
        """
        if self.decoder is None:
            logger.warning("saving %s without a decoder (purpose=%r)", directory, self.purpose)
        # no lock left behind: the folder holds the model's files alone
        with output_folder(directory, "save_pretrained", "directory", keep_lock=False):
            return write_pretrained(self, directory)

    forward = encode  # model(images) is model.encode(images)


def _recorded_grid(grid: Tensor) -> tuple[int, int]:
    """The one (h, w) of an encode output's ``grid`` (B, 2) (or a single (2,) row)."""
    rows = grid.reshape(-1, 2)
    if rows.shape[0] == 0 or not bool((rows == rows[0]).all()):
        raise UsageError(
            f"the encoded images have different patch grids {rows.unique(dim=0).tolist()}: "
            "reconstruct each grid separately"
        )
    return int(rows[0, 0]), int(rows[0, 1])


def _square_grid(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise UsageError(
            f"{n} patches do not form a square grid: pass grid=(h, w), or reconstruct the dict "
            "that encode() returned (it records the grid)"
        )
    return side, side
