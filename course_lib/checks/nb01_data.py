"""Checks for notebook 01 (data and tokens): encoding, unigram entropy, inputs and targets.

- `check_encode(encode)`: text to ids with the course's fixed vocabulary, compared with
  `data.CharTokenizer` on printable text, tabs and newlines, the empty string and characters
  outside the vocabulary.
- `check_unigram_entropy(unigram_entropy_bits)`: the entropy of the character frequencies, in
  bits, with symbols that never occur counting zero.
- `check_inputs_and_targets(inputs_and_targets)`: a (B, L + 1) batch split into what the
  model reads and what it predicts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from course_lib.checks._core import CheckFailed, run_check
from course_lib.data import MASK_CHAR, CharTokenizer

SOLUTIONS = "The solutions are in notebooks/solutions/01_data_and_tokens_solutions.ipynb."


def _as_id_list(result, text: str) -> list[int]:
    if isinstance(result, torch.Tensor):
        result = result.tolist()
    if isinstance(result, str) or not isinstance(result, (list, tuple)):
        raise CheckFailed(
            f"encode({text!r}) returned {type(result).__name__}; return a list of ints, one id "
            "per character."
        )
    return [int(i) for i in result]


def _encode_cases(encode: Callable) -> str:
    tokenizer = CharTokenizer()
    unknown, mask = tokenizer.unknown_id, tokenizer.mask_id
    cases = [
        "Hello, World! ~{}",  # printable ASCII only
        "\tx = 1\n",  # tab and newline
        "",  # nothing
        "naïve café",  # characters outside the vocabulary
        MASK_CHAR,  # how decode() SHOWS the mask id; as text it is just another character
    ]
    for text in cases:
        try:
            result = encode(text)
        except (KeyError, ValueError, IndexError) as err:
            raise CheckFailed(
                f"encode({text!r}) raised {type(err).__name__}: {err}. Every character gets an "
                f"id: tab is 0, newline 1, ' '..'~' are 2..96, and anything else is the "
                f"unknown id {unknown}."
            ) from err
        got = _as_id_list(result, text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the learner has seen the unknown-symbol warning
            expected = tokenizer.encode(text)
        if got == expected:
            continue
        if len(got) != len(expected):
            raise CheckFailed(
                f"encode({text!r}) returned {len(got)} ids for {len(expected)} characters: "
                f"exactly one id per character (unknown ones become {unknown}, not dropped)."
            )
        i = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        ch = text[i]
        if ch == MASK_CHAR and got[i] == mask:
            hint = (
                f"{MASK_CHAR!r} is only how decode() shows the mask id; typed as text it is an "
                f"ordinary character outside the vocabulary: id {unknown}. The mask id {mask} is "
                "never produced by encode()."
            )
        elif expected[i] == unknown and got[i] == mask:
            hint = (
                f"{mask} is the mask id, an input-only id for diffusion; characters outside "
                f"the vocabulary map to the unknown id {unknown}."
            )
        elif expected[i] == unknown:
            hint = f"characters outside the vocabulary map to the unknown id {unknown}."
        elif ch in "\t\n":
            hint = "tab is id 0 and newline id 1: they come first in the vocabulary."
        elif got[i] == ord(ch) - 32:
            hint = (
                "ids 0 and 1 are tab and newline, so ' ' is 2 and the printable characters "
                "are shifted by 2: id = ord(ch) - 30."
            )
        else:
            hint = "printable characters ' '..'~' (ord 32..126) are ids 2..96."
        raise CheckFailed(
            f"encode({text!r}) gives {ch!r} (position {i}) the id {got[i]}, expected "
            f"{expected[i]}: {hint}"
        )
    return "Same ids as data.CharTokenizer, including the unknown symbol."


def check_encode(encode: Callable) -> bool:
    """Check `encode(text) -> list[int]` against the course's CharTokenizer."""
    return run_check("encode", SOLUTIONS, lambda: _encode_cases(encode))


def _entropy_variants(counts: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """The typical wrong answers for these symbol counts, keyed by the hint for each."""
    n = counts.sum()
    seen = counts[counts > 0].double()
    p = seen / n
    return {
        "you used the natural log (nats); entropy in bits uses log base 2: torch.log2.": float(
            -(p * p.log()).sum()
        ),
        "you used log base 10; entropy in bits uses log base 2: torch.log2.": float(
            -(p * p.log10()).sum()
        ),
        "the sign is flipped: H = -sum(p * log2 p), which is >= 0.": float((p * p.log2()).sum()),
        "divide the counts by the number of ids, not by vocab_size, to get probabilities.": float(
            -((seen / vocab_size) * (seen / vocab_size).log2()).sum()
        ),
        "you used the counts, not the probabilities: p = counts / counts.sum().": float(
            -(seen * seen.log2()).sum()
        ),
        "log2(vocab_size) is the entropy of the UNIFORM distribution (the most there can be); "
        "compute it from the character frequencies.": math.log2(vocab_size),
    }


def _entropy_cases(unigram_entropy_bits: Callable) -> str:
    cases = [
        (torch.tensor([0, 1, 2, 3] * 3), 4, "four symbols, equally often"),
        (torch.tensor([0, 0, 0, 1]), 98, "two of 98 symbols, 3:1"),
        (torch.full((10,), 5), 98, "one symbol only"),
        (torch.tensor(CharTokenizer().encode("hello, world")), 98, "the ids of 'hello, world'"),
    ]
    for ids, vocab_size, what in cases:
        result = unigram_entropy_bits(ids.clone(), vocab_size)
        try:
            value = float(result)
        except (TypeError, ValueError) as err:
            raise CheckFailed(
                f"unigram_entropy_bits returned {result!r}; return one number (bits)."
            ) from err
        counts = torch.bincount(ids, minlength=vocab_size)
        p = counts[counts > 0].double() / counts.sum()
        expected = float(-(p * p.log2()).sum())
        if math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        where = f"for {what} (ids {ids.tolist()}, vocab_size={vocab_size})"
        if math.isnan(value):
            raise CheckFailed(
                f"unigram_entropy_bits returned nan {where}: a symbol that never occurs has "
                "p = 0 and p * log2(p) = 0 * -inf = nan. Such symbols contribute 0: keep only "
                "p > 0 before taking the log."
            )
        hint = next(
            (
                h
                for h, w in _entropy_variants(counts, vocab_size).items()
                if math.isclose(value, w, rel_tol=1e-6, abs_tol=1e-9)
            ),
            "H = -sum over symbols with p > 0 of p * log2(p), where p = count / number of ids.",
        )
        raise CheckFailed(
            f"unigram_entropy_bits returned {value:.4f} bits {where}, expected {expected:.4f}: "
            f"{hint}"
        )
    return "A model that ignores context can do no better than this many bits per character."


def check_unigram_entropy(unigram_entropy_bits: Callable) -> bool:
    """Check `unigram_entropy_bits(ids, vocab_size) -> float`, the entropy in bits."""
    return run_check("unigram entropy", SOLUTIONS, lambda: _entropy_cases(unigram_entropy_bits))


def _inputs_targets_cases(inputs_and_targets: Callable) -> str:
    for batch_size, window in [(2, 6), (3, 4), (1, 2)]:
        batch = torch.arange(batch_size * window).view(batch_size, window) * 10
        result = inputs_and_targets(batch.clone())
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise CheckFailed(
                "inputs_and_targets should return two tensors, (inputs, targets); got "
                f"{type(result).__name__}."
            )
        inputs, targets = result
        expected_in, expected_tg = batch[:, :-1], batch[:, 1:]
        shape = (batch_size, window - 1)
        where = f"for a batch of shape {tuple(batch.shape)}"
        for name, tensor in (("inputs", inputs), ("targets", targets)):
            if not isinstance(tensor, torch.Tensor):
                raise CheckFailed(f"{name} should be a tensor, got {type(tensor).__name__}.")
            if tensor.shape == (batch_size - 1, window):
                raise CheckFailed(
                    f"{name} has shape {tuple(tensor.shape)} {where}: you sliced the rows "
                    "(sequences). Slice the last dimension (positions): batch[:, :-1]."
                )
            if tuple(tensor.shape) != shape:
                raise CheckFailed(
                    f"{name} has shape {tuple(tensor.shape)} {where}, expected {shape}: both "
                    "drop one token, inputs the last (nothing follows it to predict) and "
                    "targets the first (nothing precedes it)."
                )
        if torch.equal(inputs, expected_in) and torch.equal(targets, expected_tg):
            continue
        if torch.equal(inputs, expected_tg) and torch.equal(targets, expected_in):
            hint = "inputs and targets are swapped: the model reads batch[:, :-1] and predicts batch[:, 1:]."
        elif torch.equal(inputs, targets):
            hint = "inputs and targets are the same; the target at position i is the NEXT token, i + 1."
        else:
            hint = "inputs = batch[:, :-1], targets = batch[:, 1:]."
        raise CheckFailed(
            f"{where} = {batch.tolist()}, you returned inputs {inputs.tolist()} and targets "
            f"{targets.tolist()}: {hint}"
        )
    return "Position i reads tokens <= i and is scored on token i + 1: L predictions per window."


def check_inputs_and_targets(inputs_and_targets: Callable) -> bool:
    """Check `inputs_and_targets(batch) -> (inputs, targets)` for AR training."""
    return run_check(
        "inputs and targets", SOLUTIONS, lambda: _inputs_targets_cases(inputs_and_targets)
    )
