"""A tiny training run, the same in one process and under torchrun (used by test_train.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT.json

Every process trains; rank 0 saves the checkpoint last.pt beside OUT.json and writes the
per-step losses (averaged over the processes) to OUT.json.
"""

import json
import sys

import torch

from course_lib import data, train
from course_lib.model import ModelConfig, Transformer

MODEL = ModelConfig(context_len=16, n_layer=2, n_head=2, d_model=32)
CONFIG = train.TrainConfig(
    steps=10,
    batch_size=8,
    seq_len=16,
    lr=3e-3,
    warmup_steps=2,
    eval_every=5,
    eval_batches=1,
    checkpoint_every=5,
    precision="fp32",
)
TEXT = data.Corpus("ddp", train="".join(map(str, range(20_000))), val="3.14159" * 100, source="")


def run(out_dir=None) -> dict:
    """Train MODEL for CONFIG.steps steps, checkpointing to `out_dir`: the loss of every step."""
    torch.manual_seed(0)
    model = Transformer(MODEL)
    losses = []
    result = train.train(
        model,
        CONFIG,
        source=train.TextBatches(TEXT, CONFIG.seq_len),
        out_dir=out_dir,
        device="cpu",
        progress=False,
        on_step=lambda step, loss: losses.append(loss),
    )
    return {"losses": losses, "val_loss": result.final_val_loss}


if __name__ == "__main__":
    import os

    import torch.distributed as dist

    out = run(out_dir=os.path.dirname(os.path.abspath(sys.argv[1])))
    out["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    if dist.is_initialized():
        dist.destroy_process_group()
