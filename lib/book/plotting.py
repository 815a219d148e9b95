"""The house plotting style, used by every figure in the book."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

FAMILY_PALETTE = "tab10"  # categorical: optimizers, methods, languages
ORDERED_PALETTE = "viridis"  # ordered groups: frequency tiers, sparsity levels


def use_style() -> None:
    """Apply the book's style: seaborn ticks, readable fonts, light grid, tight layout."""
    sns.set_theme(context="notebook", style="ticks", palette=FAMILY_PALETTE, font_scale=0.95)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "figure.figsize": (6.4, 4.0),
            "figure.constrained_layout.use": True,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "lines.linewidth": 1.6,
        }
    )


def palette(n: int, name: str = ORDERED_PALETTE) -> list[tuple[float, float, float]]:
    """n ordered colours, from the first (e.g. most frequent) to the last group."""
    return sns.color_palette(name, n)


def family_colors(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed categorical colour per name, so a method keeps its colour across figures
    (distinct colours beyond ten names, where the categorical palette would repeat)."""
    palette_name = FAMILY_PALETTE if len(names) <= 10 else "husl"
    colours = sns.color_palette(palette_name, max(len(names), 1))
    return dict(zip(names, colours))


def subplots(nrows: int = 1, ncols: int = 1, width: float = 3.4, height: float = 2.8, **kw):
    """Figure and axes in the house style; ``width``/``height`` are per panel, in inches."""
    use_style()
    kw.setdefault("squeeze", False)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kw)
    return fig, axes
