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


def test_the_widgets_grid_has_one_cell_per_position_whatever_is_masked():
    x0 = torch.tensor(TOK.encode("a\nb\n" * 8))
    for xt in (x0, _masked(x0, 2), torch.full_like(x0, TOK.mask_id)):
        page = viz._html(xt.tolist(), TOK, width=8)
        assert page.count("<span") == x0.numel()  # newlines are cells, never line breaks
        assert page.count('title="masked"') == (xt == TOK.mask_id).sum().item()
        assert "repeat(8," in page and "\n" not in page


def test_widgets_carry_a_picture_and_the_player_has_play(monkeypatch):
    ipywidgets = pytest.importorskip("ipywidgets")
    shown = []
    monkeypatch.setattr(viz, "_widgets", lambda: (ipywidgets, shown.append))
    x0 = torch.tensor(TOK.encode("x = 1\n" * 4))
    viz.noising_explorer(x0, lambda x, t: _masked(x, 2), static=False)
    viz.denoising_player([_masked(x0, 1), _masked(x0, 2), x0], static=False)
    explorer, player = shown
    for view in shown:
        bundle = view._repr_mimebundle_()
        assert {"application/vnd.jupyter.widget-view+json", "image/png", "text/plain"} <= set(
            bundle
        )
        assert "VBox" not in bundle["text/plain"]  # a sentence, not the widget's repr
    plays = [w for w in player.widget.children[0].children if isinstance(w, ipywidgets.Play)]
    sliders = [w for w in player.widget.children[0].children if isinstance(w, ipywidgets.IntSlider)]
    assert plays and sliders and plays[0].max == sliders[0].max == 2
    caption = player.widget.children[1]
    assert caption.value == f"step 0/2: {x0.numel()} of {x0.numel()} positions masked"
    sliders[0].value = 2  # what Play does in the browser, through the link
    assert caption.value == f"step 2/2: 0 of {x0.numel()} positions masked"
    assert "12 of 24 positions masked" in explorer.widget.children[1].value
    plt.close("all")


def test_noising_pictures_keep_the_code_s_own_lines_and_indentation():
    code = "def f(x):\n    return x + 1\n"
    lines = list(code)
    cells = viz._grid(len(code), 64, lines)
    assert cells[code.index("    return")] == (1, 0)  # the second line starts a row
    assert cells[code.index("return")] == (1, 4)  # and keeps its indentation
    assert viz._grid(10, 4, list("abcdefghij"))[4:6] == [(1, 0), (1, 1)]  # long lines wrap
    x0 = torch.tensor(TOK.encode(code))
    for xt in (x0, _masked(x0, 3), torch.full_like(x0, TOK.mask_id)):  # masks move nothing
        page = viz._html(xt.tolist(), TOK, width=64, lines=lines)
        assert "grid-row:2;grid-column:5" in page
    fig = viz.plot_noising(x0, lambda x, t: x, ts=(0.0,))
    texts = [t for t in fig.axes[0].texts if t.get_text() == "r"]
    assert texts and texts[0].get_position()[0] == pytest.approx(4.45)  # column 4: indented
    plt.close(fig)


def test_show_lines_prints_a_dedented_excerpt_and_refuses_what_is_not_one(capsys):
    from course_lib import sampling, viz

    viz.show_lines(sampling.confident_commit, "conf = position_confidence", "return commit")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("conf = position_confidence") and out[-1] == "return commit"
    with pytest.raises(ValueError, match="no line containing 'not there'"):
        viz.show_lines(sampling.confident_commit, "not there", "return commit")
    with pytest.raises(ValueError, match="after"):
        viz.show_lines(sampling.confident_commit, "return commit", "conf = position")
    with pytest.raises(ValueError, match="at most 40"):
        viz.show_lines(sampling.sample_block_diffusion, "def sample_block_diffusion", "return")
