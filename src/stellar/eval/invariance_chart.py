"""The figure of ``stellar eval invariance``: distances per model and the equivariance shares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from stellar.checkpoint.io import atomic_write

__all__ = ["draw_invariance_chart"]

_COLOURS = [(52, 101, 164), (245, 121, 0), (115, 210, 22), (204, 0, 0), (117, 80, 123)]
_SHARE_COLOURS = {
    "l_share": (52, 101, 164),
    "s_share": (245, 121, 0),
    "cross_share": (160, 160, 160),
}


def draw_invariance_chart(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bar chart of the invariance distances per model, plus stacked equivariance shares.

    Args:
        rows: ``{"model": name, "distances": {...}, "equivariance": {...}}`` per model, as
            :func:`run_invariance` returns them (plus the name).
        path: PNG file to write.
    """
    font = ImageFont.load_default()
    # the representations in the order the rows list them (run_invariance: DISTANCES order)
    order = list(dict.fromkeys(n for r in rows for n in (r["distances"] or {})))
    names = [n for n in order if any((r["distances"] or {}).get(n) for r in rows)]
    bar_w, gap, margin, plot_h = 48, 26, 60, 220
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([int(probe.textlength(n, font=font)) for n in names] + [0])
    group_w = max(bar_w * len(rows), label_w) + gap
    eq = [(r["model"], t, s) for r in rows for t, s in (r.get("equivariance") or {}).items()]
    eq_h = 30 + 26 * len(eq) if eq else 0
    width = max(margin * 2 + group_w * max(len(names), 1), 520)
    height = 40 + plot_h + 50 + 18 * len(rows) + eq_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text(
        (margin, 8),
        "cosine distance crop vs original (lower = more invariant)",
        fill="black",
        font=font,
    )
    values = [(r["distances"] or {}).get(n, None) for r in rows for n in names]
    top = max([v["mean"] for v in values if v] + [1e-3]) * 1.15
    y0 = 40 + plot_h
    draw.line([(margin, 40), (margin, y0), (width - margin // 2, y0)], fill="black")
    draw.text((4, 36), f"{top:.3g}", fill="black", font=font)
    draw.text((4, y0 - 8), "0", fill="black", font=font)
    for g, name in enumerate(names):
        x = margin + gap // 2 + g * group_w
        for m, row in enumerate(rows):
            v = (row["distances"] or {}).get(name)
            if not v:
                continue
            hgt = int(round(plot_h * v["mean"] / top))
            colour = _COLOURS[m % len(_COLOURS)]
            draw.rectangle([x + m * bar_w, y0 - hgt, x + (m + 1) * bar_w - 3, y0], fill=colour)
            draw.text((x + m * bar_w, y0 - hgt - 12), f"{v['mean']:.2g}", fill="black", font=font)
        draw.text((x, y0 + 6), name, fill="black", font=font)
    y = y0 + 28
    for m, row in enumerate(rows):
        draw.rectangle([margin, y + 2, margin + 10, y + 12], fill=_COLOURS[m % len(_COLOURS)])
        draw.text((margin + 16, y), str(row["model"]), fill="black", font=font)
        y += 18
    if eq:
        y += 12
        draw.text(
            (margin, y),
            "equivariance partition of dZ: L (blue) / S (orange) / cross (grey)",
            fill="black",
            font=font,
        )
        y += 18
        bar_len = width - 2 * margin - 160
        for model_name, t, shares in eq:
            x = margin + 160
            draw.text((margin, y + 4), f"{str(model_name)[:18]} {t}", fill="black", font=font)
            for key, colour in _SHARE_COLOURS.items():
                share = shares.get(key)
                if share is None:
                    continue
                seg = int(round(bar_len * share))
                draw.rectangle([x, y, x + seg, y + 18], fill=colour)
                x += seg
            y += 26
    return atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))
