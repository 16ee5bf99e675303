"""The optimized samplers' switches and stages (notebook 09): which costs `fast`'s samplers
remove, and which of them a device can run.

Each optimization is a switch of `DiffusionOptimizations` or `AROptimizations`;
`DIFFUSION_STAGES` and `AR_STAGES` turn them on one after another, and `stages_for(device)`
keeps the stages a device can run. `fast` re-exports every name here (`fast.stages_for` is
this module's `stages_for`).

The diffusion switches, in the order the stages add them:

- inference_mode: no autograd bookkeeping (the naive loop forgets it).
- vectorized_unmask: choose and commit the tokens of every row at once (not row by row).
- no_sync: no device-to-host reads inside the loop where the reference's random-number
  contract allows it. "confidence" knows how many tokens each step commits before it runs,
  so its loop reads nothing back. "threshold" and "ancestral" must learn whether a block
  is finished before drawing the next step's numbers (the reference stops drawing then),
  and ancestral skipping must learn whether a step changed anything: one read per step.
- float64_only_where_needed: float64 probabilities for the block's positions only, not
  for every position the forward scored.
- kv_cache (block-causal models): keep the finished blocks' keys and values and run only
  the block being denoised (exact: nothing earlier can see it). Bidirectional models have
  no exact cache (see `sampling.prefix_cache_error`); for them it does nothing.
- static_buffers: gpt-fast's static cache: one preallocated KV cache per sampler, and a
  step of fixed shapes that writes its keys at position *tensors* and attends over the
  whole cache under the model's mask. Nothing is allocated or resized per step, and the
  step can be compiled once and captured in a CUDA graph.
- skip_unchanged ("ancestral"): a step that unmasked nothing leaves the input unchanged,
  so the next step reuses the probabilities instead of calling the network.
- prepacked_weights (CPU): every Linear's weight is laid out once, when the sampler is
  built, for the matmul kernel that reads it every step (`PackedLinear`): oneDNN's blocked
  layout when a step scores several rows, a transposed copy for one row (a matrix-vector
  product over contiguous memory). PyTorch's default CPU matmul is MKL's, tuned first for
  Intel processors; oneDNN generates its kernels for the CPU it finds (AVX-512 where there
  is one; notebook 09 times both). Its sums run in another order, so logits move in the last
  bits: its tokens are checked, not assumed.
- bf16 (in the GPU stages; on a CPU when asked): a 16-bit copy of the weights (as gpt-fast
  keeps them: a decode step reads every weight, so their bytes are its time) and autocast,
  in the dtype `half_dtype` picks by capability: bfloat16 on GPUs that have it, float16
  with float32 logits on those that do not (a T4), bfloat16 on a CPU whose bfloat16 units
  measure faster than float32 (refused elsewhere). SDPA then runs its fused kernels.
- no_host_reads (in the GPU stages): the block's loop reads nothing back from the device.
  Each block's random numbers are drawn before its loop, as many as its steps could use, so
  how many steps run no longer moves the random stream; every block then runs all its steps
  (a finished block's change nothing, and ancestral decoding calls the network every step).
  On a GPU a read stalls the queue of launched kernels and cannot be captured in a CUDA
  graph; on a CPU it costs nothing, while the extra steps cost forwards, so the CPU's stages
  leave it out. Where the reference finishes a block early its later blocks draw other
  numbers: tokens equal the reference's only where every block ran all its steps.
- cuda_graphs (CUDA): capture the step once and replay it: one launch instead of hundreds.
  With no_host_reads, the whole step (`FastDiffusionSampler.whole_step`: the network, the
  float64 sampling, the step rule, the commit and the cache write) is one graph per shape
  and setting; without it (a step must read the host), the network alone is.
- compile: torch.compile of the step, fusing its small kernels (compile time is reported
  apart by the benchmarks; on a CPU it takes a minute and buys little). It compiles the
  dense weights: inductor cannot lower oneDNN's packed ones, so on a CPU the compile stage
  leaves prepacked_weights off.

The AR decoder (`FastARDecoder`) gets gpt-fast's treatment with the same kind of switches:
inference_mode; no_sync (tokens stay on the device instead of passing through Python lists);
kv_cache; static_buffers (a preallocated output, the static cache and a decode step of fixed
shape); prepacked_weights (CPU); bf16, cuda_graphs and compile. Batching is no switch: every
sampler takes a `batch_size`, and the benchmarks sweep it. `stages_for(device)` lists the
stages a device can run (on a CPU: no bf16, no CUDA graphs; on a GPU: no prepacked weights);
on a CPU with fast bfloat16, `cpu_bf16_stage` adds bf16 to the last float32 stage.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from course_lib import env
from course_lib.fast_forward import packing_problem
from course_lib.model import Transformer, device_and_dtype

CUDA_ONLY = ("bf16", "cuda_graphs")
CPU_ONLY = ("prepacked_weights",)
GPU_GAINS = ("no_host_reads",)  # run anywhere, but on a CPU they cost and save nothing


@dataclass(frozen=True)
class DiffusionOptimizations:
    """Which costs the diffusion sampler removes (see the module docstring)."""

    inference_mode: bool = True
    vectorized_unmask: bool = True
    no_sync: bool = True
    float64_only_where_needed: bool = True
    kv_cache: bool = True
    static_buffers: bool = True
    skip_unchanged: bool = True
    prepacked_weights: bool = False  # CPU only (oneDNN); tokens checked, not assumed
    bf16: bool = False  # CUDA only
    no_host_reads: bool = False  # pays only on a GPU (not in a CPU's stages)
    cuda_graphs: bool = False  # CUDA only
    compile: bool = False


@dataclass(frozen=True)
class AROptimizations:
    """Which costs the AR decoder removes: gpt-fast's recipe, one switch at a time."""

    inference_mode: bool = True
    no_sync: bool = True  # tokens stay on the device (no .tolist() per token)
    kv_cache: bool = True
    static_buffers: bool = True  # preallocated output, static cache, fixed-shape decode step
    prepacked_weights: bool = False  # CPU only (oneDNN); tokens checked, not assumed
    bf16: bool = False  # CUDA only
    cuda_graphs: bool = False  # CUDA only
    compile: bool = False


def _cumulative(options_type) -> list[tuple[str, object]]:
    """("naive", nothing on), then each switch turned on after the ones before it."""
    current = options_type(**{f.name: False for f in fields(options_type)})
    stages = [("naive", current)]
    for f in fields(options_type):
        current = replace(current, **{f.name: True})
        stages.append((f.name, current))
    return stages


DIFFUSION_STAGES: list[tuple[str, DiffusionOptimizations]] = _cumulative(DiffusionOptimizations)
AR_STAGES: list[tuple[str, AROptimizations]] = _cumulative(AROptimizations)


def needs_cuda(options) -> list[str]:
    """The switches of `options` that only a CUDA device has."""
    return [name for name in CUDA_ONLY if getattr(options, name)]


def stages_for(device: torch.device | str, stages: list | None = None) -> list:
    """The (name, options) stages that run on `device`.

    The switches the device lacks stay off, and a stage whose only change was one of them is
    dropped: on a CUDA device the CPU-only prepacked_weights, elsewhere the CUDA-only bf16
    and cuda_graphs and no_host_reads, which pays only on a GPU (so on a CPU "compile"
    follows "prepacked_weights"), and prepacked_weights too where this PyTorch has no oneDNN
    (`packing_problem`). On a CPU the compile stage compiles the dense weights (inductor
    cannot lower oneDNN's packed ones).
    """
    stages = DIFFUSION_STAGES if stages is None else stages
    if torch.device(device).type == "cuda":
        absent = CPU_ONLY
    else:
        absent = CUDA_ONLY + GPU_GAINS + (CPU_ONLY if packing_problem() else ())
    runnable = []
    for name, options in stages:
        if name in absent:
            continue
        options = replace(options, **{n: False for n in absent if hasattr(options, n)})
        if options.compile:
            options = replace(options, prepacked_weights=False)
        runnable.append((name, options))
    return runnable


def final_stage(stages: list, *, compile: bool = False) -> tuple[str, object]:
    """The last (name, options) of `stages` without compile (compile=False), or the last one:
    the fastest stage a sampler runs by default (compile is timed apart, its rows their own)."""
    return [s for s in stages if compile or not s[1].compile][-1]


def cpu_bf16_stage(stages: list | None = None) -> tuple[str, object] | None:
    """("bf16", options): the last float32 CPU stage of `stages` (default: the diffusion
    sampler's) with bf16 on and prepacked_weights off, where this CPU's bfloat16 is measured
    fast (`half_dtype`); None elsewhere. Not in `stages_for`: on a CPU the course's stages keep
    float32's tokens, and bf16 changes them, so its text is judged by quality instead."""
    if half_dtype("cpu") is None:
        return None
    options = final_stage(stages_for("cpu", stages))[1]
    return "bf16", replace(options, bf16=True, prepacked_weights=False)


def _check_options(options, model: Transformer) -> None:
    device, dtype = device_and_dtype(model)
    if options.cuda_graphs and device.type != "cuda":
        raise ValueError(
            f"cuda_graphs needs a CUDA device, this model is on {device}: turn it off (CUDA "
            "graphs do not exist there)"
        )
    if options.bf16 and half_dtype(device) is None:
        raise ValueError(
            f"bf16 needs a device with fast 16-bit arithmetic, and {device} has none here (a "
            "CPU without bfloat16 units emulates it, many times slower than float32): turn it off"
        )
    if options.bf16 and options.prepacked_weights:
        raise ValueError("prepacked_weights packs float32 weights: turn it or bf16 off")
    if (options.compile or options.cuda_graphs) and not options.static_buffers:
        raise ValueError("compile and cuda_graphs need static shapes: turn static_buffers on")
    if options.prepacked_weights:
        if device.type != "cpu":
            raise ValueError(
                f"prepacked_weights lays weights out for oneDNN's CPU kernels; this model is "
                f"on {device}: turn it off (on a GPU, bf16 is the weights' speed-up)"
            )
        if dtype != torch.float32:
            raise ValueError(
                f"prepacked_weights packs float32 weights, this model is {dtype}: turn it off"
            )
        if options.compile:
            raise ValueError(
                "prepacked_weights and compile do not combine: inductor cannot lower oneDNN's "
                "packed weights; turn one of them off"
            )
        if packing_problem():
            raise ValueError(f"prepacked_weights cannot run here: {packing_problem()}")


def half_dtype(device: torch.device | str) -> torch.dtype | None:
    """The 16-bit dtype the `bf16` switch runs in on `device`, chosen by capability.

    - a CUDA GPU with bfloat16 (Ampere and newer): bfloat16;
    - a CUDA GPU without it (a T4, the free classroom GPU): float16, with the final layer
      norm and the logits kept in float32 (float16's range is narrow; the sampler's softmax
      is float64 anyway);
    - a CPU: bfloat16 where it has bfloat16 units *and* a bfloat16 matmul measures at least
      1.5x faster than float32 (`env.autocast_dtype`, training's own rule); without units it
      is emulated, often many times slower, and the switch is refused;
    - anything else: None (float32 only).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return env.autocast_dtype(device)
    return None
