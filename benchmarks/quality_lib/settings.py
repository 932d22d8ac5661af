"""What the quality benchmark trains and evaluates: methods, data regimes, budgets, splits.

Splits (per seed ``s``; every split is generated in code by :mod:`betadpo_lightning.data.synthetic`):

* **train**: the ``train`` split of ``SyntheticConfig(seed=s, <regime>)``; the SFT reference learns the chosen
  responses of the *clean* regime's train split, the preference methods train on their regime's train split;
* **validation**: the first ``val_prompts`` prompts of the ``validation`` split of the same config; only used to
  choose each method's knob (mean gold reward of one sample per prompt);
* **test**: the ``validation`` split of ``SyntheticConfig(seed=s + TEST_SEED_OFFSET, label_noise=0,
  hard_fraction=0.5)``, another random stream: its prompts are the test prompts (samples, win rate, KL) and its
  pairs, each ordered by the gold reward (chosen = the higher gold reward), are the held-out preference pairs.
  Nothing of it is seen in training or in the knob choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from betadpo_lightning.data.synthetic import SyntheticConfig

TEST_SEED_OFFSET = 10_000

MODEL_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
"""The 2-layer Llama of ``configs/synthetic_*.yaml``."""


@dataclass(frozen=True)
class Method:
    """A preference method and its knob.

    Attributes:
        key: short identifier (file names, JSON).
        name: the name in tables and plots.
        loss_type: ``PreferenceModule(loss=...)``, a short loss name.
        controller: ``constant``, ``beta_dpo`` or ``epsilon`` (the β callback's controller).
        knob: the name of the swept setting (``beta`` or ``epsilon``).
        values: the sweep, one training run per value.
        beta: β of the methods whose knob is not β (ε-DPO's starting β).
        rho: β-DPO's filtered fraction.
        alpha: β-DPO's α.
    """

    key: str
    name: str
    loss_type: str
    controller: str
    knob: str
    values: tuple[float, ...]
    beta: float = 0.1
    rho: float = 0.0
    alpha: float = 0.6

    def knob_label(self, value: float) -> str:
        """``β=0.1``-style label of one sweep value."""
        symbol = {"beta": "β0" if self.controller == "beta_dpo" else "β", "epsilon": "ε"}[self.knob]
        return f"{symbol}={value:g}"


@dataclass(frozen=True)
class Regime:
    """A training-data regime of the synthetic task."""

    key: str
    name: str
    label_noise: float
    hard_fraction: float


METHODS = (
    Method("dpo", "DPO", "sigmoid", "constant", "beta", (0.1, 0.3)),
    Method("ipo", "IPO", "ipo", "constant", "beta", (0.1, 0.3)),
    Method("beta_dpo", "β-DPO (ρ=0)", "sigmoid", "beta_dpo", "beta", (0.1, 0.3), rho=0.0),
    Method("beta_dpo_filter", "β-DPO (ρ=0.2)", "sigmoid", "beta_dpo", "beta", (0.1, 0.3), rho=0.2),
    Method("mallows_theta", "MallowsPO-θ", "mallows_theta", "constant", "beta", (1.0, 3.0)),
    Method("epsilon_dpo", "ε-DPO", "sigmoid", "epsilon", "epsilon", (0.003, 0.01), beta=0.1),
)

REGIMES = (
    Regime("clean", "clean", 0.0, 0.25),
    Regime("noisy", "20% flipped labels", 0.2, 0.25),
    Regime("hard", "90% small-gap pairs", 0.0, 0.9),
)


@dataclass(frozen=True)
class Settings:
    """Budgets and sizes of one benchmark run (the defaults are the full benchmark)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    sft_steps: int = 300
    sft_lr: float = 3e-3
    steps: int = 200
    lr: float = 1e-4
    warmup_steps: int = 20
    batch_size: int = 16
    train_size: int = 4096
    val_prompts: int = 256
    test_pairs: int = 512
    max_new_tokens: int = 20
    workers: int = 2
    methods: tuple[Method, ...] = METHODS
    regimes: tuple[Regime, ...] = REGIMES
    log_every_n_steps: int = 5

    def quick(self) -> Settings:
        """The ``--quick`` variant: the same pipeline with two seeds and tiny budgets."""
        return replace(
            self,
            seeds=(0, 1),
            sft_steps=60,
            steps=15,
            warmup_steps=5,
            val_prompts=32,
            test_pairs=64,
            log_every_n_steps=5,
        )

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        """The settings that ``dataclasses.asdict`` wrote (e.g. into ``quality.json``)."""
        fields = dict(values)
        fields["methods"] = tuple(Method(**{**m, "values": tuple(m["values"])}) for m in fields["methods"])
        fields["regimes"] = tuple(Regime(**r) for r in fields["regimes"])
        fields["seeds"] = tuple(fields["seeds"])
        return cls(**fields)

    def data(self, seed: int, regime: Regime) -> SyntheticConfig:
        """The synthetic train/validation data of a regime."""
        return SyntheticConfig(
            train_size=self.train_size,
            validation_size=max(self.val_prompts, 16),
            seed=seed,
            label_noise=regime.label_noise,
            hard_fraction=regime.hard_fraction,
        )

    def test_data(self, seed: int) -> SyntheticConfig:
        """The held-out test pairs and prompts (see the module docstring)."""
        return SyntheticConfig(
            train_size=1, validation_size=self.test_pairs, seed=seed + TEST_SEED_OFFSET, hard_fraction=0.5
        )
