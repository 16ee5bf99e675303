"""Pictures of masked text: a noising explorer and a denoising player (notebooks 04 and 06).

Each interactive view (an ipywidgets slider) comes with a static matplotlib figure of the same
content, drawn by default, so a notebook also reads well where widgets do not run: on GitHub,
in exported HTML, and under the test suite.

Text is drawn on a character grid: a masked position is a grey cell, a token that the last
step revealed is highlighted, every other character is printed as it is.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch

from course_lib.data import CharTokenizer

MASK_COLOR = "#b0b0b0"
NEW_COLOR = "#ffd27f"


def _grid(n_positions: int, width: int) -> list[tuple[int, int]]:
    """(row, column) of each position: a fixed grid of `width` columns.

    The layout depends on positions only, never on the tokens, so a masked newline does not
    move the text around and the panels of a trajectory line up.
    """
    return [(pos // width, pos % width) for pos in range(n_positions)]


def draw_tokens(
    ax: plt.Axes,
    ids: torch.Tensor | Sequence[int],
    tokenizer: CharTokenizer | None = None,
    *,
    previous: torch.Tensor | Sequence[int] | None = None,
    width: int = 64,
    title: str | None = None,
) -> None:
    """Draw one sequence of ids on `ax` as a character grid; masked cells grey.

    With `previous` (the same sequence one step earlier), positions masked there and not here
    are highlighted: what this step revealed.
    """
    tokenizer = tokenizer or CharTokenizer()
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    prev = previous.tolist() if isinstance(previous, torch.Tensor) else previous
    n_rows = max(1, -(-len(ids) // width))
    for pos, ((row, col), i) in enumerate(zip(_grid(len(ids), width), ids, strict=True)):
        y = n_rows - row - 1
        if i == tokenizer.mask_id:
            ax.add_patch(plt.Rectangle((col, y), 0.9, 0.9, color=MASK_COLOR, lw=0))
            continue
        if prev is not None and prev[pos] == tokenizer.mask_id:
            ax.add_patch(plt.Rectangle((col, y), 0.9, 0.9, color=NEW_COLOR, lw=0))
        ch = tokenizer.chars[i]
        shown = {"\n": "\u21b5", "\t": "\u2192", " ": ""}.get(ch, ch)
        if shown:
            ax.text(
                col + 0.45, y + 0.4, shown, ha="center", va="center", family="monospace", fontsize=7
            )
    ax.set_xlim(0, width)
    ax.set_ylim(0, n_rows)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9, loc="left")


def _html(
    ids: Sequence[int], tokenizer: CharTokenizer, previous: Sequence[int] | None = None
) -> str:
    parts = []
    for pos, i in enumerate(ids):
        if i == tokenizer.mask_id:
            parts.append(f'<span style="background:{MASK_COLOR}">&nbsp;</span>')
            continue
        text = html.escape(tokenizer.chars[i])
        if previous is not None and previous[pos] == tokenizer.mask_id:
            text = f'<span style="background:{NEW_COLOR}">{text}</span>'
        parts.append(text)
    return '<pre style="line-height:1.3; font-size:12px">' + "".join(parts) + "</pre>"


def plot_noising(
    x0: torch.Tensor,
    corrupt: Callable[[torch.Tensor, float], torch.Tensor],
    ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    tokenizer: CharTokenizer | None = None,
    width: int = 64,
) -> plt.Figure:
    """Static figure: the text `x0` (L,) corrupted at each time in `ts`, one panel per t."""
    tokenizer = tokenizer or CharTokenizer()
    fig, axes = plt.subplots(
        len(ts), 1, figsize=(9, 0.22 * (-(-x0.numel() // width) + 2) * len(ts)), dpi=90
    )
    for ax, t in zip(axes if len(ts) > 1 else [axes], ts, strict=True):
        xt = corrupt(x0, t)
        frac = (xt == tokenizer.mask_id).float().mean().item()
        draw_tokens(
            ax, xt, tokenizer, width=width, title=f"t = {t:.2f}: {frac:.0%} of tokens masked"
        )
    fig.tight_layout()
    return fig


def plot_trajectory(
    trajectory: Sequence[torch.Tensor],
    *,
    tokenizer: CharTokenizer | None = None,
    n_panels: int = 6,
    width: int = 64,
) -> plt.Figure:
    """Static figure: `n_panels` snapshots of a denoising trajectory (a list of (L,) ids)."""
    tokenizer = tokenizer or CharTokenizer()
    if len(trajectory) == 0:
        raise ValueError("the trajectory is empty: sample with record=True")
    n_panels = min(n_panels, len(trajectory))
    picks = sorted(
        {round(k * (len(trajectory) - 1) / max(1, n_panels - 1)) for k in range(n_panels)}
    )
    fig, axes = plt.subplots(
        len(picks),
        1,
        figsize=(9, 0.22 * (-(-trajectory[0].numel() // width) + 2) * len(picks)),
        dpi=90,
    )
    axes = axes if len(picks) > 1 else [axes]
    for ax, k in zip(axes, picks, strict=True):
        masked = (trajectory[k] == tokenizer.mask_id).sum().item()
        previous = trajectory[k - 1] if k > 0 else None
        draw_tokens(
            ax,
            trajectory[k],
            tokenizer,
            previous=previous,
            width=width,
            title=f"step {k}/{len(trajectory) - 1}: {masked} masked",
        )
    fig.tight_layout()
    return fig


def _widgets():
    try:
        import ipywidgets
        from IPython.display import display
    except ImportError:
        return None, None
    return ipywidgets, display


def noising_explorer(
    x0: torch.Tensor,
    corrupt: Callable[[torch.Tensor, float], torch.Tensor],
    *,
    tokenizer: CharTokenizer | None = None,
    static: bool = True,
) -> None:
    """A slider over t in [0, 1] showing `corrupt(x0, t)`; plus the static figure if `static`."""
    tokenizer = tokenizer or CharTokenizer()
    widgets, display = _widgets()
    if widgets is not None:
        out = widgets.HTML()
        slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="t")

        def update(change=None):
            out.value = _html(corrupt(x0, slider.value).tolist(), tokenizer)

        slider.observe(update, names="value")
        update()
        display(widgets.VBox([slider, out]))
    if static or widgets is None:
        plot_noising(x0, corrupt, tokenizer=tokenizer)
        plt.show()


def denoising_player(
    trajectory: Sequence[torch.Tensor],
    *,
    tokenizer: CharTokenizer | None = None,
    static: bool = True,
) -> None:
    """A step slider over a recorded trajectory; plus the static figure if `static`."""
    tokenizer = tokenizer or CharTokenizer()
    if len(trajectory) == 0:
        raise ValueError("the trajectory is empty: sample with record=True")
    widgets, display = _widgets()
    if widgets is not None:
        out = widgets.HTML()
        slider = widgets.IntSlider(value=0, min=0, max=len(trajectory) - 1, description="step")

        def update(change=None):
            k = slider.value
            prev = trajectory[k - 1].tolist() if k > 0 else None
            out.value = _html(trajectory[k].tolist(), tokenizer, prev)

        slider.observe(update, names="value")
        update()
        display(widgets.VBox([slider, out]))
    if static or widgets is None:
        plot_trajectory(trajectory, tokenizer=tokenizer)
        plt.show()
