"""viz: the static figures render headless and show masked cells where the ids are masked."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import viz  # noqa: E402
from course_lib.data import CharTokenizer  # noqa: E402

TOK = CharTokenizer()


def _masked(x: torch.Tensor, every: int) -> torch.Tensor:
    out = x.clone()
    out[::every] = TOK.mask_id
    return out


def _grey_cells(ax) -> int:
    return sum(
        1
        for p in ax.patches
        if matplotlib.colors.to_hex(p.get_facecolor()) == matplotlib.colors.to_hex(viz.MASK_COLOR)
    )


def test_draw_tokens_marks_exactly_the_masked_positions():
    x0 = torch.tensor(TOK.encode("def f(x):\n    return x + 1\n" * 3))
    xt = _masked(x0, 4)
    fig, ax = plt.subplots()
    viz.draw_tokens(ax, xt, TOK, previous=_masked(x0, 2))
    assert _grey_cells(ax) == (xt == TOK.mask_id).sum().item()
    # positions masked before (every 2nd) but not now (every 4th) are highlighted as new
    new = sum(
        1
        for p in ax.patches
        if matplotlib.colors.to_hex(p.get_facecolor()) == matplotlib.colors.to_hex(viz.NEW_COLOR)
    )
    assert new == ((_masked(x0, 2) == TOK.mask_id) & (xt != TOK.mask_id)).sum().item()
    plt.close(fig)


def test_static_figures_render_one_panel_per_time_and_step():
    x0 = torch.tensor(TOK.encode("import os\nprint(os.getcwd())\n" * 4))

    def corrupt(x, t):
        keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) >= t
        return torch.where(keep, x, TOK.mask_id)

    fig = viz.plot_noising(x0, corrupt, ts=(0.0, 0.5, 1.0))
    assert len(fig.axes) == 3
    assert _grey_cells(fig.axes[0]) == 0 and _grey_cells(fig.axes[2]) == x0.numel()
    fig.canvas.draw()
    trajectory = [corrupt(x0, 1 - k / 10) for k in range(11)]
    fig = viz.plot_trajectory(trajectory, n_panels=4)
    assert len(fig.axes) == 4
    fig.canvas.draw()
    plt.close("all")


def test_player_and_explorer_run_without_a_notebook():
    x0 = torch.tensor(TOK.encode("x = 1\n"))
    viz.noising_explorer(x0, lambda x, t: x, static=True)
    viz.denoising_player([x0, x0], static=False)
    with pytest.raises(ValueError, match="empty"):
        viz.denoising_player([])
    plt.close("all")
