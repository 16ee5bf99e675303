"""Text in, integer ids out: the tokenizer, the corpora and the batches (notebook 01).

The tokenizer's vocabulary is FIXED (printable ASCII, newline, tab and one unknown symbol),
independent of any corpus, so every checkpoint of the course reads every corpus. The masked
diffusion models of notebooks 04+ need one more id, `mask_id == vocab_size`: it is an *input*
only (the model reads it, never predicts it), so it is not part of `vocab_size`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import env

UNKNOWN_CHAR = "\ufffd"  # shown for any character outside the vocabulary
MASK_CHAR = "\u2588"  # how decode() shows the mask id: a full block


class CharTokenizer:
    """Characters to ids and back, with a fixed vocabulary of 98 symbols.

    ids 0..1 are tab and newline, 2..96 the printable ASCII characters ' '..'~', and 97 the
    unknown symbol that every other character maps to (with one warning per tokenizer).
    `mask_id` (98) is reserved for masked diffusion and decodes to a block character.
    """

    def __init__(self) -> None:
        self.chars: list[str] = ["\t", "\n"] + [chr(c) for c in range(32, 127)] + [UNKNOWN_CHAR]
        self.vocab_size: int = len(self.chars)
        self.unknown_id: int = self.vocab_size - 1
        self.mask_id: int = self.vocab_size
        # the unknown symbol is itself in the vocabulary: decode() writes it, encode() reads it
        self._id_of = {ch: i for i, ch in enumerate(self.chars)}
        self._warned = False

    def encode(self, text: str) -> list[int]:
        """The ids of `text`; characters outside the vocabulary become `unknown_id`."""
        if not isinstance(text, str):
            raise ValueError(f"encode() takes a str, got {type(text).__name__}")
        ids = [self._id_of.get(ch, self.unknown_id) for ch in text]
        unknown = sorted(set(text).difference(self._id_of)) if not self._warned else []
        if unknown:
            shown = "".join(unknown[:10]) + ("..." if len(unknown) > 10 else "")
            warnings.warn(
                f"{len(unknown)} character(s) outside the vocabulary ({shown!r}) were mapped to "
                f"the unknown symbol {UNKNOWN_CHAR!r}; this warning is shown once per tokenizer",
                stacklevel=2,
            )
            self._warned = True
        return ids

    def decode(self, ids) -> str:
        """The text of `ids` (a list or a 1-D tensor); the mask id shows as a block."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode() takes one sequence (1-D), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == self.mask_id:
                out.append(MASK_CHAR)
            elif 0 <= i < self.vocab_size:
                out.append(self.chars[i])
            else:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.mask_id}]")
        return "".join(out)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, mask_id={self.mask_id})"


# -- corpora ---------------------------------------------------------------------------------

# Files of the standard library present, as plain modules, in every Python from 3.10 on.
PYSTDLIB_FILES: tuple[str, ...] = tuple(
    """abc argparse ast base64 bdb bisect calendar cmd code codecs codeop collections/__init__
    colorsys configparser contextlib copy csv dataclasses difflib dis enum filecmp fileinput
    fnmatch fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac
    html/parser imaplib inspect ipaddress json/decoder json/encoder keyword linecache locale
    logging/__init__ mailbox netrc numbers operator optparse os pickle plistlib poplib pprint
    pstats py_compile queue quopri random reprlib rlcompleter runpy sched secrets selectors
    shlex shutil smtplib socket statistics string stringprep subprocess symtable tabnanny
    tarfile tempfile textwrap threading timeit tokenize trace traceback tty types typing uuid
    warnings wave weakref webbrowser xml/dom/minidom zipapp zipimport _pydecimal _pyio""".split()
)
# The validation split: whole files, so no validation text is also seen in training.
PYSTDLIB_VAL_FILES: tuple[str, ...] = (
    "calendar",
    "csv",
    "filecmp",
    "fractions",
    "getopt",
    "gzip",
    "heapq",
    "json/encoder",
    "numbers",
    "queue",
    "sched",
    "shlex",
    "textwrap",
    "wave",
)

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_VAL_FRACTION = 0.1
FILE_SEPARATOR = "\n\n"


@dataclass
class Corpus:
    """A corpus split into training and validation text."""

    name: str
    train: str
    val: str
    source: str  # where the text came from, for the record

    @property
    def fingerprint(self) -> str:
        """The first 12 hex digits of the sha256 of train + val: equal fingerprints, equal text."""
        digest = hashlib.sha256()
        digest.update(self.train.encode("utf-8"))
        digest.update(b"\0")
        digest.update(self.val.encode("utf-8"))
        return digest.hexdigest()[:12]

    def describe(self) -> str:
        return (
            f"corpus {self.name!r}: {len(self.train):,} train + {len(self.val):,} val characters, "
            f"fingerprint {self.fingerprint} ({self.source})"
        )

    def __repr__(self) -> str:
        return f"Corpus({self.describe()})"


CORPORA = ("pystdlib", "pystdlib-all", "shakespeare")
# a folder holding pystdlib's files (`export_pystdlib`), read instead of this Python's own
# standard library: the course's corpus on a machine whose Python is another version
PYSTDLIB_ENV = "COURSE_PYSTDLIB"


def load_corpus(name: str = "pystdlib") -> Corpus:
    """Load a corpus by name: "pystdlib" (embedded, the default), "pystdlib-all" (the judge's:
    every standard-library file but the validation ones) or "shakespeare" (download).

    The synthetic sources of notebook 05 are sequence distributions, not text: see
    `course_lib.synthetic`.
    """
    if name == "pystdlib":
        return _load_pystdlib()
    if name == "pystdlib-all":
        return _load_pystdlib_all()
    if name == "shakespeare":
        return _load_shakespeare()
    raise ValueError(
        f"unknown corpus {name!r}: choose one of {CORPORA} "
        "(synthetic sources live in course_lib.synthetic)"
    )


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _load_pystdlib(root: Path | None = None) -> Corpus:
    """pystdlib from `root`: $COURSE_PYSTDLIB if set, else this Python's standard library."""
    folder = os.environ.get(PYSTDLIB_ENV, "").strip()
    if root is None and folder:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"${PYSTDLIB_ENV} is {folder!r}, which is not a folder")
        source = f"from {root} (${PYSTDLIB_ENV})"
    else:
        root = root or _stdlib_root()
        source = f"of Python {sysconfig.get_python_version()} (sysconfig's 'stdlib' folder)"
    parts: dict[str, list[str]] = {"train": [], "val": []}
    missing = []
    for stem in PYSTDLIB_FILES:
        path = root / f"{stem}.py"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            missing.append(stem)
            continue
        parts["val" if stem in PYSTDLIB_VAL_FILES else "train"].append(text)
    if len(missing) > len(PYSTDLIB_FILES) // 4:
        raise FileNotFoundError(
            f"{len(missing)} of the corpus's {len(PYSTDLIB_FILES)} standard-library files are "
            f"missing under {root} (first: {missing[:3]}); is this a full Python install?"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} corpus file(s) are missing from this Python ({missing}): the "
            "corpus differs from the course's reference one",
            stacklevel=3,
        )
    return Corpus(
        name="pystdlib",
        train=FILE_SEPARATOR.join(parts["train"]),
        val=FILE_SEPARATOR.join(parts["val"]),
        source=f"{len(PYSTDLIB_FILES) - len(missing)} standard-library files {source}",
    )


def export_pystdlib(folder: str | Path) -> Path:
    """Copy pystdlib's files from this Python into `folder` (their paths kept), for a
    machine whose Python is another version: there, COURSE_PYSTDLIB=folder makes
    `load_corpus("pystdlib")` read them, and the corpus (its fingerprint) is this one."""
    folder, root = Path(folder), _stdlib_root()
    for stem in PYSTDLIB_FILES:
        source = root / f"{stem}.py"
        if source.exists():
            (folder / f"{stem}.py").parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / f"{stem}.py")
    return folder


def _load_pystdlib_all() -> Corpus:
    """Every .py file of the standard library (tests included, site-packages not) except the
    validation files, for training; pystdlib's validation split, unchanged.

    Notebook 12's judge trains on it: about ten times pystdlib's training text, so it knows
    Python better than the models it scores, and it never sees a validation file, nor a file
    that shares a stretch of 300 characters or more with one.
    """
    root = _stdlib_root()  # this Python's, whatever $COURSE_PYSTDLIB says
    base = _load_pystdlib(root)
    held_out = {root / f"{stem}.py" for stem in PYSTDLIB_VAL_FILES}
    # every 200-character stretch of the validation text: a training file that contains one
    # holds a copy of validation code (wave.py's chunk reader is also chunk.py's), left out
    window = 200
    val_windows = {base.val[i : i + window] for i in range(len(base.val) - window + 1)}
    texts = []
    for path in sorted(root.rglob("*.py")):
        if {"site-packages", "__pycache__"} & set(path.relative_to(root).parts):
            continue
        if path in held_out:
            continue
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):  # a deliberately broken test file, say
            continue
        if any(text[i : i + window] in val_windows for i in range(0, len(text), window // 2)):
            continue
        texts.append(text)
    return Corpus(
        name="pystdlib-all",
        train=FILE_SEPARATOR.join(texts),
        val=base.val,
        source=f"{len(texts)} standard-library files of Python {sysconfig.get_python_version()} "
        "(every .py file but the validation ones), pystdlib's validation split",
    )


def _load_shakespeare() -> Corpus:
    path = env.DATA_DIR / "cache" / "tinyshakespeare.txt"
    if not path.exists():
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=20) as response:
                raw = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise ValueError(
                f"could not download the Shakespeare corpus from {SHAKESPEARE_URL} ({err}). "
                "Are you offline? The embedded default corpus needs no network: "
                "load_corpus('pystdlib')."
            ) from err
        if hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
            raise ValueError(
                "the downloaded Shakespeare text does not match its checksum; nothing was "
                "saved. Try again later, or use load_corpus('pystdlib')."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.replace(path)
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != SHAKESPEARE_SHA256:
        raise ValueError(f"{path} is damaged (checksum mismatch): delete it to download again")
    text = raw.decode("utf-8")
    cut = int(len(text) * (1 - SHAKESPEARE_VAL_FRACTION))
    return Corpus("shakespeare", train=text[:cut], val=text[cut:], source=SHAKESPEARE_URL)


# -- batches ---------------------------------------------------------------------------------


def encode_corpus(
    corpus: Corpus, tokenizer: CharTokenizer | None = None
) -> dict[str, torch.Tensor]:
    """Both splits of `corpus` as 1-D LongTensors of ids: {"train": ..., "val": ...}."""
    tokenizer = tokenizer or CharTokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corpus's rare unknown characters are expected
        return {
            split: torch.tensor(tokenizer.encode(getattr(corpus, split)), dtype=torch.long)
            for split in ("train", "val")
        }


def get_batch(
    ids: torch.Tensor, batch_size: int, seq_len: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`batch_size` random windows of `seq_len + 1` consecutive ids: (batch_size, seq_len + 1).

    The extra id lets an AR model predict token i+1 from tokens <= i; a diffusion model uses
    the first `seq_len` ids (or all of them) as its clean x0.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if len(ids) < seq_len + 1:
        raise ValueError(f"text of {len(ids)} ids is too short for windows of {seq_len + 1}")
    starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    return ids[starts[:, None] + offsets[None, :]]  # (B, seq_len + 1)
