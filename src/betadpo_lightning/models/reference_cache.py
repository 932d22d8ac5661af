"""The precomputed reference: reference log-probs (and entropies) computed once before training, cached on disk.

:meth:`PreferenceModule.configure_model` calls :func:`prepare_reference_cache` when the provider is a
:class:`~betadpo_lightning.models.reference.PrecomputedReference` and the datamodule offers ``cache_identity``,
``collate`` and ``attach_columns`` (as :class:`~betadpo_lightning.data.PreferenceDataModule` does). Then:

1. The cache's key is built: the **reference** (its source and a fingerprint of its weights), the **tokenizer**,
   the **data** (source and tokenized splits), the **truncation** limits and the **precision** of the pass.
2. A cache in ``cache_dir`` whose key differs is refused with a message naming what changed; one that matches is
   read. Otherwise each rank computes its share of every split (rows ``rank, rank + W, ...``) with the reference
   (the initial policy, before any training step, or another checkpoint loaded for the pass and dropped after),
   writes it, and every rank then reads the whole cache.
3. The values become columns of the splits, so every batch carries ``reference_logps`` (summed log-probs) and,
   when the cache holds them, ``reference_entropy``; training runs with no reference model in memory.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from betadpo_lightning.core.types import REFERENCE_BATCH_KEYS
from betadpo_lightning.distributed import barrier
from betadpo_lightning.models.building import eval_mode
from betadpo_lightning.models.cache_integrity import read_meta, read_part, write_meta, write_part
from betadpo_lightning.models.scoring import head_unsupported_reason, score_rows
from betadpo_lightning.models.support import ModelSupport
from betadpo_lightning.training.checks import weights_fingerprint

__all__ = ["COLUMNS", "StaleCacheError", "cache_key", "prepare_reference_cache"]

COLUMNS: tuple[str, ...] = tuple(column for columns in REFERENCE_BATCH_KEYS.values() for column in columns)
"""The split columns the cache attaches: chosen and rejected log-probs, then chosen and rejected entropies."""


class StaleCacheError(RuntimeError):
    """A reference cache computed for other weights, tokenizer, data, truncation or precision."""


def cache_key(reference: str, model: nn.Module | None, datamodule: Any, precision: str) -> dict[str, Any]:
    """The key a cache is valid for.

    Args:
        reference: where the reference comes from (a checkpoint's name, or the initial policy).
        model: the reference weights (fingerprinted), or ``None`` when they cannot be read (sharded).
        datamodule: a datamodule with ``cache_identity()``.
        precision: the Trainer's precision (the values depend on it).

    Returns:
        ``reference``, ``tokenizer``, ``data``, ``truncation`` and ``precision`` entries (JSON-serialisable).
    """
    fingerprint = weights_fingerprint(model)
    return {
        "reference": {"source": reference, "fingerprint": None if fingerprint is None else fingerprint.tolist()},
        **datamodule.cache_identity(),
        "precision": str(precision),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list) and a and isinstance(a[0], float):
        return len(a) == len(b) and all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a, b, strict=True))
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _differences(old: Any, new: Any, path: str) -> list[str]:
    """``path: old in the cache, new now`` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [line for k in keys for line in _differences(old.get(k), new.get(k), f"{path}.{k}")]
    return [] if _same(old, new) else [f"{path}: {old} in the cache, {new} now"]


def _check(saved: dict[str, Any], key: dict[str, Any], entropy: bool, path: Path) -> None:
    key = json.loads(json.dumps(key, default=str))
    changed = [name for name in key if not _same(key[name], saved["key"].get(name))]
    if changed:
        details = "; ".join(line for name in changed for line in _differences(saved["key"].get(name), key[name], name))
        raise StaleCacheError(
            f"The reference cache at {path} was computed for another {', '.join(changed)} ({details}). Delete the "
            "folder to compute it again, or point `cache_dir` of PrecomputedReference to another folder."
        )
    if entropy and not saved.get("entropy"):
        raise StaleCacheError(
            f"The reference cache at {path} holds no reference entropy, which this run needs; delete the folder to "
            "compute it again with the entropy."
        )


def _compute_share(
    model: nn.Module, datamodule: Any, trainer: pl.Trainer, split: str, batch_size: int, entropy: bool, head: bool
) -> dict[str, torch.Tensor]:
    """This rank's rows of ``split`` (rows ``rank, rank + W, ...``): summed log-probs and entropies, ``(n, 2)``."""
    data = datamodule.splits[split]
    rank, world = trainer.global_rank, trainer.world_size
    rows = list(range(rank, len(data), world))
    device = trainer.strategy.root_device
    support = ModelSupport("PrecomputedReference")  # packed batches run packed where the model takes them
    logps, entropies = [], []
    with torch.no_grad(), eval_mode(model), trainer.precision_plugin.forward_context():
        for start in range(0, len(rows), batch_size):
            batch = datamodule.collate([data[i] for i in rows[start : start + batch_size]])
            batch = support.layout({k: v.to(device) for k, v in batch.items()}, model)
            scores = score_rows(model, batch, head=head, entropy=entropy)
            b = scores.logps.shape[0] // 2
            logps.append(torch.stack([scores.logps[:b], scores.logps[b:]], 1).float().cpu())  # (b, 2)
            if scores.entropy is not None:
                entropies.append(torch.stack([scores.entropy[:b], scores.entropy[b:]], 1).float().cpu())
    share = {"rows": torch.tensor(rows, dtype=torch.long), "logps": torch.cat(logps) if logps else torch.zeros(0, 2)}
    if entropy:
        share["entropy"] = torch.cat(entropies) if entropies else torch.zeros(0, 2)
    return share


def _read(path: Path, split: str, meta: dict[str, Any], length: int) -> dict[str, torch.Tensor]:
    world, entropy = int(meta["world_size"]), bool(meta.get("entropy"))
    values = {"logps": torch.full((length, 2), float("nan"))}
    if entropy:
        values["entropy"] = torch.full((length, 2), float("nan"))
    for rank in range(world):
        part = read_part(path / f"{split}-{rank}-of-{world}.pt", meta)  # checked against its checksum
        for name in values:
            values[name][part["rows"]] = part[name]
    if any(bool(torch.isnan(value).any()) for value in values.values()):
        raise StaleCacheError(f"The reference cache at {path} is incomplete for split '{split}'; delete it.")
    return values


def prepare_reference_cache(
    module: pl.LightningModule,
    trainer: pl.Trainer,
    cache_dir: str | None,
    name_or_path: str | None,
    batch_size: int,
    entropy: bool,
    load: Any,
) -> None:
    """Read (or compute, then read) the reference cache and attach it to the datamodule's splits.

    Args:
        module: the :class:`~betadpo_lightning.training.module.PreferenceModule`, its policy built and untrained.
        trainer: the Trainer (its strategy gathers nothing here; ranks meet at barriers).
        cache_dir: the cache folder (``None``: ``<default_root_dir>/reference_cache``).
        name_or_path: another checkpoint as the reference, or ``None`` for the initial policy.
        batch_size: pairs per batch of the precomputing pass.
        entropy: also compute the reference entropy.
        load: loads a causal LM by name with the module's settings.

    Raises:
        StaleCacheError: for a cache computed for something else.
    """
    datamodule = trainer.datamodule
    if not all(hasattr(datamodule, name) for name in ("cache_identity", "collate", "attach_columns")):
        rank_zero_info("PrecomputedReference: the datamodule does not precompute; batches must carry the values.")
        return
    path = Path(cache_dir) if cache_dir is not None else Path(trainer.default_root_dir) / "reference_cache"
    source = name_or_path or f"initial policy ({module.hparams.model_name_or_path or 'model_config'})"
    model = load(name_or_path) if name_or_path else module.policy
    key = cache_key(source, model, datamodule, trainer.precision)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        model = model.to(trainer.strategy.root_device)
        head = head_unsupported_reason(model) is None
        path.mkdir(parents=True, exist_ok=True)
        for split in datamodule.splits:
            share = _compute_share(model, datamodule, trainer, split, batch_size, entropy, head)
            write_part(path / f"{split}-{trainer.global_rank}-of-{trainer.world_size}.pt", share)
        barrier(trainer.strategy, "reference_cache_parts")
        if trainer.global_rank == 0:
            meta = {"key": key, "entropy": entropy, "world_size": trainer.world_size}
            world = trainer.world_size
            parts = [path / f"{split}-{rank}-of-{world}.pt" for split in datamodule.splits for rank in range(world)]
            write_meta(meta_path, meta, parts)
        barrier(trainer.strategy, "reference_cache_meta")
        rank_zero_info(f"PrecomputedReference: reference values of {sorted(datamodule.splits)} cached at {path}.")
    if name_or_path:
        del model
        gc.collect()
    saved = read_meta(meta_path)
    _check(saved, key, entropy, path)
    for split, data in list(datamodule.splits.items()):
        values = _read(path, split, saved, len(data))
        columns = {COLUMNS[0]: values["logps"][:, 0].tolist(), COLUMNS[1]: values["logps"][:, 1].tolist()}
        if "entropy" in values:
            columns |= {COLUMNS[2]: values["entropy"][:, 0].tolist(), COLUMNS[3]: values["entropy"][:, 1].tolist()}
        datamodule.attach_columns(split, columns)
