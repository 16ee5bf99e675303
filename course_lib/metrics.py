"""Measuring language models and the text they write (notebooks 03 and 07).

- `bits_per_char`: how well a causal (autoregressive) model predicts held-out text, in bits
  per character: the length, per character, of the shortest code an ideal compressor using
  the model would write (notebook 03).
- `generative_perplexity`: how likely an AR *scorer* model finds generated samples (07).
- `unigram_entropy` and `distinct_ngrams`: whether samples are varied; a sampler can reach a
  low perplexity by repeating itself, and these numbers catch it (07).
- `python_validity`: the fraction of generated Python statements that parse (07).

With the course's character tokenizer one token is one character, so bits per token and bits
per character are the same number.
"""

from __future__ import annotations

import ast
import io
import math
import textwrap
import tokenize
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from course_lib import data, diffusion, env
from course_lib.model import device_and_dtype, eval_mode

# -- scoring text with a causal model --------------------------------------------------------


class Window(NamedTuple):
    """One forward pass of a sliding evaluation: the model reads ids[start : end - 1].

    It predicts ids[start + 1 : end]; only the predictions of ids[first_scored : end] count,
    each with the `t - start` ids before position t as its context.
    """

    start: int
    end: int
    first_scored: int


def window_plan(
    n_ids: int, window: int, stride: int | None = None, *, first_scored: int = 1
) -> list[Window]:
    """The windows that score ids[first_scored:] of a sequence of `n_ids` ids exactly once.

    Windows read `window` ids (fewer if the sequence is shorter) and start every `stride` ids
    (default `window // 2`); the last one is moved back to end at the sequence's end. The first
    window scores all its predictions; every later window scores only the ids the previous one
    did not reach, so each of those is predicted from at least `window - stride + 1` ids of
    context: at least half a window with the default stride, as little as one id with
    `stride=window` (non-overlapping windows, half the compute, a worse score).

    The first id of the sequence is never scored: nothing comes before it to predict it from.
    """
    if not isinstance(n_ids, int) or n_ids < 2:
        raise ValueError(f"need at least 2 ids to score one prediction, got {n_ids!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    stride = max(1, window // 2) if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"stride must be an int in [1, window={window}], got {stride!r}")
    if not isinstance(first_scored, int) or not 1 <= first_scored < n_ids:
        raise ValueError(f"first_scored must be in [1, {n_ids - 1}], got {first_scored!r}")
    span = min(window, n_ids - 1) + 1  # the ids one window touches: its inputs and one more
    plan = []
    next_unscored = first_scored
    start = 0
    while next_unscored < n_ids:
        window_start = min(start, n_ids - span)
        end = window_start + span
        if end > next_unscored:
            plan.append(Window(window_start, end, next_unscored))
            next_unscored = end
        start += stride
    return plan


def _check_causal(model, what: str):
    config = getattr(model, "config", None)
    if config is None or getattr(config, "attention", None) != "causal":
        kind = getattr(config, "attention", type(model).__name__)
        raise ValueError(
            f"{what} needs a causal (autoregressive) model, got {kind!r}: a masked-diffusion "
            "model has no next-token probabilities; its bits come from diffusion.elbo (notebook 05)"
        )
    return config


def _model_device(model, device) -> torch.device:
    """`device` if given, else where `model`'s weights are."""
    return torch.device(device) if device is not None else device_and_dtype(model)[0]


def _as_id_tensor(ids, vocab_size: int, what: str) -> torch.Tensor:
    if isinstance(ids, str):
        ids = data.CharTokenizer().encode(ids)
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dtype != torch.long:
        raise ValueError(f"{what} must be token ids (torch.long), got dtype {ids.dtype}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{what} contains ids outside [0, {vocab_size}): a mask id (={vocab_size}) means a "
            "sample that is not fully decoded, any other means another tokenizer"
        )
    return ids.cpu()


@torch.inference_mode()
def _window_bits(
    model,
    sequences: torch.Tensor,
    plan: list[Window],
    *,
    batch_size: int,
    device: torch.device,
    autocast: torch.dtype | None,
) -> torch.Tensor:
    """-log2 p of the ids each window of `plan` scores, per row and window: (B * W,) float64."""
    span = plan[0].end - plan[0].start  # every window of a plan has the same length
    windows = torch.stack([sequences[:, w.start : w.end] for w in plan], dim=1)  # (B, W, span)
    windows = windows.reshape(-1, span)  # (B * W, span)
    # scored[i, j]: does window i score its prediction of id start + 1 + j?
    positions = torch.arange(1, span)
    scored = torch.stack([w.start + positions >= w.first_scored for w in plan])  # (W, span - 1)
    scored = scored.repeat(sequences.shape[0], 1)  # (B * W, span - 1)
    bits = torch.zeros(windows.shape[0], dtype=torch.float64)
    with eval_mode(model):
        for i in range(0, windows.shape[0], batch_size):
            batch = windows[i : i + batch_size].to(device)
            with env.autocast(device, autocast):
                logits = model(batch[:, :-1])  # (b, span - 1, V)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            target_log_probs = log_probs.gather(-1, batch[:, 1:, None]).squeeze(-1)
            mask = scored[i : i + batch_size].to(device)
            nats = -target_log_probs.double().masked_fill(~mask, 0.0).sum(-1)  # (b,)
            bits[i : i + batch_size] = nats.cpu() / math.log(2)
    return bits


def bits_per_char(
    model,
    text_or_ids: str | torch.Tensor | Sequence[int],
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    max_chars: int | None = None,
    autocast: torch.dtype | None = None,
) -> float:
    """Average -log2 p(x_t | x_<t) over a text: the causal `model`'s bits per character.

    Every character but the first is scored exactly once, by sliding windows of `window` ids
    (default: the model's context) that start every `stride` ids (default: half a window), so
    every character after the first window is predicted from at least half a window of context
    (see `window_plan`).
    `stride=window` gives non-overlapping windows: half the compute, less context for the
    first characters of each window, more bits.

    `text_or_ids` is a string (encoded with the course's `CharTokenizer`) or 1-D token ids;
    `max_chars` keeps only its first `max_chars` characters. The model runs in float32 on
    `device` (default: where its weights are) unless `autocast` names a dtype such as
    torch.bfloat16 (faster on CPUs with bf16 units; for the course's models the score moves by
    less than 0.001 bit: log-probabilities are always taken in float32).
    """
    config = _check_causal(model, "bits_per_char")
    ids = _as_id_tensor(text_or_ids, config.vocab_size, "text_or_ids")
    if ids.dim() != 1:
        raise ValueError(f"text_or_ids must be one sequence (1-D), got shape {tuple(ids.shape)}")
    if max_chars is not None:
        if not isinstance(max_chars, int) or max_chars < 2:
            raise ValueError(f"max_chars must be an int >= 2 (or None), got {max_chars!r}")
        ids = ids[:max_chars]
    if len(ids) < 2:
        raise ValueError(
            f"the text has {len(ids)} character(s): at least 2 are needed to score one "
            "prediction (the first character has no context)"
        )
    window = config.context_len if window is None else window
    if not isinstance(window, int) or not 1 <= window <= config.context_len:
        raise ValueError(
            f"window must be in [1, {config.context_len}] (the model's context), got {window!r}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plan = window_plan(len(ids), window, stride)
    bits = _window_bits(
        model,
        ids[None],
        plan,
        batch_size=batch_size,
        device=_model_device(model, device),
        autocast=autocast,
    )
    return bits.sum().item() / (len(ids) - 1)


def generative_perplexity(
    samples: torch.Tensor | Sequence,
    scorer_model,
    *,
    prompt_len: int = 0,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    autocast: torch.dtype | None = None,
) -> float:
    """Perplexity of generated `samples` under a causal `scorer_model`: 2 ** (bits per token).

    `samples` is a LongTensor (B, L) or (L,), or a list of 1-D id sequences (lengths may
    differ). The first token of a sample has no context and is not scored, nor are the first
    `prompt_len` tokens (a prompt the sampler was given, not text it wrote); they still serve
    as context. Samples longer than the scorer's context are scored with sliding windows, as
    in `bits_per_char`. All samples' tokens are pooled: the result is 2 ** (total bits / total
    scored tokens). The scorer must use the same tokenizer as the sampler.

    A low perplexity alone proves little: repeating one likely token gets a low one. Report it
    with `unigram_entropy` and `distinct_ngrams` of the same samples.
    """
    config = _check_causal(scorer_model, "generative_perplexity")
    if isinstance(samples, torch.Tensor):
        samples = samples[None] if samples.dim() == 1 else samples
        if samples.dim() != 2:
            raise ValueError(f"samples must be (B, L) or (L,), got shape {tuple(samples.shape)}")
        rows = list(samples)
    else:
        rows = list(samples)
    if not rows:
        raise ValueError("samples is empty: there is nothing to score")
    if not isinstance(prompt_len, int) or prompt_len < 0:
        raise ValueError(f"prompt_len must be a non-negative int, got {prompt_len!r}")
    first_scored = max(1, prompt_len)
    window = config.context_len if window is None else window
    if not isinstance(window, int) or not 1 <= window <= config.context_len:
        raise ValueError(
            f"window must be in [1, {config.context_len}] (the scorer's context), got {window!r}"
        )
    by_length: dict[int, list[torch.Tensor]] = {}
    for row in rows:
        ids = _as_id_tensor(row, config.vocab_size, "samples")
        if ids.dim() != 1 or len(ids) <= first_scored:
            raise ValueError(
                f"every sample must be a 1-D sequence longer than max(1, prompt_len) = "
                f"{first_scored} tokens, got shape {tuple(ids.shape)}"
            )
        by_length.setdefault(len(ids), []).append(ids)
    device = _model_device(scorer_model, device)
    total_bits, n_scored = 0.0, 0
    for length, group in by_length.items():
        plan = window_plan(length, window, stride, first_scored=first_scored)
        total_bits += (
            _window_bits(
                scorer_model,
                torch.stack(group),
                plan,
                batch_size=batch_size,
                device=device,
                autocast=autocast,
            )
            .sum()
            .item()
        )
        n_scored += len(group) * (length - first_scored)
    return 2.0 ** (total_bits / n_scored)


# -- held-out bits of any course model (python -m course_lib evaluate) -------------------------


class HeldOutBits(NamedTuple):
    """A model's bits per character on held-out windows, with the standard error of the mean."""

    bits_per_char: float
    standard_error: float
    n_windows: int
    n_chars: int
    method: str


def held_out_bits(
    model,
    ids: torch.Tensor,
    *,
    window: int | None = None,
    max_windows: int | None = None,
    n_samples: int = 2,
    seed: int = 0,
    batch_size: int = 64,
) -> HeldOutBits:
    """Bits per character of any course model on the same disjoint windows of held-out `ids`.

    `ids` (1-D) is cut into consecutive windows of `window` ids (default: the model's context;
    the last partial window is dropped), at most `max_windows` of them (default: all). A
    causal model's number is its exact -log2 p(x_t | x_<t), each window read from its start
    (its first id predicted from the previous window's last one, as in `bits_per_char` with
    `stride=window`). A masked-diffusion or block-diffusion model's number is the upper bound
    `diffusion.elbo` with `n_samples` draws of times and masks from a generator seeded with
    `seed`, on the same windows (a block-diffusion model with `next_token_shift` reads each
    window from the id before it, as a causal model does, so its first window is not
    scored). The bound lies above the diffusion model's true -log2 p, so
    a comparison on these numbers can only favour the AR model.

    The standard error is that of the mean over windows (for the ELBO it includes the Monte
    Carlo noise). Runs in float32 where the model's weights are; deterministic for a seed.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("held_out_bits needs a course Transformer (it reads model.config)")
    ids = _as_id_tensor(ids, config.vocab_size, "ids")
    if ids.dim() != 1:
        raise ValueError(f"ids must be one sequence (1-D), got shape {tuple(ids.shape)}")
    window = config.context_len if window is None else window
    if not isinstance(window, int) or not 2 <= window <= config.context_len:
        raise ValueError(f"window must be in [2, {config.context_len}], got {window!r}")
    n_windows = len(ids) // window
    if max_windows is not None:
        if not isinstance(max_windows, int) or max_windows < 2:
            raise ValueError(f"max_windows must be an int >= 2 (or None), got {max_windows!r}")
        n_windows = min(n_windows, max_windows)
    if n_windows < 2:
        raise ValueError(
            f"{len(ids)} ids make {n_windows} window(s) of {window}: at least 2 are needed for "
            "a standard error"
        )
    ids = ids[: n_windows * window]
    device = _model_device(model, None)
    if config.attention == "causal":
        plan = window_plan(len(ids), window, stride=window)  # one Window per window of ids
        bits = _window_bits(
            model, ids[None], plan, batch_size=batch_size, device=device, autocast=None
        )
        counts = torch.tensor([w.end - w.first_scored for w in plan], dtype=torch.float64)
        per_window = bits / counts
        mean = bits.sum().item() / counts.sum().item()
        standard_error = per_window.std().item() / math.sqrt(len(plan))
        method = f"-log2 p, causal, windows of {window}"
    else:
        generator = torch.Generator(device).manual_seed(seed)
        windows = ids.view(n_windows, window)
        if config.next_token_shift:  # each window read from the id before it, as AR reads it
            windows = torch.cat([windows[:-1, -1:], windows[1:]], dim=1)  # (n - 1, window + 1)
            n_windows -= 1
        mean, standard_error = diffusion.elbo(
            model,
            windows.to(device),
            "loglinear",
            n_samples=n_samples,
            generator=generator,
            batch_size=batch_size,
        )
        bound = "BD3-LM" if config.attention == "block_causal" else "MDLM"
        method = f"ELBO ({bound}), {n_samples} samples, seed {seed}, windows of {window}"
    return HeldOutBits(mean, standard_error, n_windows, n_windows * window, method)


# -- diversity -------------------------------------------------------------------------------


def _as_sequences(ids) -> list[list]:
    """One or several sequences (str, list, 1-D or 2-D tensor, list of those) as lists."""
    if isinstance(ids, str):
        return [list(ids)]
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 1:
            return [ids.tolist()]
        if ids.dim() == 2:
            return ids.tolist()
        raise ValueError(f"ids must be 1-D or 2-D, got shape {tuple(ids.shape)}")
    ids = list(ids)
    if ids and isinstance(ids[0], (str, torch.Tensor, list, tuple)):
        return [seq for item in ids for seq in _as_sequences(item)]
    return [ids]


def unigram_entropy(ids) -> float:
    """Entropy in bits of the symbols' frequencies: -sum_c p(c) log2 p(c).

    `ids` is a string, a tensor of any shape or a (list of) sequence(s); all symbols are
    pooled. Computed on a corpus it is the bits per character of the best model that ignores
    context (a baseline any language model should beat); computed on samples it falls when a
    sampler repeats a few symbols, which a perplexity alone rewards.
    """
    symbols = (
        ids.reshape(-1).tolist()
        if isinstance(ids, torch.Tensor)
        else [s for seq in _as_sequences(ids) for s in seq]
    )
    if not symbols:
        raise ValueError("unigram_entropy needs at least one symbol, got an empty input")
    counts = torch.tensor(list(Counter(symbols).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def distinct_ngrams(ids, n: int) -> float:
    """The fraction of distinct n-grams: (number of different n-grams) / (number of n-grams).

    `ids` is one sequence (a string, a list or a 1-D tensor) or several (a 2-D tensor, one
    row per sample, or a list of sequences); n-grams never cross from one sequence to the next
    and are pooled over all of them ("distinct-n"). 1.0: nothing repeats; near 0: the same few
    n-grams over and over.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    grams = [tuple(seq[i : i + n]) for seq in _as_sequences(ids) for i in range(len(seq) - n + 1)]
    if not grams:
        raise ValueError(f"no sequence has {n} or more symbols: there is no {n}-gram to count")
    return len(set(grams)) / len(grams)


# -- validity of generated Python ------------------------------------------------------------

VALIDITY_UNITS = ("statement", "sample")
# what a compound statement's header needs around it to parse alone: (before, after)
_HEADER_CONTEXT = {
    "else": ("if 1:\n pass\n", "\n pass"),
    "elif": ("if 1:\n pass\n", "\n pass"),
    "except": ("try:\n pass\n", "\n pass"),
    "finally": ("try:\n pass\n", "\n pass"),
    "try": ("", "\n pass\nexcept:\n pass"),
    "match": ("", "\n case _:\n  pass"),
    "case": ("match _:\n ", "\n  pass"),
}
_OPENING, _CLOSING = {"(", "[", "{"}, {")", "]", "}"}
_SKIPPED_TOKENS = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


def _parses(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. SyntaxWarning: invalid escape sequence
        try:
            ast.parse(source)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False
    return True


class _Statement(NamedTuple):
    text: str  # its physical lines, the first one without its indentation
    first: str  # its first token
    last: str  # its last token, comments excepted
    complete: bool  # False: the tokenizer gave up inside it


def _statements(lines: list[str]) -> list[_Statement]:
    """Split complete lines into logical lines (statements) with Python's tokenizer.

    Indentation is removed before tokenizing: it decides nothing about where a statement ends
    (brackets and strings do), and a window of a program rarely starts at indentation zero.
    Where the tokenizer fails before the end, the statement it was reading is returned as
    incomplete and tokenizing resumes on the next line; at the end, a statement left open
    (unclosed bracket or string) is dropped: the sample was cut inside it.
    """
    stripped = [line.lstrip(" \t") + "\n" for line in lines]
    statements: list[_Statement] = []
    row = 0  # 0-based index of the line tokenizing starts from
    while row < len(lines):
        begin, first, last, depth = None, "", "", 0
        readline = io.StringIO("".join(stripped[row:])).readline
        try:
            for tok in tokenize.generate_tokens(readline):
                if tok.type in _SKIPPED_TOKENS:
                    continue
                if tok.type == tokenize.OP:
                    depth += (tok.string in _OPENING) - (tok.string in _CLOSING)
                if depth < 0:  # Python 3.11's tokenizer would read on as if inside brackets
                    raise SyntaxError("unmatched closing bracket", ("", tok.start[0], 0, ""))
                if tok.type == tokenize.NEWLINE:
                    if begin is not None:
                        end = row + tok.end[0]
                        text = "\n".join([lines[begin].lstrip(" \t"), *lines[begin + 1 : end]])
                        statements.append(_Statement(text, first, last, True))
                    begin = None
                    continue
                if begin is None:
                    begin, first = row + tok.start[0] - 1, tok.string
                last = tok.string
            return statements
        except (tokenize.TokenError, SyntaxError) as err:
            line = err.lineno if isinstance(err, SyntaxError) else err.args[1][0]
            failed = row + (line or 1) - 1
            if failed >= len(lines) - 1 or "EOF" in str(err):
                return statements  # cut off at the end of the sample: not judged
            start = failed if begin is None else begin
            statements.append(_Statement("\n".join(lines[start : failed + 1]), "", "", False))
            row = failed + 1
    return statements


def _statement_parses(stmt: _Statement) -> bool:
    """Whether one logical line is valid Python, a compound header judged with a `pass` body."""
    if not stmt.complete:
        return False
    source = stmt.text
    if stmt.last == ":":  # def/class/if/for/while/with/try/else... header: its body comes later
        before, after = _HEADER_CONTEXT.get(stmt.first, ("", "\n pass"))
        source = before + source + after
    elif stmt.first == "@":  # a decorator: what it decorates comes later
        source += "\ndef _():\n pass"
    return _parses(source + "\n")


def _judge_sample(text: str) -> tuple[int, int]:
    """(valid statements, judged statements) of one sample, read as favourably as is fair."""
    readings = []
    # The sample may start inside a triple-quoted string (a docstring) that a later quote
    # closes: read it as is, and as if opened by each kind of triple quote it contains. The
    # reading with the fewest invalid statements (then the most valid ones) is kept.
    for opening in ("", '"""', "'''"):
        if opening and opening not in text:
            continue
        lines = (opening + text).split("\n")[:-1]  # complete lines: drop the unfinished one
        judged = _statements(lines)[1:]  # the first may have begun before the sample
        n_valid = sum(_statement_parses(s) for s in judged)
        readings.append((len(judged) - n_valid, -n_valid))
    n_invalid, minus_valid = min(readings)
    return -minus_valid, n_invalid - minus_valid


def python_validity(texts: str | Sequence[str], *, unit: str = "statement") -> float:
    """The fraction of generated Python that parses (`ast.parse`), pooled over `texts`.

    unit="statement" (default): a fixed-length sample is a window cut out of a longer
    program. It almost always ends in the middle of a statement and may begin in the middle of
    one, or inside a docstring, so asking whether a whole sample parses would call almost every
    sample invalid, whatever the model. Instead each sample is cut into statements, and each
    statement is judged on its own:

    1. only complete lines count (the text after the last newline is unfinished);
    2. Python's tokenizer splits them into logical lines, so a statement spread over several
       lines (open brackets, a multi-line string) is one unit; a statement left open at the
       end of the sample is dropped, and so is the first one (it may have begun earlier);
    3. each statement is parsed without its indentation; a compound statement's header
       (``def f(x):``, ``else:``, ``@cache``) is parsed with a stand-in body ``pass`` (and
       ``else``/``elif``/``except``/``finally`` after a stand-in ``if``/``try``), since its
       real body is judged as the statements that follow;
    4. a sample may begin inside a triple-quoted string (a docstring) that a quote further on
       closes; so it is also read as if opened by each kind of triple quote it contains, and
       the reading with the fewest invalid statements is kept. (Text before a sample's first
       triple quote can thus be excused as the end of a docstring.)

    The result is (valid statements) / (judged statements) over all samples. It measures local
    syntax, not structure (indentation between statements is not checked): windows of real
    standard-library code (256 characters from a line start) score about 0.93, shuffled
    characters about 0.15; the misses are docstring prose whose quotes lie outside the window.

    unit="sample": the fraction of samples that parse as a whole (after removing their common
    indentation). Fair only for complete programs, e.g. samples cut at a known end.

    Raises ValueError when no sample has a statement to judge (samples too short).
    """
    if unit not in VALIDITY_UNITS:
        raise ValueError(f"unit must be one of {VALIDITY_UNITS}, got {unit!r}")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings (decode the ids first)")
    if unit == "sample":
        return sum(_parses(textwrap.dedent(t)) for t in texts) / len(texts)
    counts = [_judge_sample(t) for t in texts]
    n_judged = sum(n for _, n in counts)
    if n_judged == 0:
        raise ValueError(
            "no sample holds a complete statement after its first one: generate longer "
            "samples, or use unit='sample' for complete programs"
        )
    return sum(v for v, _ in counts) / n_judged
