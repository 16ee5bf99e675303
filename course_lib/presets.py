"""Named training runs: model shape, data and schedule, fully specified in code.

`python -m course_lib train --preset NAME` runs one; the notebooks use the same names. The
"-tiny" presets are for fast mode (tests and a first look); the others are the course's real
models. Each run is resumable: start it again and it continues from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from course_lib import env
from course_lib.model import ModelConfig
from course_lib.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    corpus: str = "pystdlib"

    @property
    def out_dir(self):
        """Where `python -m course_lib train` keeps this preset's run."""
        return env.DATA_DIR / "runs" / self.name


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


register(
    Preset(
        name="ar-tiny",
        description="a 2-layer AR model trained for seconds (fast mode, tests)",
        model=ModelConfig(context_len=64, n_layer=2, n_head=2, d_model=64, position="rotary"),
        train=TrainConfig(
            objective="ar",
            steps=60,
            batch_size=16,
            seq_len=64,
            lr=2e-3,
            warmup_steps=10,
            eval_every=20,
            eval_batches=4,
            checkpoint_every=20,
            seed=0,
        ),
    )
)
register(
    Preset(
        name="ar-small",
        description="notebook 03's AR model: 4 layers, d=256, rotary positions; ~20 min on one CPU core",
        model=ModelConfig(context_len=128, n_layer=4, n_head=4, d_model=256, position="rotary"),
        train=TrainConfig(
            objective="ar",
            steps=3000,
            batch_size=32,
            seq_len=128,
            lr=2e-3,
            warmup_steps=100,
            eval_every=100,
            eval_batches=8,
            checkpoint_every=100,
            seed=0,
        ),
    )
)
register(
    Preset(
        name="mdlm-tiny",
        description="ar-tiny's shape, bidirectional, trained as a masked-diffusion model (fast mode)",
        model=ModelConfig(
            context_len=64, n_layer=2, n_head=2, d_model=64, attention="bidirectional"
        ),
        train=replace(PRESETS["ar-tiny"].train, objective="mdlm"),
    )
)
register(
    Preset(
        name="mdlm-small",
        description="notebook 05's masked-diffusion model: ar-small's shape, bidirectional",
        model=replace(PRESETS["ar-small"].model, attention="bidirectional"),
        train=replace(PRESETS["ar-small"].train, objective="mdlm"),
    )
)
register(
    Preset(
        name="bd3lm-tiny",
        description="ar-tiny's shape, block-causal (blocks of 16), trained with BD3-LM's loss (fast mode)",
        model=replace(PRESETS["ar-tiny"].model, attention="block_causal", block_len=16),
        train=replace(PRESETS["ar-tiny"].train, objective="bd3lm"),
    )
)
register(
    Preset(
        name="bd3lm-small",
        description="notebook 08's block-diffusion model: ar-small's shape, block-causal, blocks of 16",
        model=replace(PRESETS["ar-small"].model, attention="block_causal", block_len=16),
        train=replace(PRESETS["ar-small"].train, objective="bd3lm"),
    )
)


def get_preset(name: str, **train_overrides) -> Preset:
    """The preset `name`, with any TrainConfig fields replaced (e.g. steps=10)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    known = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(train_overrides) - set(known))
    if unknown:
        raise ValueError(f"{unknown} are not TrainConfig fields; the fields are {known}")
    preset = PRESETS[name]
    if train_overrides:
        preset = replace(preset, train=replace(preset.train, **train_overrides))
    return preset
