"""What every exercise check shares: how a check reports success, failure or "not yet".

An exercise in a notebook is a function the learner writes, starting from a stub that raises
`NotImplementedError`. Its check runs it on test cases and

- prints a short confirmation when it is right,
- raises `CheckFailed` with a message a good TA would give (what is wrong, a hint) when not,
- prints where to find the solution when the stub is still untouched, so that a notebook
  runs top to bottom before the learner has attempted anything.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how."""


class Verdict(int):
    """What a check returns: truthy when the answer is right, falsy when not attempted yet.

    The check has already printed its message, so a notebook cell that ends with a check
    shows nothing more (no bare True or False under it).
    """

    def __new__(cls, correct: bool) -> Verdict:
        return super().__new__(cls, bool(correct))

    def __repr__(self) -> str:
        return "Verdict(correct)" if self else "Verdict(not attempted)"

    def _ipython_display_(self) -> None:
        """IPython shows nothing for a verdict: the check has already said it."""


def run_check(name: str, solution_hint: str, test: Callable[[], str | None]) -> Verdict:
    """Run `test`; report success, "not attempted yet" or the failure. Truthy if right.

    `test` calls the learner's function and raises `CheckFailed` on a wrong answer; it may
    return a sentence to print on success. `solution_hint` says where the solution lives.
    """
    try:
        detail = test()
    except NotImplementedError:
        print(
            f"[{name}] not attempted yet: fill in the function above and run this cell again. "
            f"(Stuck? {solution_hint})"
        )
        return Verdict(False)
    print(f"[{name}] correct." + (f" {detail}" if detail else ""))
    return Verdict(True)


def expect_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str = "",
) -> None:
    """Raise CheckFailed unless `actual` has `expected`'s shape and values (within tolerance)."""
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise CheckFailed(
            f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}. {hint}".strip()
        )
    if not torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol):
        worst = (actual.double() - expected.double()).abs().max().item()
        raise CheckFailed(f"{what} is off by up to {worst:.3g}. {hint}".strip())


def expect_inputs_unchanged(call: str, inputs, before) -> None:
    """Raise CheckFailed if the learner's `call` modified any of its `inputs` in place."""
    if not all(torch.equal(a, b) for a, b in zip(inputs, before, strict=True)):
        raise CheckFailed(
            f"{call} changed its inputs in place (e.g. conf.masked_fill_): the sampler still "
            "needs them. Build new tensors (masked_fill, without the underscore)."
        )


def expect_commit_mask(call: str, got, masked: torch.Tensor, target: str) -> None:
    """Raise CheckFailed unless `got` is a bool tensor shaped like `masked` (commit or not)."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{call} returned {type(got).__name__}; return a bool tensor.")
    if got.shape != masked.shape:
        raise CheckFailed(
            f"{call} has shape {tuple(got.shape)}; expected one decision per position, "
            f"{tuple(masked.shape)}."
        )
    if got.dtype != torch.bool:
        raise CheckFailed(
            f"{call} has dtype {got.dtype}; return a bool tensor (True = commit): the sampler "
            f"uses it in torch.where(commit, proposal, {target})."
        )


def expect_attention_mask(call: str, got, expected_shape: tuple, layout: str) -> None:
    """Raise CheckFailed unless `got` is a bool tensor of `expected_shape` (True = may
    attend); `layout` says what its rows and columns are."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{call} returned {type(got).__name__}; return a torch.Tensor.")
    if got.shape != expected_shape:
        raise CheckFailed(
            f"{call} has shape {tuple(got.shape)}, expected {tuple(expected_shape)}: {layout}."
        )
    if got.dtype != torch.bool:
        raise CheckFailed(
            f"{call} has dtype {got.dtype}; return a bool tensor (True = may attend). "
            "scaled_dot_product_attention ADDS a float mask to the scores instead of "
            "selecting with it, so a 0/1 float mask would silently let everything through."
        )


def as_number(value, what: str, *, hint: str = "", finite: bool | str = False) -> float:
    """`value` (a real number or a one-element tensor) as a float, or CheckFailed saying why.

    `hint` follows the message for a tensor of several elements; `finite` (True, or the hint to
    give) also refuses infinities and NaN.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CheckFailed(
                f"{what} should be one number, got a tensor of shape {tuple(value.shape)}"
                + (f": {hint}" if hint else "")
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckFailed(f"{what} should be a number, got {type(value).__name__}")
    value = float(value)
    if finite and not math.isfinite(value):
        detail = f": {finite}" if isinstance(finite, str) else ""
        raise CheckFailed(f"{what} is {value}, not a finite number{detail}")
    return value


def close(actual, expected, *, rtol: float = 1e-6, atol: float = 0.0) -> bool:
    """math.isclose for a learner's answer: False (not an error) if it is not a number."""
    try:
        return math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=atol)
    except (TypeError, ValueError):
        return False
