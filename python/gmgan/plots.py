"""PNG figures: 2-D scatters with the true modes marked, image grids, nearest-neighbour rows."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _scatter(axes, samples: torch.Tensor, modes: torch.Tensor, title: str = "") -> None:
    samples, modes = samples.detach().cpu().numpy(), modes.detach().cpu().numpy()
    axes.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.35, color="tab:blue", linewidths=0)
    axes.scatter(modes[:, 0], modes[:, 1], s=30, marker="x", color="tab:red")
    span = float(abs(modes).max()) * 1.5 + 0.5
    axes.set_xlim(-span, span)
    axes.set_ylim(-span, span)
    axes.set_aspect("equal")
    axes.set_title(title, fontsize=8)
    axes.tick_params(labelsize=6)


def scatter_2d(samples: torch.Tensor, modes: torch.Tensor, path: str, title: str = "") -> str:
    figure, axes = plt.subplots(figsize=(4, 4))
    _scatter(axes, samples, modes, title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def scatter_grid(panels: list, modes: torch.Tensor, path: str, columns: int) -> str:
    """panels: list of (samples, title), laid out row by row."""
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    for index, cell in enumerate(axes.flat):
        if index < len(panels):
            _scatter(cell, panels[index][0], modes, panels[index][1])
        else:
            cell.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _tile(images: torch.Tensor, columns: int) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one (H', W', C) array in [0, 1] with 1-pixel borders."""
    images = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    count, channels, height, width = images.shape
    rows = math.ceil(count / columns)
    canvas = torch.ones(channels, rows * (height + 1) + 1, columns * (width + 1) + 1)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        canvas[:, top:top + height, left:left + width] = images[index]
    return canvas.permute(1, 2, 0)


def image_grid(images: torch.Tensor, path: str, columns: int = 10, title: str = "") -> str:
    canvas = _tile(images, columns)
    figure, axes = plt.subplots(figsize=(max(3, canvas.shape[1] / 12), max(3, canvas.shape[0] / 12)))
    canvas = canvas.numpy()
    axes.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", interpolation="nearest")
    axes.axis("off")
    axes.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
