"""Estimate each notebook's time from its length: the rule behind the times the notebooks and the
README state.

    python scripts/notebook_time.py

Reading: 100 words of markdown a minute (prose with equations, read to be understood), 20 lines
of code a minute, 8 minutes per exercise (each `checks.check_*` a notebook calls), rounded up to
5 minutes. The code's own run time in default mode comes on top (the README's last column).
Sections whose heading says "(optional)" are deep dives a first reading can skip; the estimate
without them is printed beside the full one.
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
    """Words, code lines, exercises and minutes of a notebook; `core_minutes` leaves out the
    sections whose heading says "(optional)" (until the next heading of the same or a higher
    level)."""
    cells = json.loads(path.read_text())["cells"]
    totals = {True: [0, 0], False: [0, 0]}  # optional? -> [words, code lines]
    optional_level = None
    exercises = set()
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            lines = [line for line in source.splitlines() if line.strip()]
            totals[optional_level is not None][1] += len(lines)
            exercises |= set(re.findall(r"checks\.check_\w+", source))
            continue
        if cell["cell_type"] != "markdown":
            continue
        for line in source.splitlines():
            heading = re.match(r"(#+) ", line)
            if heading:
                level = len(heading[1])
                if optional_level is not None and level <= optional_level:
                    optional_level = None
                if "(optional)" in line:
                    optional_level = level
            totals[optional_level is not None][0] += len(re.findall(r"[A-Za-z]+", line))

    def minutes(words, code_lines):
        raw = words / WORDS_PER_MIN + code_lines / CODE_LINES_PER_MIN
        return 5 * math.ceil((raw + len(exercises) * MIN_PER_EXERCISE) / 5)

    words = totals[True][0] + totals[False][0]
    code_lines = totals[True][1] + totals[False][1]
    return {
        "words": words,
        "code_lines": code_lines,
        "exercises": len(exercises),
        "minutes": minutes(words, code_lines),
        "core_minutes": minutes(*totals[False]),
    }


def main() -> int:
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        m = measure(path)
        core = (
            "" if m["core_minutes"] == m["minutes"] else f" ({m['core_minutes']} without optional)"
        )
        print(
            f"{path.stem:<36} {m['words']:>6} words {m['code_lines']:>5} code lines "
            f"{m['exercises']:>2} exercises -> about {m['minutes']} minutes{core}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
