"""Sequence distributions whose entropy and conditionals are known exactly (notebook 05).

Real text has no known entropy, so an ELBO measured on it can only be compared with another
model. On these sources it can be compared with the truth:

- `MarkovChain`: a stationary Markov chain over a small alphabet. Entropy
  H(x_1) + (L - 1) H(x_2 | x_1); conditionals given any set of unmasked positions by
  forward-backward over the chain.
- `RepeatedPairs`: positions (2k, 2k + 1) hold the same uniformly random token. Entropy
  (1/2) log2 V bits per token; a masked token is its partner if that is unmasked, else uniform.
  Sampling both tokens of a pair in one parallel step breaks them apart: the cleanest picture
  of what parallel decoding loses (notebooks 06 and 07).

Each source can `sample`, score exactly (`log_prob`), report `entropy_bits_per_token`, give
the exact `conditionals` p(x_i | unmasked tokens), and hand out an `oracle()` denoiser (any
diffusion sampler or `diffusion.elbo` accepts it). Each is also a batch source for
`course_lib.train` (`get_batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SyntheticConfig:
    """What a denoiser's `config` tells the samplers: real tokens are [0, vocab_size)."""

    vocab_size: int
    length: int


class SequenceDistribution:
    """A distribution over sequences of `length` tokens in [0, vocab_size).

    The mask id is `vocab_size`, as for the course's models. Subclasses implement `sample`,
    `log_prob`, `entropy_bits_per_token` and `conditionals`.
    """

    def __init__(self, vocab_size: int, length: int) -> None:
        for name, value in (("vocab_size", vocab_size), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.vocab_size = vocab_size
        self.length = length

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def config(self) -> SyntheticConfig:
        return SyntheticConfig(self.vocab_size, self.length)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` independent sequences: LongTensor (n, length)."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log-probability (nats, float64) of each sequence of x (n, length): (n,)."""
        raise NotImplementedError

    def entropy_bits_per_token(self) -> float:
        """The exact entropy of a whole sequence in bits, divided by its length."""
        raise NotImplementedError

    def conditionals(self, ids: torch.Tensor) -> torch.Tensor:
        """Exact p(x_i | the unmasked tokens of ids) for every position: float64 (B, L, V).

        `ids` (B, L) holds tokens and `mask_id` at masked positions. An unmasked position's
        row is a one-hot of its token (carry-over).
        """
        raise NotImplementedError

    def oracle(self) -> OracleDenoiser:
        """The exact denoiser of this source (see `OracleDenoiser`)."""
        return OracleDenoiser(self)

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A training batch in `train.TextBatches`'s layout: (batch_size, length + 1).

        Columns 0..length-1 are fresh samples; the last column is a padding 0, standing where
        a text window carries the AR objective's extra target. `diffusion.mdlm_objective`
        reads `batch[:, :-1]` and never sees it. "train" and "val" draw from the same
        distribution (there is no finite data set to overfit); the generator decides which.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        x = self.sample(batch_size, generator)  # (B, L)
        return torch.cat([x, torch.zeros(batch_size, 1, dtype=torch.long)], dim=1)  # (B, L+1)

    def _check_ids(self, ids: torch.Tensor, *, allow_mask: bool) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise ValueError("ids must be a LongTensor of shape (batch, length)")
        if ids.shape[1] != self.length:
            raise ValueError(
                f"this source's sequences have length {self.length}, got {ids.shape[1]}"
            )
        top = self.mask_id if allow_mask else self.vocab_size - 1
        if ids.numel() and (ids.min() < 0 or ids.max() > top):
            raise ValueError(f"ids must be in [0, {top}]")
        return ids.cpu()

    @staticmethod
    def _check_n(n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")


class OracleDenoiser:
    """The exact denoiser of a synthetic source: ids (B, L) -> logits (B, L, V), float64.

    The logits are the log of the true conditionals (-inf where a token is impossible). It
    carries `config.vocab_size` (so `mask_id` need not be passed) and counts its `calls`, so
    tests and notebooks can check a sampler's NFE.
    """

    def __init__(self, source: SequenceDistribution) -> None:
        self.source = source
        self.config = source.config
        self.mask_id = source.mask_id
        self.calls = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        probs = self.source.conditionals(ids)  # (B, L, V)
        return torch.log(probs).to(ids.device)

    def __repr__(self) -> str:
        return f"OracleDenoiser({self.source!r})"


def _entropy_nats(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of categoricals (..., V) in nats, with 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def _normalise(messages: torch.Tensor, what: str) -> torch.Tensor:
    total = messages.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError(f"the unmasked tokens are impossible under this source ({what})")
    return messages / total


class MarkovChain(SequenceDistribution):
    """A stationary Markov chain: x_1 ~ pi, x_{i+1} ~ transition[x_i]; pi = pi @ transition.

    `transition` (V, V) is row-stochastic with a unique stationary distribution pi, so every
    position's marginal is pi.
    """

    def __init__(self, transition: torch.Tensor, length: int) -> None:
        transition = torch.as_tensor(transition, dtype=torch.float64)
        if transition.dim() != 2 or transition.shape[0] != transition.shape[1]:
            raise ValueError(f"transition must be a square matrix, got {tuple(transition.shape)}")
        if (transition < 0).any() or not torch.allclose(
            transition.sum(1), torch.ones(len(transition), dtype=torch.float64), atol=1e-9
        ):
            raise ValueError("transition must be row-stochastic: non-negative rows summing to 1")
        super().__init__(len(transition), length)
        self.transition = transition / transition.sum(1, keepdim=True)  # (V, V)
        self.stationary = self._stationary(self.transition)  # (V,)

    @staticmethod
    def _stationary(transition: torch.Tensor) -> torch.Tensor:
        # solve pi (T - I) = 0 with sum(pi) = 1: replace one equation by the normalisation
        V = len(transition)
        system = (transition - torch.eye(V, dtype=torch.float64)).T.clone()
        system[-1] = 1.0
        rhs = torch.zeros(V, dtype=torch.float64)
        rhs[-1] = 1.0
        try:
            pi = torch.linalg.solve(system, rhs)
        except RuntimeError as err:
            raise ValueError("the chain has no unique stationary distribution") from err
        if (pi < -1e-12).any():
            raise ValueError("the chain has no unique stationary distribution")
        pi = pi.clamp(min=0)
        return pi / pi.sum()

    @classmethod
    def random(
        cls, vocab_size: int = 4, length: int = 8, *, sharpness: float = 2.0, seed: int = 0
    ) -> MarkovChain:
        """A chain with transition rows softmax(sharpness * standard normal): reproducible.

        Larger `sharpness` gives more predictable transitions (lower entropy).
        """
        generator = torch.Generator().manual_seed(seed)
        logits = sharpness * torch.randn(vocab_size, vocab_size, generator=generator)
        return cls(torch.softmax(logits.double(), dim=1), length)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_n(n)
        x = torch.empty(n, self.length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.stationary.expand(n, -1), 1, generator=generator)[:, 0]
        for i in range(1, self.length):
            rows = self.transition[x[:, i - 1]]  # (n, V)
            x[:, i] = torch.multinomial(rows, 1, generator=generator)[:, 0]
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_ids(x, allow_mask=False)
        logp = torch.log(self.stationary[x[:, 0]])  # (n,)
        return logp + torch.log(self.transition[x[:, :-1], x[:, 1:]]).sum(1)

    def entropy_bits_per_token(self) -> float:
        first = _entropy_nats(self.stationary)
        rate = (self.stationary * _entropy_nats(self.transition)).sum()  # H(x_2 | x_1)
        total = first + (self.length - 1) * rate
        return (total / (self.length * math.log(2))).item()

    def conditionals(self, ids: torch.Tensor) -> torch.Tensor:
        ids = self._check_ids(ids, allow_mask=True)
        B, L, V = ids.shape[0], self.length, self.vocab_size
        masked = ids == self.mask_id
        # evidence e_i(v): 1 where position i may hold v (all v if masked, its token if not)
        evidence = torch.ones(B, L, V, dtype=torch.float64)
        evidence[~masked] = torch.nn.functional.one_hot(ids[~masked], V).double()
        T = self.transition
        # forward: a_i(v) proportional to p(x_i = v, evidence at positions <= i)
        forward = torch.empty(B, L, V, dtype=torch.float64)
        forward[:, 0] = _normalise(self.stationary * evidence[:, 0], "forward")
        for i in range(1, L):
            forward[:, i] = _normalise((forward[:, i - 1] @ T) * evidence[:, i], "forward")
        # backward: b_i(v) proportional to p(evidence at positions > i | x_i = v)
        backward = torch.ones(B, L, V, dtype=torch.float64)
        for i in range(L - 2, -1, -1):
            backward[:, i] = _normalise((evidence[:, i + 1] * backward[:, i + 1]) @ T.T, "backward")
        return _normalise(forward * backward, "posterior")  # (B, L, V)

    def __repr__(self) -> str:
        return f"MarkovChain(vocab_size={self.vocab_size}, length={self.length})"


class RepeatedPairs(SequenceDistribution):
    """Positions (2k, 2k + 1) hold the same token, uniform over V and independent across k."""

    def __init__(self, vocab_size: int = 8, length: int = 8) -> None:
        super().__init__(vocab_size, length)
        if length % 2:
            raise ValueError(f"RepeatedPairs needs an even length, got {length}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_n(n)
        tokens = torch.randint(0, self.vocab_size, (n, self.length // 2), generator=generator)
        return tokens.repeat_interleave(2, dim=1)  # (n, L): a a b b c c ...

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_ids(x, allow_mask=False)
        pairs = x.view(len(x), -1, 2)  # (n, L/2, 2)
        agree = (pairs[..., 0] == pairs[..., 1]).all(dim=1)
        logp = -(self.length // 2) * math.log(self.vocab_size)
        logp = torch.full((len(x),), logp, dtype=torch.float64)
        return logp.masked_fill(~agree, float("-inf"))

    def entropy_bits_per_token(self) -> float:
        return 0.5 * math.log2(self.vocab_size)

    def conditionals(self, ids: torch.Tensor) -> torch.Tensor:
        ids = self._check_ids(ids, allow_mask=True)
        B, L, V = ids.shape[0], self.length, self.vocab_size
        partner = ids.view(B, L // 2, 2).flip(-1).reshape(B, L)  # (B, L): the other of the pair
        # the known token of each position: its own if unmasked, else its partner's if unmasked
        known = torch.where(ids != self.mask_id, ids, partner)  # (B, L)
        probs = torch.full((B, L, V), 1.0 / V, dtype=torch.float64)
        is_known = known != self.mask_id
        probs[is_known] = torch.nn.functional.one_hot(known[is_known], V).double()
        return probs

    def __repr__(self) -> str:
        return f"RepeatedPairs(vocab_size={self.vocab_size}, length={self.length})"
