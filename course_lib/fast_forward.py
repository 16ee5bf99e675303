"""The network's forward for the optimized samplers (notebook 09): what `fast` calls each step.

Three ways to make one forward cheaper, each a switch of `fast`'s options:

- `PackedLinear` / `prepack_weights` (prepacked_weights, CPU): every Linear's weight laid out
  once for the kernel that reads it every step.
- `static_forward` (static_buffers): gpt-fast's forward over a preallocated KV cache, with
  fixed shapes and position tensors, so one compiled or captured step serves every position.
  `sliced_forward` is its variant for fused attention kernels: only the filled keys, and no
  mask where none is needed (the GPU benchmark measures whether that is faster).
- `GraphedStep` (cuda_graphs): such a step captured in a CUDA graph and replayed.

`fast` re-exports these names (`fast.static_forward` is this module's `static_forward`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.model import KVCache, Transformer, apply_rotary, attention_mask

# -- weights laid out once for the CPU kernel that reads them every step -------------------


class PackedLinear(nn.Module):
    """`F.linear(x, weight, bias)` for inference on a CPU, its weight laid out once.

    The layout is fixed when the layer is built, for calls of about `rows` rows (any number
    works): with one row, the weight transposed to (in, out), so `addmm` is a
    matrix-vector product over contiguous memory; with more, oneDNN's blocked layout
    (`torch.ops.mkldnn`, what torch.compile's CPU weight freezing uses), multiplied by
    kernels oneDNN generates for this CPU, with no per-call repacking of the weight. Outputs equal `F.linear`'s up to the order of
    the float32 sums (a relative difference of about 1e-6). Inference only: no gradients.
    bfloat16 weights (for a CPU with bfloat16 units, `fast_options.half_dtype`) always take
    oneDNN's layout, and their inputs must be bfloat16 too.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> None:
        super().__init__()
        if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"PackedLinear packs float32 or bfloat16 CPU weights, got {weight.dtype} on "
                f"{weight.device}"
            )
        self.out_features, self.in_features = weight.shape
        self.onednn = rows > 1 or weight.dtype == torch.bfloat16
        weight = weight.detach()
        if self.onednn:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        else:
            self.weight = weight.t().contiguous()  # (in, out)
        self.bias = None if bias is None else bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features).contiguous()
        if self.onednn:
            y = torch.ops.mkldnn._linear_pointwise(x2d, self.weight, self.bias, "none", [], "")
        elif self.bias is None:
            y = x2d @ self.weight
        else:
            y = torch.addmm(self.bias, x2d, self.weight)
        return y.view(*x.shape[:-1], self.out_features)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """`F.gelu(self(x))` (the exact, erf form), fused into oneDNN's matmul where the layer
        has oneDNN's layout: one call instead of two (a forward of a few positions on a CPU
        pays per call)."""
        if not self.onednn:
            return F.gelu(self(x))
        x2d = x.reshape(-1, self.in_features).contiguous()
        y = torch.ops.mkldnn._linear_pointwise(x2d, self.weight, self.bias, "gelu", [], "none")
        return y.view(*x.shape[:-1], self.out_features)


def prepack_weights(model: Transformer, rows: int) -> Transformer:
    """A copy of `model` whose Linear layers are `PackedLinear`s for steps of `rows` rows.

    The copy is for inference on a CPU; later changes to `model`'s weights do not reach it.
    A bfloat16 model gives a bfloat16 copy (`self_speculative`'s and `draft_tree`'s rows).
    """
    if packing_problem():
        raise ValueError(f"prepacked weights cannot run here: {packing_problem()}")
    packed = copy.deepcopy(model)
    for module in list(packed.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child.weight, child.bias, rows))
    return packed


@functools.cache
def packing_problem() -> str | None:
    """Why `PackedLinear` cannot run with this PyTorch (None when it can)."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch was built without oneDNN (mkldnn)"
    try:
        probe = PackedLinear(torch.ones(3, 4), torch.zeros(3), rows=2)
        if not torch.allclose(probe(torch.ones(2, 4)), torch.full((2, 3), 4.0)):
            return "oneDNN's packed matmul gave a wrong answer on a probe"
    except (RuntimeError, AttributeError, NotImplementedError) as err:
        return f"oneDNN's packed matmul is missing ({type(err).__name__}: {err})"
    return None


# -- gpt-fast's static-cache forward --------------------------------------------------------


def _cache_of_length(cache: KVCache, length: int) -> KVCache:
    """`cache` cut to its first `length` positions (views): a static forward over it attends
    to those alone, for a bidirectional model whose sequence is shorter than its context."""
    cache.keys = [k[:, :, :length] for k in cache.keys]
    cache.values = [v[:, :, :length] for v in cache.values]
    cache.capacity = length
    return cache


def static_forward(
    model: Transformer,
    ids: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    masked: bool = True,
) -> torch.Tensor:
    """Logits (B, T, V) of `ids` (B, T) at `positions` (T,) against a static KV cache.

    The same computation as `model(ids, cache=...)` for a causal or block-causal model,
    written for fixed shapes: the new keys and values go to `positions` (a tensor, not a
    Python int, so one compiled or captured step serves every position) and the queries
    attend over the whole cache under the model's own mask, which hides every position not
    yet written (`masked=False`: no mask, for a caller that knows it would hide nothing, as
    `sliced_forward` does). Dropout is left out: samplers run in eval mode.
    """
    config = model.config
    B, T = ids.shape
    C, H, D = config.d_model, config.n_head, config.head_dim
    key_positions = torch.arange(cache.capacity, device=ids.device)
    mask = attention_mask(config, positions, key_positions) if masked else None  # (T, capacity)
    x = model.embed(ids, positions)  # (B, T, C)
    rotary = model.rotary(positions)  # None unless the model uses rotary positions
    for layer, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv(block.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        cache.keys[layer].index_copy_(2, positions, k)
        cache.values[layer].index_copy_(2, positions, v)
        y = F.scaled_dot_product_attention(
            q, cache.keys[layer], cache.values[layer], attn_mask=mask
        )  # (B, H, T, D)
        x = x + block.attn.proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))  # (B, T, V)


def sliced_forward(model: Transformer, ids: torch.Tensor, start: int, cache: KVCache):
    """`static_forward` at positions start..start+T-1 (`start` a Python int) over the cache's
    first start+T positions only, and without a mask where the model's would hide none of
    them (`hides_nothing`). Then `scaled_dot_product_attention` may pick its fused (flash)
    kernels on a GPU and reads only the filled keys; the price is a shape that changes with
    `start`: a compiled or captured step serves one position, not all. The GPU benchmark
    measures whether that pays (`bench_sizes.size_rows`).
    """
    end = start + ids.shape[1]
    view = copy.copy(cache)  # the same buffers, cut to the filled part (views write through)
    view.keys = [k[:, :, :end] for k in cache.keys]
    view.values = [v[:, :, :end] for v in cache.values]
    view.capacity = end
    positions = torch.arange(start, end, device=ids.device)
    masked = not hides_nothing(model.config, start, ids.shape[1])
    return static_forward(model, ids, positions, view, masked=masked)


def hides_nothing(config, start: int, n_new: int) -> bool:
    """Whether the model's own mask (`attention_mask`) lets new positions start..start+n_new-1
    see every position before them and each other: a causal model's single new position,
    positions within one block of a block-causal model, any bidirectional model. The mask
    is built on the CPU, so asking reads nothing back from a GPU."""
    end = start + n_new
    mask = attention_mask(config, torch.arange(start, end), torch.arange(end))
    return mask is None or bool(mask.all())


class GraphedStep:
    """`fn(*inputs)` captured in a CUDA graph and replayed (shapes fixed at capture).

    `fn` takes tensors and returns a tensor or a tuple of them: a step's network (ids,
    positions -> logits), or a whole denoising step (`fast.FastDiffusionSampler.whole_step`).
    Inputs are copied into the graph's own buffers; the outputs are the graph's output
    buffers, overwritten by the next replay (use them before calling again). Python values
    `fn` reads are frozen at capture: bind them into `fn` (a `functools.partial`) and keep
    one graph per value.
    """

    def __init__(self, fn: Callable, *inputs: torch.Tensor) -> None:
        self.inputs = [t.clone() for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up on a side stream, as capture requires
            for _ in range(3):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        for buffer, t in zip(self.inputs, inputs, strict=True):
            buffer.copy_(t)
        self.graph.replay()
        return self.outputs
