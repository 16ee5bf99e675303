"""Checks for notebook 11 (scaling out): sharding a batch and averaging gradients."""

from __future__ import annotations

import torch

from course_lib.checks._core import CheckFailed, expect_close, run_check

SOLUTION = "see notebooks/solutions/11_scaling_out_solutions.ipynb"


def check_shard(shard) -> bool:
    """`shard(batch, rank, world_size)`: this process's equal, contiguous slice of the batch."""

    def test() -> str:
        batch = torch.arange(24).view(12, 2)
        for world in (1, 2, 3, 4):
            pieces = [shard(batch, rank, world) for rank in range(world)]
            for rank, piece in enumerate(pieces):
                if not isinstance(piece, torch.Tensor):
                    raise CheckFailed(f"shard should return a tensor, got {type(piece).__name__}")
                if piece.shape != (12 // world, 2):
                    raise CheckFailed(
                        f"with {world} processes each shard should hold {12 // world} of the 12 "
                        f"rows, rank {rank} got shape {tuple(piece.shape)}: slice rows, not columns"
                    )
            together = torch.cat(pieces)
            if not torch.equal(together.sort(dim=0).values, batch):
                raise CheckFailed(
                    f"with {world} processes the shards do not cover the batch exactly once: "
                    "rank r should take rows r*n : (r+1)*n with n = B // world_size"
                )
            if not torch.equal(together, batch):
                raise CheckFailed(
                    "the shards cover the batch but out of order: rank 0 should take the "
                    "first rows, so that the run matches a single process row for row"
                )
        try:
            shard(torch.zeros(10, 2), 0, 4)
        except ValueError:
            return "A batch that does not split evenly is refused, as it should be."
        raise CheckFailed(
            "a batch of 10 rows cannot be split evenly over 4 processes: raise ValueError "
            "(uneven shards would weight some rows more than others in the averaged gradient)"
        )

    return run_check("shard", SOLUTION, test)


def check_average_gradients(average_gradients) -> bool:
    """`average_gradients(per_process)`: the element-wise mean of each parameter's gradients."""

    def test() -> str:
        generator = torch.Generator().manual_seed(0)
        w = torch.randn(3, 2, generator=generator, requires_grad=True)
        x = torch.randn(8, 3, generator=generator)
        full = ((x @ w) ** 2).mean()  # the single-process loss over the whole batch
        (full_grad,) = torch.autograd.grad(full, w)
        per_process = []
        for rank in range(4):
            part = ((x[2 * rank : 2 * rank + 2] @ w) ** 2).mean()
            per_process.append(list(torch.autograd.grad(part, w)))
        averaged = average_gradients(per_process)
        if not isinstance(averaged, list | tuple) or len(averaged) != 1:
            raise CheckFailed(
                "return one averaged gradient per parameter (a list as long as each "
                f"process's list), got {type(averaged).__name__} of length "
                f"{len(averaged) if hasattr(averaged, '__len__') else '?'}"
            )
        if torch.allclose(averaged[0], 4 * full_grad, atol=1e-6):
            raise CheckFailed(
                "you summed the gradients: divide by the number of processes (all-reduce sums; "
                "DDP then divides by the world size so each process's step equals one big step)"
            )
        expect_close(
            averaged[0],
            full_grad,
            "the averaged gradient",
            atol=1e-6,
            hint="the mean of the shards' gradients should equal the whole batch's gradient",
        )
        return "The average of the shards' gradients is the whole batch's gradient."

    return run_check("average_gradients", SOLUTION, test)


# -- exercise 3 (predict, then run): two processes against one -------------------------------

_CHOICES = {
    "identical": "bit for bit the same validation losses",
    "rounding": "the same up to floating-point rounding (differences around 1e-7)",
    "noise": "different at the second or third decimal, like two runs with different seeds",
}


def check_two_process_prediction(prediction, largest_difference) -> bool:
    """Exercise 3 (predict, then run). `prediction`, one of "identical", "rounding", "noise":
    how the validation losses of one and two processes will compare, chosen before the runs;
    `largest_difference`: the largest |difference| the runs then measured."""

    def test() -> str:
        if prediction is ...:
            raise NotImplementedError
        if prediction not in _CHOICES:
            raise CheckFailed(f"prediction should be one of {sorted(_CHOICES)}, got {prediction!r}")
        worst = float(largest_difference)
        measured = "identical" if worst == 0 else "rounding" if worst < 1e-4 else "noise"
        if prediction == "rounding" and measured in ("identical", "rounding"):
            return (
                f"Largest difference {worst:.1e}. Same data, same seeds, the same averaged "
                "gradient: only the order of the additions in the all-reduce differs, and "
                "float additions in another order round differently."
            )
        if prediction == "identical" and worst == 0:
            return (
                "Bit-identical this time; in general expect rounding differences: the "
                "all-reduce adds the shards' sums in another order, and float addition is not "
                "associative."
            )
        if prediction == "identical":
            raise CheckFailed(
                f"measured a largest difference of {worst:.1e}. The averaged gradient is the "
                "same sum computed in another order (each process sums its shard, then the "
                "all-reduce adds the shards), and float addition is not associative: expect "
                "rounding differences, which can also happen to cancel at some steps"
            )
        if prediction == "noise":
            raise CheckFailed(
                f"measured a largest difference of {worst:.1e}: the runs are not two different "
                "experiments. Every process draws the same global batch from the same seed "
                "and keeps its shard, and the averaged gradient equals the whole batch's"
            )
        raise CheckFailed(f"measured {worst:.1e}, which is not what {prediction!r} says")

    return run_check("two_process_prediction", SOLUTION, test)


# -- exercise 3 (debug): a data loader that breaks the equivalence ----------------------------

N_ROWS = 1000  # the training rows the exercise's loader draws from


def colleagues_rows(batch_size, rank, world_size, seed):
    """The notebook's planted bug, kept here so the check can recognise it unchanged."""
    generator = torch.Generator().manual_seed(seed + rank)  # each process its own stream
    return torch.randint(0, N_ROWS, (batch_size // world_size,), generator=generator)


def check_rows_fix(rows_for) -> bool:
    """Exercise 3 (debug). The fixed `rows_for(batch_size, rank, world_size, seed)`: the
    training rows process `rank` uses at one step, such that the processes' rows, in rank
    order, are exactly the rows one process would use: `torch.randint(0, N_ROWS,
    (batch_size,))` from a generator seeded with `seed`."""

    def test() -> str:
        for batch_size, world, seed in ((8, 2, 0), (12, 3, 5), (16, 4, 11), (6, 1, 3)):
            single = torch.randint(
                0, N_ROWS, (batch_size,), generator=torch.Generator().manual_seed(seed)
            )
            parts = [rows_for(batch_size, rank, world, seed) for rank in range(world)]
            for rank, part in enumerate(parts):
                if not isinstance(part, torch.Tensor) or part.shape != (batch_size // world,):
                    raise CheckFailed(
                        f"rank {rank} of {world} should get {batch_size // world} row indices "
                        f"(a 1-D tensor), got {part!r}"[:300]
                    )
            together = torch.cat(parts)
            if torch.equal(together, single):
                continue
            if world > 1 and all(
                torch.equal(p, colleagues_rows(batch_size, r, world, seed))
                for r, p in enumerate(parts)
            ):
                raise CheckFailed(
                    f"that is still the colleague's loader: with {world} processes the run "
                    "sees other rows than one process would, so the two runs are not the same "
                    "experiment. What must every process draw, from which seed?"
                )
            if sorted(together.tolist()) == sorted(single.tolist()):
                raise CheckFailed(
                    "the right rows, in another order: rank 0 should take the first slice of "
                    "the global batch, so each process's shard matches the single run's rows"
                )
            raise CheckFailed(
                f"with batch {batch_size}, {world} processes and seed {seed} the processes "
                f"use rows {together.tolist()}, one process {single.tolist()}: draw the "
                "global batch from the shared seed in every process, then keep your slice"
            )
        return (
            "Every process draws the same global batch from the same seed and keeps its slice, "
            "as course_lib.train does: the rows, and so the averaged gradient, are one "
            "process's exactly."
        )

    return run_check("rows_fix", SOLUTION, test)
