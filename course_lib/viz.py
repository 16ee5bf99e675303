"""Pictures of masked text: a noising explorer and a denoising player (notebooks 04 and 06).

Each interactive view (ipywidgets: a slider, and Play for the player) carries a picture of its
first frame for where widgets cannot run (a notebook opened untrusted, GitHub, exported HTML),
and comes with a static matplotlib figure of the whole story, drawn by default.

Text is drawn on a character grid, in the widgets and the figures alike: a masked position is
a grey cell, a token that the last step revealed is highlighted, every other character is
printed as it is (a newline as \u21b5). Where the clean text is known (noising, notebook 04)
its own lines set the rows, so code keeps its indentation; where it is not (denoising) the
rows are a fixed `width` of positions. Either way nothing moves as tokens are revealed."""

from __future__ import annotations

import base64
import html
import inspect
import io
import textwrap
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch

from course_lib.data import CharTokenizer

MASK_COLOR = "#b0b0b0"
NEW_COLOR = "#ffd27f"


def _grid(
    n_positions: int, width: int, lines: Sequence[str] | None = None
) -> list[tuple[int, int]]:
    """(row, column) of each position.

    Without `lines`: a fixed grid of `width` columns. With `lines` (the characters of the
    clean text, one per position), a new row after each newline, and after `width` columns
    of a longer line. Either way the layout never depends on what is masked, so a masked
    newline does not move the text around and the panels of a trajectory line up.
    """
    if lines is None:
        return [(pos // width, pos % width) for pos in range(n_positions)]
    cells, row, col = [], 0, 0
    for ch in lines:
        if col == width:
            row, col = row + 1, 0
        cells.append((row, col))
        row, col = (row + 1, 0) if ch == "\n" else (row, col + 1)
    return cells


def _n_rows(cells: list[tuple[int, int]]) -> int:
    return max((row for row, _ in cells), default=0) + 1


def _figure_size(n_rows: int, panels: int = 1) -> tuple[float, float]:
    """Inches for `panels` grids of `n_rows` rows each (plus a title row)."""
    return 9, 0.22 * (n_rows + 2) * panels


def draw_tokens(
    ax: plt.Axes,
    ids: torch.Tensor | Sequence[int],
    tokenizer: CharTokenizer | None = None,
    *,
    previous: torch.Tensor | Sequence[int] | None = None,
    width: int = 64,
    title: str | None = None,
    lines: Sequence[str] | None = None,
) -> None:
    """Draw one sequence of ids on `ax` as a character grid; masked cells grey.

    With `previous` (the same sequence one step earlier), positions masked there and not here
    are highlighted: what this step revealed. With `lines` (the clean text), rows follow its
    lines (`_grid`).
    """
    tokenizer = tokenizer or CharTokenizer()
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    prev = previous.tolist() if isinstance(previous, torch.Tensor) else previous
    cells = _grid(len(ids), width, lines)
    n_rows = _n_rows(cells)
    for pos, ((row, col), i) in enumerate(zip(cells, ids, strict=True)):
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


_SHOWN = {"\n": "\u21b5", "\t": "\u2192", " ": "\u00a0"}  # newline, tab, space on the grid


def _html(
    ids: Sequence[int],
    tokenizer: CharTokenizer,
    previous: Sequence[int] | None = None,
    *,
    width: int = 64,
    lines: Sequence[str] | None = None,
) -> str:
    """The widgets' view of one sequence: the static figures' grid, as HTML.

    One cell per position, placed where `_grid` puts it, so nothing moves when a masked
    newline is revealed. A masked cell is a grey box of its own (a gap separates neighbours,
    so a run of masks never merges into one bar); a cell this step revealed is highlighted.
    """
    cells = []
    for pos, (i, (row, col)) in enumerate(zip(ids, _grid(len(ids), width, lines), strict=True)):
        place = f"grid-row:{row + 1};grid-column:{col + 1}"
        if i == tokenizer.mask_id:
            cells.append(f'<span title="masked" style="{place};background:{MASK_COLOR}"></span>')
            continue
        ch = tokenizer.chars[i]
        style = place + (";color:#999" if ch in "\n\t" else "")
        if previous is not None and previous[pos] == tokenizer.mask_id:
            style += f";background:{NEW_COLOR}"
        cells.append(f'<span style="{style}">{html.escape(_SHOWN.get(ch, ch))}</span>')
    return (
        f'<div style="display:grid; grid-template-columns:repeat({width}, 1.2ch); '
        "grid-auto-rows:1.45em; gap:2px; font-family:monospace; font-size:12px; "
        'line-height:1.45em; text-align:center">' + "".join(cells) + "</div>"
    )


def plot_noising(
    x0: torch.Tensor,
    corrupt: Callable[[torch.Tensor, float], torch.Tensor],
    ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    tokenizer: CharTokenizer | None = None,
    width: int = 64,
) -> plt.Figure:
    """Static figure: the text `x0` (L,) corrupted at each time in `ts`, one panel per t.

    The rows follow the lines of `x0`, so code keeps its indentation."""
    tokenizer = tokenizer or CharTokenizer()
    lines = _clean_lines(x0, tokenizer)
    n_rows = _n_rows(_grid(x0.numel(), width, lines))
    fig, axes = plt.subplots(len(ts), 1, figsize=_figure_size(n_rows, len(ts)), dpi=90)
    for ax, t in zip(axes if len(ts) > 1 else [axes], ts, strict=True):
        xt = corrupt(x0, t)
        frac = (xt == tokenizer.mask_id).float().mean().item()
        draw_tokens(
            ax,
            xt,
            tokenizer,
            width=width,
            title=f"t = {t:.2f}: {frac:.0%} of tokens masked",
            lines=lines,
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
        figsize=_figure_size(_n_rows(_grid(trajectory[0].numel(), width)), len(picks)),
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


def _png(fig: plt.Figure) -> str:
    """A figure as base64 PNG text (what a notebook stores), closing the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class WidgetWithPicture:
    """Displays `widget`, with a picture of its first frame for where widgets cannot run.

    JupyterLab draws the widget when it can; a notebook opened untrusted (a fresh clone),
    GitHub and exported HTML show the picture instead of the widget's raw text.
    """

    def __init__(self, widget, picture: plt.Figure, description: str) -> None:
        self.widget, self.png, self.description = widget, _png(picture), description

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["image/png"] = self.png
        bundle["text/plain"] = self.description
        return bundle


def _clean_lines(x0: torch.Tensor, tokenizer: CharTokenizer) -> list[str]:
    """The characters of a clean sequence, which set the rows of its pictures."""
    return [tokenizer.chars[i] for i in x0.tolist()]


def _frame(
    ids: torch.Tensor,
    tokenizer: CharTokenizer,
    title: str,
    width: int,
    lines: Sequence[str] | None = None,
) -> plt.Figure:
    n_rows = _n_rows(_grid(ids.numel(), width, lines))
    fig, ax = plt.subplots(figsize=_figure_size(n_rows), dpi=90)
    draw_tokens(ax, ids, tokenizer, width=width, title=title, lines=lines)
    fig.tight_layout()
    return fig


def _masked_caption(ids: torch.Tensor, tokenizer: CharTokenizer) -> str:
    masked = int((ids == tokenizer.mask_id).sum())
    return f"{masked} of {ids.numel()} positions masked"


def noising_explorer(
    x0: torch.Tensor,
    corrupt: Callable[[torch.Tensor, float], torch.Tensor],
    *,
    tokenizer: CharTokenizer | None = None,
    static: bool = True,
    width: int = 64,
) -> None:
    """A slider over t in [0, 1] showing `corrupt(x0, t)`; plus the static figure if `static`."""
    tokenizer = tokenizer or CharTokenizer()
    lines = _clean_lines(x0, tokenizer)
    widgets, display = _widgets()
    if widgets is not None:
        out, caption = widgets.HTML(), widgets.Label()
        slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="t")
        first = corrupt(x0, slider.value)

        def update(change=None, xt=None):
            xt = corrupt(x0, slider.value) if xt is None else xt
            caption.value = f"t = {slider.value:.2f}: {_masked_caption(xt, tokenizer)}"
            out.value = _html(xt.tolist(), tokenizer, width=width, lines=lines)

        slider.observe(update, names="value")
        update(xt=first)
        picture = _frame(first, tokenizer, caption.value, width, lines)
        display(
            WidgetWithPicture(
                widgets.VBox([slider, caption, out]),
                picture,
                "noising explorer: a slider over t (run the cell in JupyterLab to use it)",
            )
        )
    if static or widgets is None:
        plot_noising(x0, corrupt, tokenizer=tokenizer, width=width)
        plt.show()


def denoising_player(
    trajectory: Sequence[torch.Tensor],
    *,
    tokenizer: CharTokenizer | None = None,
    static: bool = True,
    width: int = 64,
    interval_ms: int = 250,
) -> None:
    """Play, Pause and a step slider over a recorded trajectory (the masked count beside it);
    plus the static figure if `static`."""
    tokenizer = tokenizer or CharTokenizer()
    if len(trajectory) == 0:
        raise ValueError("the trajectory is empty: sample with record=True")
    widgets, display = _widgets()
    if widgets is not None:
        last = len(trajectory) - 1
        out, caption = widgets.HTML(), widgets.Label()
        slider = widgets.IntSlider(value=0, min=0, max=last, description="step")
        play = widgets.Play(value=0, min=0, max=last, interval=interval_ms, description="play")
        widgets.jslink((play, "value"), (slider, "value"))

        def update(change=None):
            k = slider.value
            prev = trajectory[k - 1].tolist() if k > 0 else None
            caption.value = f"step {k}/{last}: {_masked_caption(trajectory[k], tokenizer)}"
            out.value = _html(trajectory[k].tolist(), tokenizer, prev, width=width)

        slider.observe(update, names="value")
        update()
        picture = _frame(trajectory[0], tokenizer, caption.value, width)
        display(
            WidgetWithPicture(
                widgets.VBox([widgets.HBox([play, slider]), caption, out]),
                picture,
                "denoising player: Play and a step slider (run the cell in JupyterLab to use it)",
            )
        )
    if static or widgets is None:
        plot_trajectory(trajectory, tokenizer=tokenizer, width=width)
        plt.show()


# -- code in the notebooks -------------------------------------------------------------------

SHOW_LINES_MAX = 40  # an excerpt, not a listing: longer ones are refused


def show_lines(fn: Callable, first: str, last: str) -> None:
    """Print the lines of `fn`'s source from the first containing `first` to the next
    containing `last`, dedented: a short, named excerpt of library code for a notebook.

    Raises ValueError when either line is missing (the library changed: update the notebook's
    anchors) or when the excerpt is longer than SHOW_LINES_MAX lines.
    """
    lines = inspect.getsource(fn).splitlines()
    name = getattr(fn, "__qualname__", repr(fn))
    start = next((i for i, line in enumerate(lines) if first in line), None)
    if start is None:
        raise ValueError(f"{name} has no line containing {first!r}")
    stop = next((i for i, line in enumerate(lines) if last in line and i >= start), None)
    if stop is None:
        raise ValueError(f"{name} has no line containing {last!r} after {first!r}")
    if stop - start + 1 > SHOW_LINES_MAX:
        raise ValueError(
            f"{stop - start + 1} lines of {name}: show an excerpt of at most {SHOW_LINES_MAX}"
        )
    print(textwrap.dedent("\n".join(lines[start : stop + 1])))
