"""`python -m course_lib doctor`: is this machine ready for the course?

Each check says ok, warn (the course runs, with a caveat) or FAIL (fix it first), and what to
do. Paste the output into an issue when asking for help: it is the environment in one screen.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

from course_lib import checkpoints, data, env

REFERENCE_FINGERPRINT = "eba6fc0e7df5"  # pystdlib on the course's reference Python (3.11.7)


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):  # noqa: UP036 (pip may be bypassed; say it plainly)
        return Check("python", "FAIL", f"{version}: the course needs Python 3.10 or newer")
    return Check("python", "ok", version)


def _torch() -> Check:
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    if (major, minor) < (2, 2):
        return Check("torch", "FAIL", f"{torch.__version__}: upgrade to 2.2 or newer")
    return Check("torch", "ok", f"{torch.__version__} ({build})")


def _device() -> Check:
    try:
        device = env.get_device()
        x = torch.randn(64, 64, device=device)
        (x @ x).sum().item()
    except (ValueError, RuntimeError) as err:
        return Check("device", "FAIL", f"{err}; set COURSE_DEVICE=cpu")
    detail = str(device)
    if device.type == "cuda":
        detail += f" ({torch.cuda.get_device_name(device)})"
    elif torch.version.cuda and not torch.cuda.is_available():
        return Check("device", "warn", "cpu: this is a CUDA build of torch but no GPU is visible")
    return Check("device", "ok", detail)


def _precision() -> Check:
    dtype = env.autocast_dtype(env.get_device())
    if dtype is None:
        return Check("bf16 autocast", "ok", "off: float32 (no fast bfloat16 on this device)")
    return Check("bf16 autocast", "ok", "on: training and sampling use bfloat16 where it is faster")


def _package(module: str, purpose: str, required: bool = True) -> Check:
    try:
        imported = importlib.import_module(module)
    except ImportError:
        status = "FAIL" if required else "warn"
        return Check(module, status, f"not installed ({purpose}): pip install -r requirements.txt")
    return Check(module, "ok", getattr(imported, "__version__", "installed"))


WIDGET_EXTENSION = "@jupyter-widgets/jupyterlab-manager"


def _widget_extension() -> Check:
    """Is JupyterLab's widget extension installed and enabled? Without it, progress bars freeze
    as text and the sliders print their text, although `ipywidgets` imports fine."""
    name = "widget extension"
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "jupyter", "labextension", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check(name, "warn", f"could not ask JupyterLab ({err})")
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)  # drop the colours
    line = next((ln for ln in text.splitlines() if WIDGET_EXTENSION in ln and " v" in ln), None)
    if line is None:
        return Check(
            name,
            "warn",
            f"{WIDGET_EXTENSION} is not installed, so widgets show as text: "
            "pip install -r requirements.txt (ipywidgets brings it), then restart JupyterLab",
        )
    if "disabled" in line.split() or "OK" not in line.split():
        return Check(
            name,
            "warn",
            f"{WIDGET_EXTENSION} is installed but not working ({' '.join(line.split()[1:])}), "
            f"so widgets show as text: jupyter labextension enable {WIDGET_EXTENSION}, "
            "then restart JupyterLab",
        )
    return Check(name, "ok", f"{WIDGET_EXTENSION} {line.split()[1]} enabled")


def _data_dir() -> Check:
    try:
        env.DATA_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=env.DATA_DIR):
            pass
    except OSError as err:
        return Check(
            "data folder", "FAIL", f"cannot write to {env.DATA_DIR} ({err}); set COURSE_DATA_DIR"
        )
    return Check("data folder", "ok", f"{env.shown_path(env.DATA_DIR)} is writable")


def _corpus() -> Check:
    try:
        corpus = data.load_corpus("pystdlib")
    except (ValueError, FileNotFoundError) as err:
        return Check("corpus", "FAIL", str(err))
    detail = (
        f"{len(corpus.train):,} + {len(corpus.val):,} characters, fingerprint {corpus.fingerprint}"
    )
    if corpus.fingerprint != REFERENCE_FINGERPRINT:
        return Check(
            "corpus",
            "warn",
            detail + f" (the course's reference is {REFERENCE_FINGERPRINT}: "
            "your Python's standard library differs a little, so your numbers will too)",
        )
    return Check("corpus", "ok", detail)


def _checkpoints() -> Check:
    folder = env.DATA_DIR / "checkpoints"
    manifest = checkpoints.read_manifest(folder)
    if not manifest:
        return Check("checkpoints", "warn", f"none shipped in {folder}")
    bad = [
        name
        for name, entry in manifest.items()
        if not (folder / name).is_file() or checkpoints.sha256_of(folder / name) != entry["sha256"]
    ]
    if bad:
        return Check(
            "checkpoints", "FAIL", f"damaged or missing: {bad}; git checkout data/checkpoints/"
        )
    return Check("checkpoints", "ok", f"{len(manifest)} verified in {env.shown_path(folder)}")


def run_checks() -> list[Check]:
    """Every check, in the order a newcomer should fix them."""
    return [
        _python(),
        _torch(),
        _device(),
        _precision(),
        _package("numpy", "arrays"),
        _package("matplotlib", "plots"),
        _package("tqdm", "progress bars"),
        _package("jupyterlab", "the notebooks"),
        _package(
            "ipywidgets", "interactive sliders; static figures are shown without it", required=False
        ),
        _widget_extension(),
        _package("nbval", "testing the notebooks", required=False),
        _data_dir(),
        _corpus(),
        _checkpoints(),
    ]


def main() -> int:
    """Print every check; exit status 1 if any failed."""
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:>4}  {c.name:<{width}}  {c.detail}")
    print(
        f"\nCOURSE_FAST={os.environ.get('COURSE_FAST', '0')}, COURSE_DEVICE={os.environ.get('COURSE_DEVICE', '(auto)')}"
    )
    failed = [c.name for c in checks if c.status == "FAIL"]
    print("Ready for the course." if not failed else f"Fix first: {', '.join(failed)}.")
    return 1 if failed else 0
