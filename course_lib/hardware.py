"""Datasheet ceilings of common accelerators, each figure with its source (notebook 10).

Dense peak FLOP/s per dtype, memory bandwidth and L2 size. NVIDIA often quotes tensor-core
rates "with sparsity" (2:4 structured sparsity doubles them); a plain matmul reaches only
the dense rate, so those figures are stored as quoted and halved, and say so.
`ceilings.datasheet_ceilings(spec)` turns an entry into the performance model's ceilings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One datasheet number with where it comes from.

    `sparse_quote` is the figure as NVIDIA quotes it "with sparsity" (2:4 structured sparsity
    doubles the rate); `value` is then half of it, the dense rate a plain matmul can reach.
    `checked_against` names a second vendor document that gives the same figure ("" if the
    source is the only one: every source is NVIDIA's own datasheet or architecture whitepaper).
    """

    value: float
    unit: str
    source: str
    url: str
    note: str = ""
    sparse_quote: float | None = None
    checked_against: str = ""


@dataclass(frozen=True)
class HardwareSpec:
    """Dense peak FLOP/s per dtype, memory bandwidth and L2 size of one accelerator."""

    name: str
    flops: dict[str, Figure]  # dtype name ("float32", "tf32", "bfloat16", "float16") -> FLOP/s
    memory_bandwidth: Figure  # bytes/s
    cache_bytes: Figure  # L2, bytes

    def figures(self) -> dict[str, Figure]:
        """Every numeric field with its source, by field name."""
        return {
            **{f"flops.{k}": v for k, v in self.flops.items()},
            "memory_bandwidth": self.memory_bandwidth,
            "cache_bytes": self.cache_bytes,
        }


_T, _G, _MB = 1e12, 1e9, 2**20  # TFLOP/s, GB/s (decimal, as datasheets), NVIDIA's "MB" of L2
_SPARSE = "datasheet quotes {q:g} TFLOPS with sparsity; halved to the dense rate"

_H200 = ("NVIDIA H200 Tensor Core GPU datasheet", "https://www.nvidia.com/en-us/data-center/h200/")
_H100 = (
    "NVIDIA H100 Tensor Core GPU datasheet",
    "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
)
_HOPPER = (
    "NVIDIA H100 Tensor Core GPU Architecture whitepaper",
    "https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper",
)
_A100 = (
    "NVIDIA A100 Tensor Core GPU datasheet",
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
)
_AMPERE = (
    "NVIDIA A100 Tensor Core GPU Architecture whitepaper",
    "https://images.nvidia.com/aem-dam/en-zz/Solutions/data-center/nvidia-ampere-architecture-whitepaper.pdf",
)
_L4 = (
    "NVIDIA L4 Tensor Core GPU datasheet",
    "https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet",
)
_ADA = (
    "NVIDIA Ada GPU Architecture whitepaper",
    "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
)
_T4 = (
    "NVIDIA T4 Tensor Core GPU datasheet",
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf",
)
_TURING = (
    "NVIDIA Turing GPU Architecture whitepaper",
    "https://images.nvidia.com/aem-dam/en-zz/Solutions/design-visualization/technologies/turing-architecture/NVIDIA-Turing-Architecture-Whitepaper.pdf",
)


def _flops(tflops: float, doc: tuple[str, str], checked: str, note: str = "") -> Figure:
    return Figure(tflops * _T, "FLOP/s", *doc, note=note, checked_against=checked)


def _sparse(quoted: float, doc: tuple[str, str], checked: str) -> Figure:
    return Figure(
        quoted / 2 * _T,
        "FLOP/s",
        *doc,
        note=_SPARSE.format(q=quoted),
        sparse_quote=quoted * _T,
        checked_against=checked,
    )


def _gbs(gb_per_s: float, doc: tuple[str, str], checked: str, note: str = "") -> Figure:
    return Figure(gb_per_s * _G, "bytes/s", *doc, note=note, checked_against=checked)


def _l2(mb: float, doc: tuple[str, str], checked: str, note: str = "") -> Figure:
    return Figure(mb * _MB, "bytes", *doc, note=note, checked_against=checked)


# a second vendor document that gives the same figures (cross-checks)
_HOPPER_CHECK = f"{_HOPPER[0]} ({_HOPPER[1]}), its H100 SXM5 table"
_H200_CHECK = (
    f"{_HOPPER[0]} ({_HOPPER[1]}), the H100 SXM5's figures: the H200 is the same GH100 "
    "chip at the same clocks, with more and faster memory"
)
_AMPERE_CHECK = f"{_AMPERE[0]} ({_AMPERE[1]}), its A100 table"

CATALOG: dict[str, HardwareSpec] = {
    "H200 SXM": HardwareSpec(
        "H200 SXM",
        flops={
            "float32": _flops(67, _H200, _H200_CHECK),
            "tf32": _sparse(989, _H200, _H200_CHECK),
            "bfloat16": _sparse(1979, _H200, _H200_CHECK),
            "float16": _sparse(1979, _H200, _H200_CHECK),
        },
        memory_bandwidth=_gbs(4800, _H200, ""),
        cache_bytes=_l2(
            50,
            _HOPPER,
            "",
            note="NOT VERIFIED for the H200: its datasheet gives no L2 size; it is the H100 "
            "SXM5's GH100 configuration, whose L2 is 50 MB (Hopper whitepaper)",
        ),
    ),
    "H100 SXM": HardwareSpec(
        "H100 SXM",
        flops={
            "float32": _flops(67, _H100, _HOPPER_CHECK),
            "tf32": _sparse(989, _H100, _HOPPER_CHECK),
            "bfloat16": _sparse(1979, _H100, _HOPPER_CHECK),
            "float16": _sparse(1979, _H100, _HOPPER_CHECK),
        },
        memory_bandwidth=_gbs(3350, _H100, _HOPPER_CHECK),
        cache_bytes=_l2(50, _HOPPER, ""),
    ),
    "A100 80GB SXM": HardwareSpec(
        "A100 80GB SXM",
        flops={
            "float32": _flops(19.5, _A100, _AMPERE_CHECK),
            "tf32": _flops(156, _A100, _AMPERE_CHECK, note="dense; 312 with sparsity"),
            "bfloat16": _flops(312, _A100, _AMPERE_CHECK, note="dense; 624 with sparsity"),
            "float16": _flops(312, _A100, _AMPERE_CHECK, note="dense; 624 with sparsity"),
        },
        memory_bandwidth=_gbs(2039, _A100, ""),
        cache_bytes=_l2(40, _AMPERE, ""),
    ),
    "L4": HardwareSpec(
        "L4",
        flops={
            "float32": _flops(30.3, _L4, ""),
            "tf32": _sparse(120, _L4, ""),
            "bfloat16": _sparse(242, _L4, ""),
            "float16": _sparse(242, _L4, ""),
        },
        memory_bandwidth=_gbs(300, _L4, ""),
        cache_bytes=_l2(48, _ADA, "", note="not on the L4 datasheet: the AD104's L2"),
    ),
    "T4": HardwareSpec(
        "T4",
        flops={
            "float32": _flops(8.1, _T4, ""),
            "float16": _flops(
                65,
                _T4,
                "",
                note="'mixed precision (FP16/FP32)' tensor cores; Turing has no sparsity, so "
                "dense; Turing has no bfloat16 or TF32",
            ),
        },
        memory_bandwidth=_gbs(320, _T4, "", note="datasheet: '320+ GB/s'"),
        cache_bytes=_l2(4, _TURING, "", note="not on the T4 datasheet: the TU104's L2"),
    ),
    "RTX 4090": HardwareSpec(
        "RTX 4090",
        flops={
            "float32": _flops(82.6, _ADA, ""),
            "tf32": _flops(82.6, _ADA, "", note="dense; 165.2 with sparsity"),
            "bfloat16": _flops(165.2, _ADA, "", note="dense, FP32 accumulate; 330.4 with sparsity"),
            "float16": _flops(
                165.2,
                _ADA,
                "",
                note="dense, FP32 accumulate (PyTorch's); 330.3 with FP16 accumulate",
            ),
        },
        memory_bandwidth=_gbs(1008, _ADA, ""),
        cache_bytes=_l2(72, _ADA, "", note="the RTX 4090 enables 72 of AD102's 96 MB"),
    ),
}
