"""One forward step at several model sizes, against the roofline's prediction.

The gpu benchmark suite's "model sizes" rows (`bench_suites`): one step of AR decoding,
block diffusion and full diffusion at 85M-680M parameters (random init; bfloat16 with CUDA
graphs on a GPU, the tiny shape elsewhere, to check the code), each beside
`roofline.predict_step_time`; and for the cached steps the same step over the filled keys
alone and without a mask (`fast_forward.sliced_forward`): what fused attention buys.
"""

from __future__ import annotations

import torch

from course_lib.bench_suites import SHAPES, Suite, _guarded, _random_model

GPU_SIZES = (  # for AR decode vs diffusion step throughput (random init, bf16)
    dict(context_len=1024, n_layer=12, n_head=12, d_model=768),
    dict(context_len=1024, n_layer=24, n_head=16, d_model=1024),
    dict(context_len=1024, n_layer=24, n_head=16, d_model=1536),
)


def size_rows(suite: Suite, ceilings, *, batches=(1, 16, 64), full_batches=(1, 8)) -> None:
    """One step of AR decoding, block diffusion and full diffusion at several model sizes.

    Random-init models (bfloat16 with CUDA graphs on a GPU), static caches half full:
    seconds per step, positions scored per second, attained FLOP/s and the roofline model's
    prediction. `break_even_tokens_per_step` (block-diffusion rows): how many tokens one
    block step must commit to match AR decoding's tokens/s at the same batch.
    """
    from course_lib import fast

    cuda = suite.device.type == "cuda"
    options = fast.AROptimizations(bf16=cuda, cuda_graphs=cuda)
    for shape in GPU_SIZES if cuda else (SHAPES["tiny"],):
        ar_step_s: dict[int, float] = {}
        for kind, attention, kind_batches in (
            ("ar_decode", "causal", batches),
            ("block_diffusion", "block_causal", batches),
            ("diffusion", "bidirectional", full_batches),
        ):
            model = _random_model(shape, attention, suite.device)
            if cuda:
                model = model.to(torch.bfloat16)
            for batch in kind_batches:
                base = {
                    "section": "model sizes",
                    "sampler": kind,
                    "model": {**model.config.to_dict(), "params": model.num_params()},
                    "batch": batch,
                    "dtype": "bfloat16" if cuda else "float32",
                    "device": str(suite.device),
                }
                row = _guarded(
                    suite,
                    base,
                    lambda model=model, kind=kind, batch=batch, ar=ar_step_s: _step_fields(
                        suite, model, kind, batch, options, ceilings, ar
                    ),
                )
                if row is not None and kind == "ar_decode":
                    ar_step_s[batch] = row["step_s"]
            del model
            if cuda:
                torch.cuda.empty_cache()


def _step_fields(suite, model, kind, batch, options, ceilings, ar_step_s) -> dict:
    from course_lib import fast, roofline
    from course_lib.model import device_and_dtype, forward_flops

    config, device = model.config, suite.device
    dtype = roofline.dtype_name(device_and_dtype(model)[1])
    C = config.context_len
    if kind == "diffusion":  # the whole sequence, no cache
        new, context = C, 0
        cost = roofline.diffusion_step_cost(config, batch_size=batch, length=C, dtype=dtype)
        step = fast.Step(lambda ids, positions: model(ids), options, device)
    else:  # new positions after a static cache half full
        new, context = (1 if kind == "ar_decode" else config.block_len), C // 2
        cost = roofline.forward_cost(
            config,
            batch_size=batch,
            new_tokens=new,
            context=context,
            uses_cache=True,
            dtype=dtype,
            kind=kind,
        )
        cache = model.new_cache(batch)
        step = fast.Step(
            lambda ids, positions: fast.static_forward(model, ids, positions, cache),
            options,
            device,
        )
    ids = torch.zeros(batch, new, dtype=torch.long, device=device)
    positions = torch.arange(context, context + new, device=device)
    with torch.inference_mode():
        _, first_s, timing = suite.measure(lambda: step(ids, positions))
    fields = {
        "step_s": timing.median_s,
        "min_s": timing.min_s,
        "max_s": timing.max_s,
        "first_call_s": first_s,
        "new_positions": new,
        "context": context,
        "positions_per_s": batch * new / timing.median_s,
        "flop_per_s": forward_flops(config, batch * new, context + new) / timing.median_s,
    }
    if kind != "diffusion":  # the same step on the filled keys alone, unmasked (fused kernels)
        fields |= _sliced_fields(suite, model, ids, context, cache, options, timing.median_s)
    if kind == "ar_decode":
        fields["tokens_per_s"] = batch / timing.median_s
    if kind == "block_diffusion" and batch in ar_step_s:
        fields["break_even_tokens_per_step"] = timing.median_s / ar_step_s[batch]
    if ceilings is not None:
        predicted = roofline.predict_step_time(cost, ceilings)
        fields |= {"predicted_step_s": predicted.total_s, "predicted_bound": predicted.bound}
    return fields


def _sliced_fields(suite, model, ids, start, cache, options, static_s) -> dict:
    """`fast_forward.sliced_forward`'s step time beside `static_forward`'s (`static_s`): the
    cache cut to its filled part and no mask where the model's hides nothing, so that
    attention can run a fused (flash) kernel. A failure is reported, not raised."""
    from course_lib import fast
    from course_lib.fast_forward import sliced_forward

    try:
        step = fast.Step(
            lambda ids, positions: sliced_forward(model, ids, start, cache), options, suite.device
        )
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        with torch.inference_mode():
            _, _, timing = suite.measure(lambda: step(ids, positions))
    except Exception as err:  # the row keeps its static step's numbers
        return {"sliced_error": f"{type(err).__name__}: {err}"}
    return {"sliced_step_s": timing.median_s, "sliced_speedup": static_s / timing.median_s}
