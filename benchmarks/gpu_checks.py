"""Checks that need a CUDA GPU: the response-only head against full logits under bf16 autocast, packed and
prefix-shared batches against padded ones (SDPA with a dense mask and FlexAttention, forward and backward), and
bitsandbytes (4-bit reference, QLoRA policy, 8-bit and paged AdamW) training on CUDA.

    python benchmarks/gpu_checks.py            # prints one line per check and exits non-zero on a failure
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def _model_dir(path: Path) -> Path:
    import bench_step

    args = bench_step.parse_args(["--hidden", "256", "--intermediate", "1024", "--layers", "4", "--vocab", "32000"])
    bench_step.build_model_dir(args, path)
    return path


def check_head(device: str) -> str:
    """Head and full logits agree on a bf16-autocast forward and backward (relative difference of the gradients)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from betadpo_lightning.data.collate import collate_preference_pairs
    from betadpo_lightning.models.scoring import score_rows

    lines = []
    for config in (
        {
            "model_type": "llama",
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 32000,
        },
        {
            "model_type": "gpt_neox",
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 50304,
        },
    ):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).to(device)
        g = torch.Generator().manual_seed(0)
        samples = [
            {
                "prompt_input_ids": torch.randint(3, 1000, (64,), generator=g).tolist(),
                "chosen_input_ids": torch.randint(3, 1000, (64,), generator=g).tolist(),
                "rejected_input_ids": torch.randint(3, 1000, (48,), generator=g).tolist(),
                "index": i,
            }
            for i in range(4)
        ]
        batch = {k: v.to(device) for k, v in collate_preference_pairs(samples, pad_token_id=0).items()}
        results = {}
        for head in (True, False):
            model.zero_grad()
            with torch.autocast(device, dtype=torch.bfloat16):
                logps = score_rows(model, batch, head=head).logps
            logps.sum().backward()
            grad = torch.cat([p.grad.flatten().float() for p in model.parameters()])
            results[head] = (logps.detach(), grad)
        (lh, gh), (lf, gf) = results[True], results[False]
        value = ((lh - lf).abs().max() / lf.abs().max()).item()
        gradient = ((gh - gf).norm() / gf.norm()).item()
        assert value < 2e-2, (config["model_type"], value)
        assert gradient < 5e-2, (config["model_type"], gradient)
        lines.append(
            f"head vs full logits, {config['model_type']}, bf16 autocast: max rel. logp diff {value:.2e}, "
            f"gradient rel. diff {gradient:.2e}"
        )
    return "\n".join(lines)


def check_packed(device: str) -> str:
    """Packed batches give the padded batches' per-pair log-probs and gradients under bf16 autocast, on SDPA (a dense
    4D mask) and on FlexAttention (a block mask; its backward runs only on CUDA), for rotary and absolute positions."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from betadpo_lightning.data.collate import collate_preference_pairs
    from betadpo_lightning.data.packing import pack_preference_pairs
    from betadpo_lightning.models.scoring import score_rows

    g = torch.Generator().manual_seed(0)
    samples = [
        {
            "prompt_input_ids": torch.randint(3, 1000, (int(p),), generator=g).tolist(),
            "chosen_input_ids": torch.randint(3, 1000, (int(c),), generator=g).tolist(),
            "rejected_input_ids": torch.randint(3, 1000, (int(r),), generator=g).tolist(),
            "index": i,
        }
        for i, (p, c, r) in enumerate([(120, 40, 60), (30, 200, 20), (300, 10, 90), (64, 64, 64)])
    ]
    padded = {k: v.to(device) for k, v in collate_preference_pairs(samples, pad_token_id=0).items()}
    packed = {k: v.to(device) for k, v in pack_preference_pairs(samples, pad_token_id=0).items()}
    lines = []
    for model_type in ("llama", "gpt_neox"):
        config = {"model_type": model_type, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2}
        config |= {"num_attention_heads": 4, "vocab_size": 32000, "max_position_embeddings": 1024}
        for implementation in ("sdpa", "flex_attention"):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(**config), attn_implementation=implementation
            ).to(device)
            results = []
            for batch in (padded, packed):
                model.zero_grad()
                with torch.autocast(device, dtype=torch.bfloat16):
                    logps = score_rows(model, batch, head=True).logps  # (2B,)
                logps.sum().backward()
                grad = torch.cat([p.grad.flatten().float() for p in model.parameters()])
                results.append((logps.detach().float(), grad))
            (lp, gp), (lk, gk) = results
            value = ((lk - lp).abs().max() / lp.abs().max()).item()
            gradient = ((gk - gp).norm() / gp.norm()).item()
            assert value < 2e-2, (model_type, implementation, value)
            assert gradient < 5e-2, (model_type, implementation, gradient)
            lines.append(
                f"packed vs padded, {model_type}, {implementation}, bf16 autocast: max rel. logp diff {value:.2e}, "
                f"gradient rel. diff {gradient:.2e}"
            )
    return "\n".join(lines)


def check_bitsandbytes(device: str) -> str:
    """bitsandbytes quantised references, a QLoRA policy and 8-bit / paged optimizers train 5 finite steps."""
    import bench_step
    import bitsandbytes as bnb
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from betadpo_lightning.data.collate import collate_preference_pairs
    from betadpo_lightning.models.reference import AdapterReference, FrozenReference
    from betadpo_lightning.training.module import PreferenceModule

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

    def collate(batch: list[dict]) -> dict:
        return collate_preference_pairs(batch, pad_token_id=0)

    cases = {
        "4-bit reference + AdamW8bit": {
            "reference": FrozenReference(quantization="4bit"),
            "optimizer": lambda p: bnb.optim.AdamW8bit(p, lr=1e-5),
        },
        "QLoRA (4-bit policy, adapters-off reference) + PagedAdamW8bit": {
            "quantization": "4bit",
            "lora": {"r": 16, "lora_alpha": 32},
            "reference": AdapterReference(),
            "optimizer": lambda p: bnb.optim.PagedAdamW8bit(p, lr=1e-4),
        },
        "8-bit reference + PagedAdamW": {
            "reference": FrozenReference(quantization="8bit"),
            "optimizer": lambda p: bnb.optim.PagedAdamW(p, lr=1e-5),
        },
    }
    lines = []
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = _model_dir(Path(workdir) / "model")
        samples = bench_step.make_pairs(bench_step.parse_args(["--vocab", "32000"]), 40)
        for name, kwargs in cases.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            module = PreferenceModule(model_name_or_path=str(model_dir), **kwargs)
            record = Record()
            trainer = pl.Trainer(
                accelerator="gpu" if device == "cuda" else "cpu",
                devices=1,
                precision="bf16-mixed",
                max_steps=5,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[record],
            )
            began = time.perf_counter()
            trainer.fit(module, DataLoader(samples, batch_size=8, collate_fn=collate))
            assert all(math.isfinite(loss) for loss in record.losses), (name, record.losses)
            peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
            losses = ", ".join(f"{x:.4f}" for x in record.losses)
            lines.append(f"{name}: 5 steps in {time.perf_counter() - began:.1f} s, losses {losses}, peak {peak:.2f} GB")
    return "\n".join(lines)


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_checks.py needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    failed = False
    for check in (check_head, check_packed, check_bitsandbytes):
        try:
            print(check("cuda"), flush=True)
        except Exception as error:  # report every check, then fail
            failed = True
            print(f"{check.__name__} FAILED: {type(error).__name__}: {error}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
