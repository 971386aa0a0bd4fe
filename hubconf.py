"""torch.hub entry points, one per registered model name (``stellar-b16`` -> ``stellar_b16``).

    model = torch.hub.load("<this repository or a checkout>", "stellar_b16")  # released weights
    model = torch.hub.load(checkout, "stellar_tiny", pretrained=False, source="local")

``pretrained=True`` loads the released weights as :func:`stellar.load_stellar` does (the
Hugging Face cache, else a download); ``pretrained=False`` builds the architecture with random
weights (:func:`stellar.create_stellar`). Other keyword arguments (``purpose``, ``vq_model``,
``device``) pass through.
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "safetensors", "huggingface_hub"]

# A checkout or torch.hub's copy of the repository needs no install: its src/ comes first.
_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from stellar import create_stellar, load_stellar  # noqa: E402
from stellar.models.registry import is_released, list_models  # noqa: E402


def _entry(name: str):
    released = is_released(name)

    def entry(pretrained: bool = released, purpose: str = "encode", **kwargs):
        if pretrained:
            return load_stellar(name, purpose=purpose, **kwargs)
        return create_stellar(name, purpose=purpose, **kwargs)

    entry.__name__ = entry.__qualname__ = name.replace("-", "_")
    weights = "released weights by default" if released else "no released weights"
    entry.__doc__ = (
        f"STELLAR {name!r} ({weights}); pretrained=False gives random weights. "
        "Keyword arguments go to load_stellar / create_stellar."
    )
    return entry


for _name in list_models():
    globals()[_name.replace("-", "_")] = _entry(_name)
del _name
