"""Labelled figures drawn with matplotlib, returned as PNG bytes (the caller writes them).

matplotlib is imported inside each function, with its non-interactive Agg backend, so
that importing this module costs nothing and no display is ever needed.
"""

from __future__ import annotations

import io
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)  # constrained layout: one draw, not two
    _pyplot().close(fig)
    return buf.getvalue()


def training_curves(history: list[dict[str, Any]], batch_size: int, title: str = "") -> bytes:
    """Train and test bits/dim against images seen, one point per epoch.

    Records without an `images` count (written before it existed) use step x batch size.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100, layout="constrained")
    images = [r.get("images", r.get("step", 0) * batch_size) for r in history]
    for key, label, marker in (("train_bpd", "train", "o"), ("test_bpd", "test", "s")):
        values = [r.get(key) for r in history]
        points = [(i, v) for i, v in zip(images, values) if isinstance(v, float | int)]
        if points:
            ax.plot(*zip(*points), marker=marker, label=label)
    ax.set_xlabel("images seen")
    ax.set_ylabel("bits / dim")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _as_rgb(image) -> Any:
    """uint8 (C, H, W) tensor -> (H, W, 3) array for imshow (grey repeated)."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    return array.repeat(3, axis=2) if array.shape[2] == 1 else array


def image_panel(
    rows: list[list[Any]],
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    title: str = "",
    cell_inches: float = 1.3,
) -> bytes:
    """A grid of uint8 images (C, H, W) with row and column labels and a title."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(cell_inches * n_cols + 0.8, cell_inches * n_rows + 0.6),
        dpi=100,
        squeeze=False,
        layout="constrained",
    )
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(_as_rgb(row[c]), interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0 and col_labels and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0 and row_labels and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def receptive_fields(
    fields: Any,
    positions: list[tuple[int, int]],
    levels: list[int],
    title: str = "",
    cell_inches: float = 1.6,
) -> bytes:
    """One row per RG level of receptive fields (L, L), each scaled to its own maximum,
    the latent's position marked, with a shared colour bar."""
    plt = _pyplot()
    chosen = sorted(set(levels))
    per_row = max(levels.count(h) for h in chosen)
    fig, axes = plt.subplots(
        len(chosen), per_row,
        figsize=(cell_inches * per_row + 1.2, cell_inches * len(chosen) + 0.6),
        dpi=100, squeeze=False, layout="constrained",
    )  # fmt: skip
    image = None
    for r, h in enumerate(chosen):
        cells = [k for k, level in enumerate(levels) if level == h]
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            rf = fields[cells[c]].detach().cpu().double()
            peak = float(rf.max())
            image = ax.imshow(
                (rf / peak if peak > 0 else rf).numpy(), cmap="inferno", vmin=0, vmax=1
            )
            i, j = positions[cells[c]]
            ax.plot([j], [i], marker="+", color="cyan", markersize=6)
            ax.set_title(f"latent ({i},{j})", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"level {h}", fontsize=9)
    fig.suptitle(title or "receptive fields E|dx/dz| by RG level", fontsize=10)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
        bar.set_label("RF / its maximum", fontsize=8)
    return _png(fig)


def probe_chart(rows: list[dict[str, Any]], title: str = "") -> bytes:
    """Bars of test R^2 per latent group (levels, then all), one bar per target."""
    plt = _pyplot()
    groups = list(dict.fromkeys(r["level"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 2.5, 3.6), dpi=100, layout="constrained")
    width = 0.8 / len(targets)
    for t, target in enumerate(targets):
        values = {r["level"]: r["r2_test"] for r in rows if r["target"] == target}
        xs = [g + (t - (len(targets) - 1) / 2) * width for g in range(len(groups))]
        heights = [values.get(g) if values.get(g) is not None else 0.0 for g in groups]
        ax.bar(xs, heights, width=width, label=target)
    ax.set_xticks(range(len(groups)), [f"level {g}" if g != "all" else "all" for g in groups])
    ax.set_ylabel("test R²")
    ax.set_ylim(min(0.0, *(r["r2_test"] or 0.0 for r in rows)), 1.0)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "linear probe: where each factor lives", fontsize=10)
    return _png(fig)
