"""Named training runs: model shape, data and schedule, fully specified in code.

`python -m course_lib train --preset NAME` runs one; the notebooks use the same names. The
"-tiny" presets are for fast mode (tests and a first look); the others are the course's real
models. Each run is resumable: start it again and it continues from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from course_lib import checkpoints, env
from course_lib.model import ModelConfig, Transformer
from course_lib.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    corpus: str = "pystdlib"
    # a shipped checkpoint (data/checkpoints/NAME.pt) whose weights start the run, e.g. an AR
    # model's for a block-diffusion model; None starts from random weights
    init_from: str | None = None

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


# -- notebook 12's levers: block diffusion started from the AR model, and shorter blocks ------

_FINE_TUNE = replace(PRESETS["bd3lm-small"].train, steps=1500, lr=5e-4, warmup_steps=50)
for _block in (2, 4, 8, 16):
    register(
        Preset(
            name=f"bd3lm-ar-b{_block}",
            description=(
                f"bd3lm-small's shape with blocks of {_block}, started from ar-small's weights "
                "and fine-tuned with BD3-LM's loss for 1500 steps"
            ),
            model=replace(PRESETS["bd3lm-small"].model, block_len=_block),
            train=_FINE_TUNE,
            init_from="ar-small",
        )
    )
# the more-passes lever: an earlier fine-tune trained for 1500 more steps at a lower rate
for _name, _start, _block, _why in (
    ("bd3lm-ar-b2-more", "bd3lm-ar-b2", 2, "on the best diffusion checkpoint"),
    (
        "bd3lm-ar-b4-more",
        "bd3lm-ar-b4",
        4,
        "as masked diffusion keeps improving long after AR stops",
    ),
    ("bd3lm-ar-b4-more2", "bd3lm-ar-b4-more", 4, "its third point: do blocks of 4 still improve?"),
):
    register(
        Preset(
            name=_name,
            description=f"{_start} trained for 1500 more steps (lr 3e-4): the more-passes lever, {_why}",
            model=replace(PRESETS["bd3lm-small"].model, block_len=_block),
            train=replace(_FINE_TUNE, lr=3e-4),
            init_from=_start,
        )
    )
register(
    Preset(
        name="bd3lm-ar-b2-look",
        description=(
            "bd3lm-ar-b2-more trained for 600 more steps (lr 3e-4) with BD3-LM's loss plus the "
            "lookahead loss: the lookahead lever, guesses past the block for notebook 12's tree"
        ),
        model=PRESETS["bd3lm-ar-b2-more"].model,
        train=replace(_FINE_TUNE, objective="bd3lm-lookahead", steps=600, lr=3e-4),
        init_from="bd3lm-ar-b2-more",
    )
)
register(
    Preset(
        name="bd3lm-ar-b2-look2",
        description=(
            "bd3lm-ar-b2-look trained for 1500 more steps (lr 3e-4) with the same loss: do the "
            "guesses past the block keep improving?"
        ),
        model=PRESETS["bd3lm-ar-b2-look"].model,
        train=replace(PRESETS["bd3lm-ar-b2-look"].train, steps=1500),
        init_from="bd3lm-ar-b2-look",
    )
)
register(
    Preset(
        name="bd3lm-ar-b4-long",
        description=(
            "bd3lm-ar-b4 for a GPU: from ar-small's weights, 6000 steps of 128 windows (about "
            "30 passes over the training text, 98M characters; many hours on a CPU): the "
            "many-passes lever at a scale this CPU cannot reach"
        ),
        model=replace(PRESETS["bd3lm-small"].model, block_len=4),
        train=replace(
            _FINE_TUNE,
            steps=6000,
            batch_size=128,
            warmup_steps=100,
            eval_every=500,
            checkpoint_every=100,  # about 11 minutes on one CPU thread: resumable across sessions
        ),
        init_from="ar-small",
    )
)
for _block in (4, 8):
    register(
        Preset(
            name=f"bd3lm-ar-shift-b{_block}",
            description=(
                f"bd3lm-ar-b{_block} keeping ar-small's next-token shift: the logits at a "
                "position predict the token after it, as AR's head was trained to (Fast-dLLM "
                "v2, SDAR)"
            ),
            model=replace(PRESETS["bd3lm-small"].model, block_len=_block, next_token_shift=True),
            train=_FINE_TUNE,
            init_from="ar-small",
        )
    )
register(
    Preset(
        name="bd3lm-b4",
        description="bd3lm-small with blocks of 4, from random weights (the block-length lever)",
        model=replace(PRESETS["bd3lm-small"].model, block_len=4),
        train=PRESETS["bd3lm-small"].train,
    )
)


register(
    Preset(
        name="ar-draft",
        description=(
            "notebook 12's draft model for speculative decoding: 2 layers, d=128, ar-small's "
            "data and context; cheap to run, often agrees with ar-small"
        ),
        model=ModelConfig(context_len=128, n_layer=2, n_head=2, d_model=128, position="rotary"),
        train=replace(PRESETS["ar-small"].train, steps=2000),
    )
)


# -- notebook 12's judge: an AR model that knows more Python than the models it scores --------

register(
    Preset(
        name="judge-ar",
        description=(
            "notebook 12's judge: an AR model of 6 layers, d=256, context 256, trained on every "
            "standard-library file but the validation ones (about ten times pystdlib's text)"
        ),
        model=ModelConfig(context_len=256, n_layer=6, n_head=4, d_model=256, position="rotary"),
        train=TrainConfig(
            objective="ar",
            steps=2000,
            batch_size=32,
            seq_len=256,
            lr=2e-3,
            warmup_steps=100,
            eval_every=200,
            eval_batches=8,
            checkpoint_every=100,
            seed=0,
        ),
        corpus="pystdlib-all",
    )
)


def initial_model(preset: Preset) -> Transformer:
    """The model a run of `preset` starts from: random weights, or `preset.init_from`'s."""
    model = Transformer(preset.model)
    if preset.init_from is not None:
        path = env.DATA_DIR / "checkpoints" / f"{preset.init_from}.pt"
        checkpoints.load_weights(
            model, checkpoints.read_checkpoint(path), source=str(path), other_attention=True
        )
    return model


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
