"""Estimate each notebook's time from its length: the rule behind the times the notebooks and the
README state.

    python scripts/notebook_time.py

Reading: 100 words of markdown a minute (prose with equations, read to be understood), 20 lines
of code a minute, 8 minutes per exercise (each `checks.check_*` a notebook calls), rounded up to
5 minutes. The code's own run time in default mode comes on top (the README's last column).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS_PER_MIN, CODE_LINES_PER_MIN, MIN_PER_EXERCISE = 100, 20, 8


def measure(path: Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    text = {
        kind: "".join("".join(c["source"]) + "\n" for c in cells if c["cell_type"] == kind)
        for kind in ("markdown", "code")
    }
    words = len(re.findall(r"[A-Za-z]+", text["markdown"]))
    code_lines = len([line for line in text["code"].splitlines() if line.strip()])
    exercises = len(set(re.findall(r"checks\.check_\w+", text["code"])))
    minutes = words / WORDS_PER_MIN + code_lines / CODE_LINES_PER_MIN + exercises * MIN_PER_EXERCISE
    return {
        "words": words,
        "code_lines": code_lines,
        "exercises": exercises,
        "minutes": 5 * math.ceil(minutes / 5),
    }


def main() -> int:
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        m = measure(path)
        print(
            f"{path.stem:<36} {m['words']:>6} words {m['code_lines']:>5} code lines "
            f"{m['exercises']:>2} exercises -> about {m['minutes']} minutes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
