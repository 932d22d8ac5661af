"""The benchmark's jobs, each run in a worker process: the SFT reference of a seed, one preference training run.

Both go through the library's public API: :class:`~betadpo_lightning.training.sft.SFTModule` and
:class:`~betadpo_lightning.training.module.PreferenceModule` under a Lightning ``Trainer`` with a
:class:`~betadpo_lightning.data.PreferenceDataModule` on the built-in synthetic data, and a
:class:`~betadpo_lightning.callbacks.DynamicBetaCallback` whose controller makes the method (constant β, β-DPO,
ε-DPO). A job returns plain data (JSON-ready) and writes its files under the work folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from functools import partial
from pathlib import Path

import torch

from quality_lib.evaluate import (
    Samples,
    encode_pairs,
    encode_prompts,
    kl_estimate,
    mean,
    preference_accuracy,
    sample,
    win_rate,
)
from quality_lib.settings import MODEL_CONFIG, Method, Regime, Settings

TRACE_KEYS = ("beta", "beta/gap_mean", "beta/gap_std", "beta/m0", "beta/sigma", "beta/kept_fraction", "beta/current")


def init_worker() -> None:
    """One thread per worker process (two workers share two cores) and quiet libraries."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "betadpo_lightning", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def datamodule(settings: Settings, seed: int, regime: Regime, work: Path):
    """The preference data of a regime and seed (train and validation splits)."""
    from betadpo_lightning.data import PreferenceDataModule

    return PreferenceDataModule(
        dataset="synthetic",
        batch_size=settings.batch_size,
        max_length=64,
        max_prompt_length=32,
        cache_dir=str(work / "data"),
        seed=seed,
        synthetic=settings.data(seed, regime),
    )


def _trainer(settings: Settings, steps: int, root: Path, callbacks: list, log: bool):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=10.0,
        logger=CSVLogger(str(root), name="logs", version=0) if log else False,
        log_every_n_steps=settings.log_every_n_steps,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )


def _optimizers(lr: float, warmup: int) -> tuple:
    from betadpo_lightning.training.schedulers import LinearWarmup

    return partial(torch.optim.AdamW, lr=lr, weight_decay=0.0), partial(LinearWarmup, warmup_steps=warmup)


def _split_prompts(settings: Settings, seed: int, regime: Regime) -> tuple[list[str], list[dict]]:
    """Validation prompts of the regime's data and the gold-ordered test rows (see :mod:`quality_lib.settings`)."""
    from betadpo_lightning.data.synthetic import generate_split

    validation = generate_split(settings.data(seed, regime), "validation")[: settings.val_prompts]
    test = []
    for row in generate_split(settings.test_data(seed), "validation"):
        if row["chosen_reward"] < row["rejected_reward"]:
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"]}
        test.append(row)
    return [row["prompt"] for row in validation], test


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000 * seed + stream)


def sft_job(settings: Settings, seed: int, work: Path) -> dict:
    """Train the seed's SFT reference on the clean regime's chosen responses; sample it on both prompt sets."""
    import lightning.pytorch as pl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from betadpo_lightning.training.sft import SFTModule

    init_worker()
    start = time.perf_counter()
    root = work / f"seed{seed}"
    out = root / "sft"
    pl.seed_everything(seed, verbose=False)
    optimizer, scheduler = _optimizers(settings.sft_lr, settings.warmup_steps)
    module = SFTModule(model_config=dict(MODEL_CONFIG), optimizer=optimizer, scheduler=scheduler, output_dir=str(out))
    trainer = _trainer(settings, settings.sft_steps, root / "sft_run", [], log=True)
    trainer.fit(module, datamodule=datamodule(settings, seed, settings.regimes[0], work))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    _, test_rows = _split_prompts(settings, seed, settings.regimes[0])
    test_prompts = encode_prompts(tokenizer, [row["prompt"] for row in test_rows])
    test = sample(model, tokenizer, test_prompts, settings.max_new_tokens, _generator(seed, 1))
    result = {"seed": seed, "test_rewards": test.rewards, "seconds": time.perf_counter() - start}
    result["val_rewards"] = {}
    for regime in settings.regimes:
        prompts, _ = _split_prompts(settings, seed, regime)
        val = sample(model, tokenizer, encode_prompts(tokenizer, prompts), settings.max_new_tokens, _generator(seed, 2))
        result["val_rewards"][regime.key] = mean(val.rewards)
    (root / "reference.json").write_text(json.dumps(result))
    return result


def _controller(method: Method, value: float):
    from betadpo_lightning.core.controllers import BetaDPOController, ConstantBetaController, EpsilonBetaController

    beta = value if method.knob == "beta" else method.beta
    if method.controller == "beta_dpo":
        return BetaDPOController(beta=beta, alpha=method.alpha, rho=method.rho, seed=0), beta
    if method.controller == "epsilon":
        return EpsilonBetaController(beta=beta, epsilon=value), beta
    return ConstantBetaController(beta=beta), beta


def _trace(csv_path: Path) -> dict[str, list[float]]:
    """The logged β-controller values over training steps (empty lists for what was not logged)."""
    trace: dict[str, list[float]] = {"step": [], **{key: [] for key in TRACE_KEYS}}
    if not csv_path.exists():
        return trace
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("train/beta"):
                continue
            trace["step"].append(float(row["step"]))
            for key in TRACE_KEYS:
                value = row.get(f"train/{key}", "")
                trace[key].append(round(float(value), 6) if value else float("nan"))
    return {key: values for key, values in trace.items() if values and not all(v != v for v in values)}


def preference_job(settings: Settings, seed: int, regime: Regime, method: Method, value: float, work: Path) -> dict:
    """Train one method from the seed's SFT reference on one regime, then evaluate it on validation and test."""
    import lightning.pytorch as pl
    from transformers import AutoTokenizer

    from betadpo_lightning.callbacks import DynamicBetaCallback
    from betadpo_lightning.training.module import PreferenceModule

    init_worker()
    start = time.perf_counter()
    seed_dir = work / f"seed{seed}"
    root = seed_dir / regime.key / f"{method.key}-{value:g}"
    reference = json.loads((seed_dir / "reference.json").read_text())
    pl.seed_everything(seed, verbose=False)
    controller, beta = _controller(method, value)
    optimizer, scheduler = _optimizers(settings.lr, settings.warmup_steps)
    module = PreferenceModule(
        model_name_or_path=str(seed_dir / "sft"),
        loss=method.loss_type,
        beta=beta,
        optimizer=optimizer,
        scheduler=scheduler,
    )
    trainer = _trainer(settings, settings.steps, root, [DynamicBetaCallback(controller)], log=True)
    trainer.fit(module, datamodule=datamodule(settings, seed, regime, work))
    trained = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(str(seed_dir / "sft"))
    policy, ref_model, pad = module.policy, module.reference, tokenizer.pad_token_id
    val_prompts, test_rows = _split_prompts(settings, seed, regime)
    val = sample(
        policy, tokenizer, encode_prompts(tokenizer, val_prompts), settings.max_new_tokens, _generator(seed, 2)
    )
    test_prompts = encode_prompts(tokenizer, [row["prompt"] for row in test_rows])
    test: Samples = sample(policy, tokenizer, test_prompts, settings.max_new_tokens, _generator(seed, 1))
    return {
        "seed": seed,
        "regime": regime.key,
        "method": method.key,
        "value": value,
        "val_gold": mean(val.rewards),
        "gold": mean(test.rewards),
        "win_rate": win_rate(test.rewards, reference["test_rewards"]),
        "kl": kl_estimate(policy, ref_model, test, pad),
        "accuracy": preference_accuracy(module, encode_pairs(tokenizer, test_rows), pad),
        "response_tokens": mean([float(len(r)) for r in test.responses]),
        "trace": _trace(root / "logs" / "version_0" / "metrics.csv") if method.controller != "constant" else {},
        "train_seconds": trained - start,
        "seconds": time.perf_counter() - start,
    }
