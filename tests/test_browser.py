"""The notebooks as a learner meets them: JupyterLab in a real Chromium, driven by Playwright.

A JupyterLab server is started on 127.0.0.1 over copies of the notebooks (fast mode, a data
folder of its own, so nothing here touches the repository's runs) and stopped afterwards. The
tests press what a learner presses: Run All, the sliders, Play, the stop button during a
training run. Screenshots go to tests/screenshots/ (git-ignored) for a person to look at.

Skipped with a reason where Playwright or a Chromium is missing. `.ci/run` installs both:
Debian's `chromium` and the `playwright` package, which is pointed at the system browser
(nothing is downloaded at test time).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from course_lib import env

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

NOTEBOOKS = env.REPO_ROOT / "notebooks"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)
if CHROMIUM is None:
    pytest.skip("no Chromium on this machine (apt-get install chromium)", allow_module_level=True)

ERROR = '[data-mime-type="application/vnd.jupyter.error"]'
RUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_notebook(name: str, folder: Path, replace: tuple[str, str] | None = None) -> str:
    """Copy notebooks/`name` into `folder`, optionally replacing one line of source."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    if replace is not None:
        old, new = replace
        (cell,) = [c for c in notebook.cells if old in c.source]
        cell.source = cell.source.replace(old, new)
    nbformat.write(notebook, folder / name)
    return name


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a scratch folder: (base URL, token, folder)."""
    root = tmp_path_factory.mktemp("lab")
    data = root / "data"
    data.mkdir()
    for shared in ("checkpoints", "results"):  # read-only use; the runs go to data/runs here
        (data / shared).symlink_to(env.DATA_DIR / shared, target_is_directory=True)
    settings = {  # every cell rendered (JupyterLab draws only the visible ones by default)
        "notebook-extension/tracker": '{"windowingMode": "none"}',
    }
    for plugin, value in settings.items():
        path = root / ".settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    port, token = _free_port(), secrets.token_hex(16)
    server_env = dict(
        os.environ,
        COURSE_FAST="1",
        COURSE_DATA_DIR=str(data),
        JUPYTER_CONFIG_DIR=str(root / ".jupyter"),
        JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={root / '.workspaces'}",
        f"--LabApp.user_settings_dir={root / '.settings'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, env=server_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield base, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def open_notebook(lab, browser):
    """open_notebook(name) -> a page with notebook `name` of the lab's folder, kernel ready."""
    base, token, _ = lab
    pages = []

    def open_(name: str):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        pages.append(page)
        # a workspace of its own, reset: no notebook of an earlier test is reopened
        workspace = Path(name).stem
        page.goto(f"{base}/lab/workspaces/{workspace}/tree/{name}?token={token}&reset")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        # On a server's first page its kernels can still be loading when the notebook asks for
        # one: JupyterLab then offers the notebook's own kernel in a dialog. Take it.
        try:
            dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
            dialog.wait_for(timeout=5_000)
            assert "Python 3 (ipykernel)" in dialog.inner_text()
            dialog.get_by_role("button", name="Select").click()
        except playwright.TimeoutError:
            pass
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000
        )
        return page

    yield open_
    for page in pages:
        page.close()
    _shut_down_kernels(base, token)


def _shut_down_kernels(base: str, token: str) -> None:
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{base}/api/kernels", headers=headers)
    ) as r:
        kernels = json.load(r)
    for kernel in kernels:
        request = urllib.request.Request(
            f"{base}/api/kernels/{kernel['id']}", method="DELETE", headers=headers
        )
        urllib.request.urlopen(request).close()


def _menu(page, menu: str, item: str) -> None:
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def _run_all(page) -> None:
    """Run > Run All Cells, once the notebook takes it (a click while it loads can be lost)."""
    for _ in range(3):
        _menu(page, "Run", "Run All Cells")
        try:
            page.wait_for_selector(
                ".jp-CodeCell .jp-InputPrompt:text-matches('\\[(\\*|\\d+)\\]')",
                state="attached",
                timeout=20_000,
            )
            return
        except playwright.Error:
            continue
    pytest.fail("Run All Cells did not start the notebook")


def _wait_until_done(page, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Until every code cell has run: no prompt reads [*] or [ ]."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        if prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts):
            return
        time.sleep(1)
    pytest.fail(f"the notebook did not finish within {timeout_s} s: prompts {prompts}")


def _settles_clean(page, timeout_s: float = 15) -> bool:
    """Whether the notebook's tab ends up unmarked once opening has settled (JupyterLab marks
    it for a moment while loading; a rewritten kernelspec would leave the mark on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1)
        if page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0:
            return True
    return False


def _screenshot(page, name: str, locator=None) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    (locator or page).screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_notebook_04_opens_clean_runs_and_its_slider_moves_the_masks(lab, open_notebook):
    name = _copy_notebook("04_forward_process.ipynb", lab[2])
    page = open_notebook(name)
    assert _settles_clean(page), "the notebook is marked unsaved once it has opened"
    # unrun and untrusted (a fresh clone): the saved explorer shows its picture, not its text
    saved = page.locator(".jp-CodeCell").filter(has_text="viz.noising_explorer(").first
    assert saved.locator(".jp-OutputArea img").count() >= 1
    assert "Box(" not in saved.locator(".jp-OutputArea").inner_text()
    _run_all(page)
    _wait_until_done(page)
    assert page.locator(ERROR).count() == 0
    explorer = page.locator(".widget-vbox").filter(has=page.locator(".widget-slider")).first
    explorer.scroll_into_view_if_needed()
    caption = explorer.locator(".widget-label", has_text="positions masked")
    grid = explorer.locator(".widget-html-content").first
    before = (caption.inner_text(), grid.inner_html())
    assert re.search(r"t = 0\.50: \d+ of \d+ positions masked", before[0])
    _screenshot(page, "04-explorer-before", explorer)
    explorer.locator(".noUi-handle").first.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    playwright.expect(caption).to_have_text(re.compile(r"^t = 0\.75: \d+ of"), timeout=20_000)
    assert grid.inner_html() != before[1]
    _screenshot(page, "04-explorer-after", explorer)


def test_notebook_06_runs_and_its_player_plays(lab, open_notebook):
    name = _copy_notebook("06_sampling.ipynb", lab[2])
    page = open_notebook(name)
    _run_all(page)
    _wait_until_done(page)
    assert page.locator(ERROR).count() == 0
    player = page.locator(".widget-vbox").filter(has=page.locator(".widget-play")).first
    player.wait_for(timeout=60_000)
    player.scroll_into_view_if_needed()
    caption = player.locator(".widget-label", has_text="positions masked")
    start = caption.inner_text()
    assert re.match(r"step 0/(\d+): (\d+) of \2 positions masked", start), start
    _screenshot(page, "06-player-start", player)
    player.locator(".widget-play button").first.click()  # Play
    page.wait_for_function(
        "([el, text]) => el.innerText !== text", arg=[caption.element_handle(), start]
    )
    time.sleep(1.0)
    moved = re.match(r"step (\d+)/(\d+): (\d+) of", caption.inner_text())
    assert moved and int(moved[1]) > 0
    _screenshot(page, "06-player-playing", player)


def test_stopping_notebook_03s_training_before_its_first_evaluation_goes_on(lab, open_notebook):
    """The learner presses stop during training; the notebook carries on with that model.

    In fast mode the tiny run finishes before anyone could press stop, so this copy trains
    the learner's default preset, whose first evaluation comes after 100 steps.
    """
    name = _copy_notebook(
        "03_autoregressive_baseline.ipynb",
        lab[2],
        replace=(
            'presets.get_preset("ar-tiny" if env.FAST else "ar-small")',
            'presets.get_preset("ar-small")',
        ),
    )
    page = open_notebook(name)
    _run_all(page)
    training = page.locator(".jp-CodeCell").filter(has_text="result = train.train(").first
    bar = training.locator(".widget-html-content").last
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:  # a few steps in, well before step 100
        steps = re.search(r"(\d+)/3000", bar.inner_text() if bar.count() else "")
        if steps and int(steps[1]) >= 3:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the training cell did not start")
    page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").click()
    # Run All goes on: the training cell ends, and so does the one after it (the plot of the
    # run's history), each with an execution count and no error
    code_cells = page.locator(".jp-CodeCell")
    index = next(
        i
        for i in range(code_cells.count())
        if "result = train.train(" in code_cells.nth(i).inner_text()
    )
    for cell in (code_cells.nth(index), code_cells.nth(index + 1)):
        playwright.expect(cell.locator(".jp-InputPrompt")).to_have_text(
            re.compile(r"\[\d+\]:"), timeout=RUN_TIMEOUT_S * 1000
        )
        assert cell.locator(ERROR).count() == 0, cell.inner_text()
    text = training.locator(".jp-OutputArea").inner_text()
    stopped = re.search(r"interrupted at step (\d+)", text)
    assert stopped and int(stopped[1]) < 100, text  # before the first evaluation
    assert "validation loss at the last evaluation" in text
    training.scroll_into_view_if_needed()
    _screenshot(page, "03-interrupted-training", training)
