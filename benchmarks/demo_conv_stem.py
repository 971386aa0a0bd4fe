"""``stellar demo`` with a conv-stem encoder: does a shape-friendly backbone make shape appear?

With labels, the demo's encoder learns the largest-object shape (43 % vs 19 % after 1920
steps) only when its linear patch embedding is replaced by a small conv stem
(``shape_supervised_reference.py --arch vit-conv-stem``). This runs the unchanged demo (same
recipe, seed, budget and evaluation; any ``stellar demo`` argument passes through) with every
encoder it builds, trained and random init alike, given that stem, to test whether the
backbone is what keeps the self-supervised shape probe at random init's level.

    python benchmarks/demo_conv_stem.py --out /tmp/exp/demo-stem --ablation
    python benchmarks/demo_conv_stem.py --out /tmp/exp/demo-stem-hue \\
        'augment.color={hue: 0.5, gray_p: 0.5}'
"""

from __future__ import annotations

import sys

from shape_supervised_reference import conv_patch_stem

from stellar.cli import main
from stellar.models.config import EncoderConfig
from stellar.models.networks import ViTEncoder

_linear_patch_init = ViTEncoder.__init__


def _conv_stem_init(self: ViTEncoder, cfg: EncoderConfig) -> None:
    # An experiment, not a model option: swap the stem in wherever the demo builds an encoder.
    _linear_patch_init(self, cfg)
    self.patch_embed = conv_patch_stem(cfg.patch_size, cfg.hidden_size)


if __name__ == "__main__":
    ViTEncoder.__init__ = _conv_stem_init
    sys.exit(main(["demo", *sys.argv[1:]]))
