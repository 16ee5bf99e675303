"""One training loop for every model of the course (notebook 03 introduces it).

Nothing is hidden in a framework: AdamW, linear warm-up then cosine decay of the learning
rate, gradient clipping, bfloat16 autocast where it is fast (see `env.autocast_dtype`),
periodic evaluation, atomic checkpoints, resume, and DistributedDataParallel under torchrun.

The loop does not know what it trains. An *objective* turns a batch into a scalar loss:
`"ar"` (next-token cross-entropy, here), `"mdlm"` (the masked-diffusion ELBO of
`course_lib.diffusion`), `"bd3lm"` (its block-diffusion form) or `"bd3lm-lookahead"` (that
plus `course_lib.lookahead`'s loss), listed in `OBJECTIVES`; evaluation reports bits per token
(`EVAL_OBJECTIVES`). A *batch source* hands out batches (text windows or samples of a
synthetic distribution).

Interrupting (Ctrl-C, or an error) saves a checkpoint of the last finished step; running the
same call again resumes from it and reaches exactly the result of an uninterrupted run. After
a Ctrl-C the half-trained model is evaluated once more, so a notebook can carry on with it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from course_lib import checkpoints, data, diffusion, env, lookahead
from course_lib.model import Transformer, eval_mode


@dataclass
class TrainConfig:
    """Everything that decides a training run besides the model's shape."""

    objective: str = "ar"
    steps: int = 2000
    batch_size: int = 32  # sequences per step, summed over all processes
    seq_len: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 200
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 where fast), "bf16" or "fp32"

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "seq_len",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError("warmup_steps must be >= 0 and lr > 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for `step` (0-based): linear warm-up, then cosine down to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# -- what is trained on, and how it is scored -----------------------------------------------


class BatchSource(Protocol):
    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A (batch_size, seq_len + 1) LongTensor of ids from "train" or "val": each row's
        first seq_len ids are the input, and its last seq_len the AR targets (a diffusion
        objective uses the first seq_len only)."""
        ...


class TextBatches:
    """Random windows of `seq_len + 1` characters from a corpus's train or val split."""

    def __init__(self, corpus: data.Corpus | str = "pystdlib", seq_len: int = 256) -> None:
        self.corpus = data.load_corpus(corpus) if isinstance(corpus, str) else corpus
        self.ids = data.encode_corpus(self.corpus)
        self.seq_len = seq_len

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if split not in self.ids:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return data.get_batch(self.ids[split], batch_size, self.seq_len, generator=generator)


def ar_loss(
    model: torch.nn.Module, batch: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next-token cross-entropy in nats per token: predict batch[:, 1:] from batch[:, :-1]."""
    logits = model(batch[:, :-1])  # (B, L, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


# objective name -> loss(model, batch, generator) in nats per token
OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "ar": ar_loss,
    "mdlm": diffusion.mdlm_objective,
    "bd3lm": diffusion.bd3lm_objective,
    "bd3lm-lookahead": lookahead.bd3lm_lookahead_objective,
}
# an objective whose loss is not the model's bits per token is evaluated with one that is
EVAL_OBJECTIVES: dict[str, str] = {"bd3lm-lookahead": "bd3lm"}


def get_objective(name: str) -> Callable[..., torch.Tensor]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}: choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


# -- the loop --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    checkpoint: Path | None = None
    steps_done: int = 0
    wall_time_s: float = 0.0  # this call's time, resumed parts excluded
    total_wall_time_s: float = 0.0  # the whole run's training time, every resumed part included
    interrupted: bool = False

    @property
    def final_val_loss(self) -> float | None:
        rows = [r for r in self.history if "val_loss" in r]
        return rows[-1]["val_loss"] if rows else None

    @property
    def final_val_bits(self) -> float | None:
        """Validation bits per token of the model as this call left it (None: not evaluated)."""
        loss = self.final_val_loss
        return None if loss is None else loss / math.log(2)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: BatchSource,
    cfg: TrainConfig,
    loss_fn: Callable[..., torch.Tensor],
    *,
    split: str = "val",
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> float:
    """Mean loss (nats per token) over `cfg.eval_batches` fixed batches of `split`."""
    generator = torch.Generator().manual_seed(1234)  # the same batches at every evaluation
    total = 0.0
    with eval_mode(model):
        for _ in range(cfg.eval_batches):
            batch = source.get_batch(split, cfg.batch_size, generator).to(device)
            with env.autocast(device, autocast):
                total += loss_fn(model, batch, generator).item()
    return total / cfg.eval_batches


def _precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    return env.autocast_dtype(device)


def distributed_world() -> tuple[int, int]:
    """(rank, world size); initialises the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


@dataclass
class _Run:
    """What a training run carries from one step to the next (set up by `_set_up`)."""

    model: torch.nn.Module  # the model being trained
    net: torch.nn.Module  # the same, wrapped in DistributedDataParallel under torchrun
    cfg: TrainConfig
    source: BatchSource
    loss_fn: Callable[..., torch.Tensor]
    eval_fn: Callable[..., torch.Tensor]  # the model's bits per token, evaluated
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: torch.dtype | None
    rank: int
    world: int
    data_gen: torch.Generator  # which windows are drawn
    loss_gen: torch.Generator  # the objective's own noise (masking times, masks)
    ckpt_path: Path | None
    result: TrainResult
    hardware: str
    step: int = 0  # finished steps
    last_loss: float = math.nan  # the training loss of the last finished step
    step_rng: dict = field(default_factory=dict)  # the random state after the last step
    tokens_seen: int = 0  # by this call
    earlier_wall_s: float = 0.0  # the resumed parts' training time
    t0: float = field(default_factory=time.perf_counter)


def train(
    model: Transformer,
    cfg: TrainConfig,
    *,
    source: BatchSource | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place for `cfg.steps` steps; checkpoint to `out_dir`/last.pt.

    With `resume=True` and a checkpoint of the same configuration in `out_dir`, training
    continues from it. `on_step(step, loss)` is called after every step (for plots or tests).
    A Ctrl-C saves the last finished step and returns; any other error saves, then raises.
    """
    run = _set_up(model, cfg, source, out_dir, resume, device, progress)
    bar = tqdm(
        total=cfg.steps,
        initial=run.step,
        disable=not progress or run.rank != 0,
        desc="train",
        mininterval=1.0,
    )
    try:
        if run.step > 0 and _evaluates(run.step, cfg) and not _evaluated(run, run.step):
            log_evaluation(run)  # the last run was interrupted while evaluating this step
        while run.step < cfg.steps:
            loss = train_step(run)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr_at(run.step - 1, cfg):.1e}", refresh=False)
            bar.update(1)
            if _evaluates(run.step, cfg):
                log_evaluation(run)
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                save_checkpoint(run)
            if on_step is not None:
                on_step(run.step, loss)
    except KeyboardInterrupt:
        save_checkpoint(run)
        run.result.interrupted = True
        if run.rank == 0:
            where = f"; run the same call again to resume from {env.shown_path(run.ckpt_path)}"
            print(f"\ninterrupted at step {run.step}{where if run.ckpt_path else ''}")
        evaluate_after_interrupt(run)
    except BaseException:
        save_checkpoint(run)  # nothing is lost: the last finished step is on disk
        raise
    finally:
        bar.close()
    result = run.result
    result.steps_done = run.step
    result.wall_time_s = time.perf_counter() - run.t0
    result.total_wall_time_s = run.earlier_wall_s + result.wall_time_s
    return result


def train_step(run: _Run) -> float:
    """One optimiser step on the next batch; returns its training loss (nats per token)."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(run.step, cfg)
    # every process draws the same global batch and keeps its own slice, so the
    # averaged gradient is exactly the single-process gradient of the whole batch
    local = cfg.batch_size // run.world
    batch = run.source.get_batch("train", cfg.batch_size, run.data_gen)
    batch = batch[run.rank * local : (run.rank + 1) * local].to(run.device)
    with env.autocast(run.device, run.autocast):
        loss = run.loss_fn(run.net, batch, run.loss_gen)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loss_value = loss.item()
    if run.world > 1:
        mean = torch.tensor([loss_value], device=run.device)
        dist.all_reduce(mean)
        loss_value = mean.item() / run.world
    rng_after = random_state(run)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.step, run.last_loss, run.step_rng = run.step + 1, loss_value, rng_after  # done
    run.tokens_seen += batch.numel() * run.world
    return loss_value


def log_evaluation(run: _Run, **extra) -> None:
    """Evaluate the model after `run.step` steps and add a row to the history."""
    val = evaluate(
        run.model, run.source, run.cfg, run.eval_fn, device=run.device, autocast=run.autocast
    )
    elapsed = time.perf_counter() - run.t0
    run.result.history.append(
        {
            "step": run.step,
            "train_loss": run.last_loss,
            "val_loss": val,
            "val_bits": val / math.log(2),
            "lr": lr_at(run.step - 1, run.cfg),
            # nan when this call has trained nothing yet (an evaluation finished on resume)
            "tokens_per_s": run.tokens_seen / elapsed if run.tokens_seen else float("nan"),
            **extra,
        }
    )


def save_checkpoint(run: _Run) -> None:
    """Write the last finished step (weights, optimiser, random state, history) to disk."""
    if run.ckpt_path is not None and run.rank == 0:
        state = {
            "step": run.step,
            "train_loss": run.last_loss,
            "optimizer": run.optimizer.state_dict(),
            **run.step_rng,
            "train_config": asdict(run.cfg),
            "history": run.result.history,
            "wall_time_s": run.earlier_wall_s + time.perf_counter() - run.t0,
            "hardware": run.hardware,
        }
        checkpoints.save_checkpoint(run.ckpt_path, run.model, train_state=state)
    if run.world > 1:
        dist.barrier()
    run.result.checkpoint = run.ckpt_path


def random_state(run: _Run) -> dict:
    """The generators' states: a resumed run draws exactly what an uninterrupted one does."""
    return {
        "data_generator": run.data_gen.get_state(),
        "loss_generator": run.loss_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def _evaluates(step: int, cfg: TrainConfig) -> bool:
    return step % cfg.eval_every == 0 or step == cfg.steps


def _evaluated(run: _Run, step: int) -> bool:
    return any(row["step"] == step for row in run.result.history)


def evaluate_after_interrupt(run: _Run) -> None:
    """Score the half-trained model, so the caller can go on with it (notebook 03).

    The row is this call's only: the checkpoint, already saved, keeps the history of an
    uninterrupted run. A second Ctrl-C skips the evaluation.
    """
    if run.result.history and run.result.history[-1]["step"] == run.step:
        return
    with contextlib.suppress(KeyboardInterrupt):
        log_evaluation(run, interrupted=True)


def _set_up(model, cfg, source, out_dir, resume, device, progress) -> _Run:
    """The device, the processes, the optimiser and the generators; a checkpoint to resume."""
    rank, world = distributed_world()
    if device is None:
        device = (
            torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            if (world > 1 and torch.cuda.is_available())
            else env.get_device()
        )
    else:
        device = env.get_device(str(device))  # a clear error for a device this machine lacks
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    model.to(device).train()
    info = env.describe_environment(device)
    run = _Run(
        model=model,
        net=model,
        cfg=cfg,
        source=source if source is not None else TextBatches("pystdlib", cfg.seq_len),
        loss_fn=get_objective(cfg.objective),
        eval_fn=get_objective(EVAL_OBJECTIVES.get(cfg.objective, cfg.objective)),
        optimizer=_make_optimizer(model, cfg, device),
        device=device,
        autocast=_precision(cfg, device),
        rank=rank,
        world=world,
        data_gen=torch.Generator().manual_seed(cfg.seed),
        # each process draws its own noise
        loss_gen=torch.Generator().manual_seed(cfg.seed + 1 + 1000 * rank),
        ckpt_path=Path(out_dir) / "last.pt" if out_dir is not None else None,
        result=TrainResult(),
        hardware=f"{info.get('gpu', info['processor'])} ({info['device']}, {world} process(es))",
    )
    if run.ckpt_path is not None and resume and run.ckpt_path.exists():
        run.step, run.last_loss = _restore(
            run.ckpt_path, model, run.optimizer, cfg, run.data_gen, run.loss_gen, run.result
        )
        run.result.checkpoint = run.ckpt_path  # also when the run had already finished
        if rank == 0 and progress:
            print(f"resuming from {env.shown_path(run.ckpt_path)} at step {run.step}")
    if world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # The random state as the last finished step left it. A Ctrl-C in the middle of a step
    # saves this one, not the half-used state of the unfinished step, so a resume draws that
    # step's batch and noise again, exactly as an uninterrupted run does.
    run.step_rng = random_state(run)
    run.earlier_wall_s = run.result.total_wall_time_s  # restored from the checkpoint
    run.t0 = time.perf_counter()
    return run


def _make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    # weight decay on matrices only; biases, norms and embeddings are left alone
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


_START_OVER = (
    "pass resume=False (--restart on the command line) to start over, or use another out_dir"
)


def _restore(path, model, optimizer, cfg, data_gen, loss_gen, result) -> tuple[int, float]:
    """Load a run's state from `path`: (finished steps, training loss of the last one)."""
    payload = checkpoints.read_checkpoint(path)
    state = payload.get("train_state")
    if not state:
        raise ValueError(f"{path} has no training state to resume from (a shipped checkpoint?)")
    if state["train_config"] != asdict(cfg):
        changed = {
            k: (state["train_config"].get(k), v)
            for k, v in asdict(cfg).items()
            if state["train_config"].get(k) != v
        }
        raise ValueError(
            f"{path} was trained with another configuration ({changed}); {_START_OVER}"
        )
    try:
        checkpoints.load_weights(model, payload, source=str(path))
    except ValueError as err:  # a run of another model shape (e.g. a preset that changed)
        raise ValueError(f"{err}; {_START_OVER}") from err
    optimizer.load_state_dict(state["optimizer"])
    data_gen.set_state(state["data_generator"])
    loss_gen.set_state(state["loss_generator"])
    torch.set_rng_state(state["torch_rng"])
    result.history = list(state["history"])
    result.total_wall_time_s = float(state.get("wall_time_s", 0.0))
    # runs saved before "train_loss" was recorded resume too; only a pending evaluation lacks it
    return int(state["step"]), float(state.get("train_loss", math.nan))
