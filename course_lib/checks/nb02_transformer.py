"""Checks for notebook 02 (transformer): masks, attention and the parameter count.

- `check_causal_mask(causal_mask)` and `check_block_causal_mask(block_causal_mask)`: bool
  (L, L) masks, True = the query (row) may see the key (column), compared with
  `model.attention_mask`.
- `check_attention(attention)`: softmax(q k^T / sqrt(d), masked) v, compared with
  `torch.nn.functional.scaled_dot_product_attention`, with and without masks, for any number
  of leading dimensions and for fewer queries than keys (a KV cache).
- `check_param_count(count_params)`: a formula for `Transformer(config).num_params()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.checks._core import CheckFailed, expect_attention_mask, expect_close, run_check
from course_lib.model import ModelConfig, Transformer, attention_mask

SOLUTIONS = "The solutions are in notebooks/solutions/02_transformer_solutions.ipynb."


# -- masks -----------------------------------------------------------------------------------


def _library_mask(length: int, block_len: int | None) -> torch.Tensor:
    if block_len is None:
        config = ModelConfig(attention="causal", context_len=length)
    else:  # the mask rule itself does not need block_len to divide the length
        config = ModelConfig(attention="block_causal", context_len=block_len, block_len=block_len)
    positions = torch.arange(length)
    return attention_mask(config, positions, positions)


def _compare_masks(got, expected: torch.Tensor, call: str, block_len: int | None) -> None:
    layout = "one row per query position, one column per key position"
    expect_attention_mask(call, got, expected.shape, layout)
    if torch.equal(got, expected):
        return
    length = expected.shape[0]
    q, k = (got != expected).nonzero()[0].tolist()
    if block_len is None:
        if not got.diagonal().all():
            hint = (
                f"position {q} cannot see itself. Each position must see itself too "
                "(k <= q, not k < q): position 0 would otherwise see nothing at all, and a "
                "softmax over nothing is nan."
            )
        elif torch.equal(got, expected.T):
            hint = (
                "your mask is transposed: rows are queries and columns are keys, so row q "
                "is True at columns k <= q (torch.tril)."
            )
        elif got[q, k]:
            hint = f"your causal mask lets position {q} see position {k}, a later one: use k <= q."
        else:
            hint = f"your causal mask stops position {q} from seeing position {k}: use k <= q."
    else:
        bq, bk = q // block_len, k // block_len
        same = (
            torch.arange(length)[:, None] // block_len == torch.arange(length)[None, :] // block_len
        )
        if torch.equal(got, same):
            hint = (
                f"position {q} (block {bq}) cannot see position {k} (block {bk}): a block "
                "sees its own block AND every earlier block. Compare block indices with <=, "
                "not ==: k // block_len <= q // block_len."
            )
        elif got[q, k] and bk > bq:
            hint = (
                f"your mask lets position {q} (block {bq}) see position {k} (block {bk}), a "
                "later block: use k // block_len <= q // block_len."
            )
        elif bk == bq:
            hint = (
                f"position {q} cannot see position {k}, though both are in block {bq}: inside "
                "a block attention is bidirectional; only block indices are compared."
            )
        else:
            hint = (
                f"your mask stops position {q} (block {bq}) from seeing position {k} (block "
                f"{bk}), an earlier block: use k // block_len <= q // block_len."
            )
    raise CheckFailed(f"{call} is wrong at row {q}, column {k}: {hint}")


def _causal_cases(causal_mask: Callable) -> str:
    for length in (5, 1, 8):
        got = causal_mask(length)
        _compare_masks(got, _library_mask(length, None), f"causal_mask({length})", None)
    return "Row q is True at columns k <= q: each position sees itself and the past."


def check_causal_mask(causal_mask: Callable) -> bool:
    """Check `causal_mask(L) -> bool (L, L)` against model.attention_mask."""
    return run_check("causal mask", SOLUTIONS, lambda: _causal_cases(causal_mask))


def _block_causal_cases(block_causal_mask: Callable) -> str:
    cases = [(8, 2), (8, 4), (6, 3), (4, 4), (5, 1), (6, 4)]
    for length, block_len in cases:
        got = block_causal_mask(length, block_len)
        call = f"block_causal_mask({length}, {block_len})"
        _compare_masks(got, _library_mask(length, block_len), call, block_len)
    return "One block is bidirectional (block_len = L), blocks of 1 are causal, others between."


def check_block_causal_mask(block_causal_mask: Callable) -> bool:
    """Check `block_causal_mask(L, block_len) -> bool (L, L)` against model.attention_mask."""
    return run_check("block-causal mask", SOLUTIONS, lambda: _block_causal_cases(block_causal_mask))


# -- attention -------------------------------------------------------------------------------


def _attention_variants(q, k, v, mask) -> dict[str, torch.Tensor]:
    """Outputs of the typical wrong attentions, keyed by the hint that explains each."""
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1)

    def masked(s, fill=-math.inf):
        return s if mask is None else s.masked_fill(~mask, fill)

    variants = {
        "you forgot to scale the scores: divide q @ k^T by sqrt(head_dim) (here "
        f"sqrt({d})), which keeps the softmax from saturating.": masked(scores).softmax(-1) @ v,
        f"divide the scores by sqrt(head_dim) = sqrt({d}), not by head_dim.": masked(
            scores / d
        ).softmax(-1)
        @ v,
        "your softmax runs over the queries (dim -2); it must run over the keys (dim=-1), so "
        "each query's weights sum to 1.": masked(scores / math.sqrt(d)).softmax(-2) @ v,
    }
    if mask is not None:
        plain = scores / math.sqrt(d)
        variants.update(
            {
                "your output ignores the mask: set the disallowed scores (mask False) to -inf "
                "before the softmax.": plain.softmax(-1) @ v,
                "your mask is inverted: True means 'may attend', so fill the scores where the "
                "mask is False: scores.masked_fill(~mask, -inf).": plain.masked_fill(
                    mask, -math.inf
                ).softmax(-1)
                @ v,
                "a disallowed score of 0 still gets weight exp(0) = 1 in the softmax: fill "
                "with -inf, not 0.": plain.masked_fill(~mask, 0.0).softmax(-1) @ v,
                "you applied the mask after the softmax, so the weights no longer sum to 1: "
                "set the disallowed scores to -inf BEFORE the softmax.": (plain.softmax(-1) * mask)
                @ v,
            }
        )
    return variants


def _attention_cases(attention: Callable) -> str:
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    causal = _library_mask(6, None)
    cases = [
        ("q, k, v of shape (3, 4), no mask", randn(3, 4), randn(3, 4), randn(3, 4), None),
        (
            "q, k, v of shape (2, 3, 6, 8) (batch, heads, positions, head_dim), causal mask",
            randn(2, 3, 6, 8),
            randn(2, 3, 6, 8),
            randn(2, 3, 6, 8),
            causal,
        ),
        (
            "2 new queries against 6 keys (a KV cache), causal mask for positions 4 and 5",
            randn(1, 2, 2, 8),
            randn(1, 2, 6, 8),
            randn(1, 2, 6, 8),
            causal[4:],
        ),
        (
            "q, k, v of shape (1, 1, 6, 4), block-causal mask with blocks of 2",
            randn(1, 1, 6, 4),
            randn(1, 1, 6, 4),
            randn(1, 1, 6, 4),
            _library_mask(6, 2),
        ),
        (
            "large scores (q and k of size 30), no mask",
            randn(2, 5, 4, scale=30.0),
            randn(2, 5, 4, scale=30.0),
            randn(2, 5, 4),
            None,
        ),
    ]
    for what, q, k, v, mask in cases:
        try:
            got = attention(q.clone(), k.clone(), v.clone(), None if mask is None else mask.clone())
        except NotImplementedError:
            raise  # the stub: run_check reports "not attempted yet"
        except (RuntimeError, IndexError) as err:
            raise CheckFailed(
                f"attention raised {type(err).__name__} for {what}: {err}. Write it for any "
                "number of leading dimensions: q @ k.transpose(-2, -1) (k.T reverses ALL "
                "dimensions), softmax over dim=-1."
            ) from err
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            if torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
                continue
            if not torch.isfinite(got).all() and mask is None:
                raise CheckFailed(
                    f"attention returned nan or inf for {what}: exp() of a large score "
                    "overflows. Subtract each row's max score before exp (torch.softmax does "
                    "this for you)."
                )
            for hint, wrong in _attention_variants(q, k, v, mask).items():
                if torch.allclose(got, wrong, atol=1e-5, rtol=1e-4, equal_nan=True):
                    raise CheckFailed(f"attention is wrong for {what}: {hint}")
        expect_close(
            got,
            expected,
            f"attention's output for {what}",
            hint="out = softmax(q @ k^T / sqrt(d) with disallowed scores at -inf, dim=-1) @ v.",
        )
    return "Matches torch's scaled_dot_product_attention, with and without masks and caches."


def check_attention(attention: Callable) -> bool:
    """Check `attention(q, k, v, mask=None)` against F.scaled_dot_product_attention."""
    return run_check("attention", SOLUTIONS, lambda: _attention_cases(attention))


# -- parameter count -------------------------------------------------------------------------


def _param_variants(config: ModelConfig) -> dict[str, int]:
    """The counts the typical mistakes give, keyed by the hint that explains each."""
    d, f, vocab = config.d_model, config.mlp_ratio * config.d_model, config.vocab_size
    n = config.n_layer
    weights = 4 * d * d + 2 * d * f  # qkv (d x 3d), proj (d x d), fc (d x f), proj (f x d)
    biases = 3 * d + d + f + d
    norms = 2 * 2 * d  # two LayerNorms per block, weight and bias each
    right = n * (weights + biases + norms) + 2 * d + d * vocab
    embeddings = (vocab + 1) * d + config.context_len * d
    return {
        "you counted the embeddings; num_params() leaves the token and position embeddings "
        "out (the usual count for scaling laws and for FLOPs per token).": right + embeddings,
        "you counted the embeddings (and the token embedding has vocab_size + 1 rows: the "
        "mask id); num_params() leaves them out.": right + embeddings - d,
        "you left out the biases: every nn.Linear in a block has one (qkv: 3d, proj: d, "
        "fc: mlp_ratio*d, proj: d).": right - n * biases,
        "the output head has no bias (bias=False).": right + vocab,
        "the head predicts vocab_size tokens, not vocab_size + 1: the mask id is read, "
        "never predicted.": right + d,
        "you left out the LayerNorms: each has a weight and a bias of d_model values, two "
        "per block and one (ln_f) at the end.": right - n * norms - 2 * d,
        "a LayerNorm has a weight AND a bias: 2 * d_model parameters each.": right
        - n * norms // 2
        - d,
        "you forgot the final LayerNorm ln_f (2 * d_model).": right - 2 * d,
        "you forgot the output head (d_model x vocab_size, no bias).": right - d * vocab,
        "the MLP's hidden width is mlp_ratio * d_model.": right
        - n * (2 * d * f + f)
        + n * (2 * d * d + d),
        "attention has four d x d matrices: q, k and v (one Linear of d -> 3d) and the output "
        "projection.": right - n * 2 * d * d,
    }


def _param_cases(count_params: Callable) -> str:
    configs = [
        ModelConfig(),
        ModelConfig(vocab_size=7, context_len=16, n_layer=3, n_head=2, d_model=8, mlp_ratio=3),
        ModelConfig(vocab_size=98, context_len=8, n_layer=1, n_head=1, d_model=4, mlp_ratio=1),
    ]
    for config in configs:
        result = count_params(config)
        try:
            got = int(result)
        except (TypeError, ValueError) as err:
            raise CheckFailed(f"count_params returned {result!r}; return an int.") from err
        expected = Transformer(config).num_params()
        if got == expected:
            continue
        shown = (
            f"n_layer={config.n_layer}, d_model={config.d_model}, mlp_ratio={config.mlp_ratio}, "
            f"vocab_size={config.vocab_size}, context_len={config.context_len}"
        )
        hint = next(
            (h for h, w in _param_variants(config).items() if w == got),
            "count, per block, the weights and biases of attention's two Linears (qkv, proj), "
            "of the MLP's two Linears (fc, proj) and of the two LayerNorms; then the final "
            "LayerNorm and the head (no bias); leave the embeddings out.",
        )
        raise CheckFailed(
            f"for ModelConfig({shown}) you counted {got:,} parameters, the model has "
            f"{expected:,} (off by {got - expected:+,}): {hint}"
        )
    return "Every weight and bias accounted for; FLOPs per token follow from this count."


def check_param_count(count_params: Callable) -> bool:
    """Check `count_params(config) -> int` against Transformer(config).num_params()."""
    return run_check("parameter count", SOLUTIONS, lambda: _param_cases(count_params))


# -- exercise 1 (predict, then run): why divide by sqrt(d) ------------------------------------


def check_score_variance_prediction(prediction, measured) -> bool:
    """Exercise 1 (predict, then run). `prediction`: (variance of q.k, variance of
    q.k / sqrt(d)) for d = 64 and q, k with independent unit-variance entries, written before
    the run; `measured`: the same pair, measured. Right within 15% of the exact (64, 1)."""

    def test() -> str:
        if prediction is ...:
            raise NotImplementedError
        if not isinstance(prediction, tuple | list) or len(prediction) != 2:
            raise CheckFailed("prediction should be a pair: (variance of q.k, of q.k / sqrt(d))")
        unscaled, scaled = (float(x) for x in prediction)
        seen = f"measured {float(measured[0]):.1f} and {float(measured[1]):.2f}"
        if abs(unscaled - 64) <= 0.15 * 64 and abs(scaled - 1) <= 0.15:
            return (
                f"M{seen[1:]}. A sum of d independent products, each of variance 1, has variance d; "
                "dividing by sqrt(d) divides the variance by d."
            )
        if abs(unscaled - 8) < 1 and abs(scaled - 1) <= 0.15:
            raise CheckFailed(
                f"{seen}: 8 = sqrt(64) is the standard deviation of q.k. Variances of "
                "independent terms add: d terms of variance 1 give variance d"
            )
        if abs(unscaled - 1) < 0.15:
            raise CheckFailed(
                f"{seen}: each product q_i k_i has variance 1, and q.k adds up d = 64 of them, "
                "independent, so their variances add"
            )
        if abs(unscaled - 64) <= 0.15 * 64 and abs(scaled - 8) < 1:
            raise CheckFailed(
                f"{seen}: dividing a variable by c divides its variance by c^2: by d, not sqrt(d)"
            )
        raise CheckFailed(
            f"{seen}, against your ({unscaled:g}, {scaled:g}). How does the variance of a sum "
            "of independent terms grow with their number, and what does scaling by 1/c do to it?"
        )

    return run_check("score_variance_prediction", SOLUTIONS, test)
