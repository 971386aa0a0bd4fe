"""The model card (``README.md``) that ``save_pretrained`` writes beside the weights.

A saved folder is then a Hugging Face model repository as it is: ``hf upload ORG/NAME DIR``
publishes weights, config and a card that says what the model is and how to load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CARD_NAME = "README.md"


def _blocks(n: int) -> str:
    return f"{n} block{'s' if n != 1 else ''}"


def _architecture(config: Mapping[str, Any], decoder: bool) -> list[str]:
    enc, dec = config["encoder"], config["decoder"]
    if not decoder:
        dec_text = "none in this file (the encoder side only)"
    else:
        dec_text = (
            f"{_blocks(config['num_decoder_layers'])}, width {dec['hidden_size']}, "
            f"{config['decoder_head']} head"
        )
    rows = [
        ("encoder", f"ViT, width {enc['hidden_size']}, {_blocks(enc['num_hidden_layers'])}, "
         f"{enc['num_attention_heads']} heads, MLP {enc['intermediate_size']}"),
        ("input", f"{enc['image_size']} px, patch {enc['patch_size']}"),
        ("concept tokens (r)", config["num_sparse_tokens"]),
        ("spatial temperature", config["spatial_temp"]),
        ("decoder", dec_text),
    ]  # fmt: skip
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def model_card(config: Mapping[str, Any], decoder: bool = True) -> str:
    """Markdown with Hugging Face front matter: the architecture (``config``, the model's
    ``StellarConfig.to_dict()``; ``decoder``: whether the file holds one) and how to load it."""
    lines = [
        "---",
        "library_name: stellar",
        "pipeline_tag: image-feature-extraction",
        "tags: [stellar, self-supervised, vision-transformer]",
        "---",
        "",
        "# STELLAR",
        "",
        "A STELLAR model (*Learning Sparse Visual Representations via Spatial-Semantic "
        'Factorization*, arXiv 2602.01905): a ViT whose r concept tokens (the "what") and '
        'localization matrix (the "where") rebuild the image through a light decoder.',
        "",
        "## Architecture",
        "",
        *_architecture(config, decoder),
        "",
    ]
    lines += [
        "## How to load",
        "",
        "With the `stellar` package installed (from a checkout: `pip install -e .`; it will be "
        "published as `stellar-ssl`), load it by this repository's id (downloaded through "
        "`huggingface_hub` and cached) or from a local copy:",
        "",
        "```python",
        "from stellar import load_stellar",
        "",
        'model = load_stellar("ORG/NAME")  # purpose="encode"'
        + ('; "reconstruct" adds the decoder' if decoder else ""),
        "out = model.encode(images)  # (B, 3, H, W) in [0, 1]: sparse, spatial, lowrank, ...",
        "```",
        "",
        "The weights use the official key layout (`model.safetensors`, with the configuration "
        "also stored in its metadata; `config.json` is the same configuration).",
        "",
    ]
    return "\n".join(lines)
