"""One DPO training step, side by side: this library (packed and prefix-shared, padded, precomputed reference, LoRA),
the naive PyTorch floor, and TRL's ``DPOTrainer``, on the same Llama-style model and the same pairs.

Each variant runs in its own process (so each has its own peak memory), the variants are interleaved over several
rounds, and each process times its steps after a warm-up. The table reports the median over rounds of each process's
median step time, pairs per second, the tokens each pair sends through the policy's trunk, peak memory (peak RSS on
CPU, peak CUDA allocation on GPU) and the ratios against TRL and against the naive floor.

Pair lengths are fixed (``--prompt``/``--response``) or drawn from the token-length tables of real pairs in
``benchmarks/data/`` (``--lengths hh``: Anthropic HH-RLHF with the Pythia tokenizer, max_length 512;
``--lengths ultrafeedback``: UltraFeedback with the Qwen2 tokenizer, max_length 1,024), truncated by the library's rule.

    python benchmarks/bench_step.py                      # the default size, CPU, 2 threads
    python benchmarks/bench_step.py --vocab 128256       # the memory effect of a large vocabulary
    python benchmarks/bench_step.py --lengths hh --variants ours_packed,ours,trl   # users' length distributions
    python benchmarks/bench_step.py --preset pythia410m --device cuda --dtype bf16   # on a GPU
    python benchmarks/bench_step.py --preset pythia410m --device cuda --dtype bf16 --lengths hh \
        --variants ours_packed,ours,trl --attn flex_attention   # packed with FlexAttention block masks

TRL comes with the ``bench`` extra (``pip install -e '.[bench]'``); without it the TRL variant is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "ours_packed": "ours packed + prefix-shared, live reference",
    "ours": "ours padded, live reference",
    "ours_precomputed": "ours, precomputed reference",
    "ours_lora": "ours, LoRA (adapters-off reference)",
    "floor": "naive PyTorch floor",
    "trl": "TRL DPOTrainer",
}
LENGTH_TABLES = {"hh": "pair_lengths_hh_pythia.csv", "ultrafeedback": "pair_lengths_ultrafeedback_qwen2.csv"}
DEFAULT_MAX_LENGTH = {"hh": 512, "ultrafeedback": 1024}
PRESETS = {
    "default": {"hidden": 256, "intermediate": 1024, "layers": 4, "heads": 4, "vocab": 32000},
    "pythia410m": {"hidden": 1024, "intermediate": 4096, "layers": 24, "heads": 16, "vocab": 50304},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="model size")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step (B)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per pair")
    parser.add_argument("--response", type=int, default=128, help="response tokens per row")
    parser.add_argument(
        "--lengths", choices=["fixed", *LENGTH_TABLES], default="fixed", help="fixed lengths or a real length table"
    )
    parser.add_argument("--max-length", type=int, help="prompt + response limit (default: 512 hh, 1024 ultrafeedback)")
    parser.add_argument("--max-prompt-length", type=int, help="prompt limit (default: none)")
    parser.add_argument(
        "--attn", help="attention kernel of every variant's model (sdpa, eager, flex_attention; default: the model's)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: bf16-mixed autocast")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--out", help="write the raw results (JSON) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.max_length is None:
        args.max_length = DEFAULT_MAX_LENGTH.get(args.lengths, args.prompt + args.response)
    return args


# --------------------------------------------------------------------------------------------- shared set-up
def build_model_dir(args: argparse.Namespace, path: Path) -> None:
    """A randomly initialised Llama-style model and a word-level tokenizer with the same vocabulary, saved."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        vocab_size=args.vocab,
        max_position_embeddings=args.max_length + 8,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {f"w{i}": i for i in range(3, args.vocab)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    tokenizer.save_pretrained(path)


def pair_lengths(args: argparse.Namespace, count: int) -> list[tuple[int, int, int]]:
    """``count`` (prompt, chosen, rejected) lengths: fixed, or drawn in a seeded order from a length table.

    Responses get one EOS token, as the data module appends; pairs are truncated with the library's rule.
    """
    import csv
    import random

    from betadpo_lightning.data.truncation import TruncationLimits, truncate_pair

    if args.lengths == "fixed":
        return [(args.prompt, args.response, args.response)] * count
    with open(Path(__file__).parent / "data" / LENGTH_TABLES[args.lengths], newline="") as handle:
        table = [tuple(int(value) for value in row.values()) for row in csv.DictReader(handle)]
    limits = TruncationLimits(args.max_length, args.max_prompt_length)
    rng, lengths = random.Random(1), []
    while len(lengths) < count:
        for p, c, r in rng.sample(table, len(table)):
            pair = truncate_pair([0] * p, [0] * (c + 1), [0] * (r + 1), limits)
            if pair is not None:
                lengths.append((len(pair.prompt), len(pair.chosen), len(pair.rejected)))
    return lengths[:count]


def make_pairs(args: argparse.Namespace, count: int) -> list[dict]:
    """Token ids of ``count`` pairs: prompt, chosen and rejected responses (each ending with EOS = 1)."""
    import torch

    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(3, args.vocab, (n,), generator=g).tolist()

    return [
        {
            "prompt_input_ids": ids(p),
            "chosen_input_ids": [*ids(c - 1), 1],
            "rejected_input_ids": [*ids(r - 1), 1],
            "index": i,
        }
        for i, (p, c, r) in enumerate(pair_lengths(args, count))
    ]


def count_trunk_tokens(model, counts: list[int]) -> None:
    """Append the number of token positions of every forward of ``model``'s trunk to ``counts``."""
    model.get_input_embeddings().register_forward_pre_hook(lambda module, inputs: counts.append(inputs[0].numel()))


def peak_memory(device: str) -> float:
    """Peak memory in GB: CUDA allocation on GPU, resident set size of the process on CPU."""
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ variants
def run_ours(args: argparse.Namespace, model_dir: Path, variant: str) -> tuple[list[float], list[int]]:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from betadpo_lightning.data.collate import collate_preference_pairs
    from betadpo_lightning.data.packing import pack_preference_pairs
    from betadpo_lightning.models.reference import AdapterReference, PrecomputedReference
    from betadpo_lightning.training.module import PreferenceModule

    total = args.warmup + args.steps
    samples = make_pairs(args, args.pairs * total)
    kwargs: dict = {}
    lr = 1e-6
    if variant == "ours_precomputed":
        values = torch.load(Path(args.workdir) / "reference.pt")  # computed by the `precompute` child, elsewhere
        for sample, (chosen, rejected) in zip(samples, values.tolist(), strict=True):
            sample["reference_chosen_logps"], sample["reference_rejected_logps"] = chosen, rejected
        kwargs["reference"] = PrecomputedReference()
    elif variant == "ours_lora":
        kwargs |= {"lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}, "reference": AdapterReference()}
        lr = 1e-4

    def collate(batch: list[dict]) -> dict:
        if variant == "ours_packed":
            return pack_preference_pairs(batch, pad_token_id=0, max_row_tokens=args.max_length)  # the data default
        return collate_preference_pairs(batch, pad_token_id=0)

    loader = DataLoader(samples, batch_size=args.pairs, collate_fn=collate)
    module = PreferenceModule(
        model_name_or_path=str(model_dir),
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.0),
        attn_implementation=args.attn,
        **kwargs,
    )
    times: list[float] = []
    forwards: list[int] = []  # every trunk forward of the policy model (twice a step with LoRA: adapters off too)
    tokens: list[int] = []  # the policy's forward of each step

    class Timer(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            count_trunk_tokens(pl_module.policy, forwards)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            synchronize(args.device)
            self.first = len(forwards)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            synchronize(args.device)
            times.append(time.perf_counter() - self.start)
            tokens.append(forwards[self.first])

    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if args.dtype == "bf16" else "32-true",
        max_steps=total,
        callbacks=[Timer()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)
    return times[args.warmup :], tokens[-args.steps :]


def run_precompute(args: argparse.Namespace, model_dir: Path) -> None:
    """Reference log-probs of every pair, computed once with the library's scoring, saved for ``ours_precomputed``."""
    import torch
    from transformers import AutoModelForCausalLM

    from betadpo_lightning.data.collate import collate_preference_pairs
    from betadpo_lightning.models.scoring import score_rows

    samples = make_pairs(args, args.pairs * (args.warmup + args.steps))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=args.attn).to(args.device).eval()
    values = []
    with torch.no_grad():
        for start in range(0, len(samples), args.pairs):
            batch = collate_preference_pairs(samples[start : start + args.pairs], pad_token_id=0)
            batch = {k: v.to(args.device) for k, v in batch.items()}
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
                logps = score_rows(model, batch, head=True).logps.cpu()  # (2B,)
            b = logps.shape[0] // 2
            values.append(torch.stack([logps[:b], logps[b:]], dim=1))
    torch.save(torch.cat(values), Path(args.workdir) / "reference.pt")


def run_floor(args: argparse.Namespace, model_dir: Path) -> tuple[list[float], list[int]]:
    """Plain PyTorch: policy forward + backward and reference forward with full logits, sigmoid DPO, AdamW."""
    import copy

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from betadpo_lightning.data.collate import collate_preference_pairs

    device = torch.device(args.device)
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=args.attn).to(device).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)
    samples = make_pairs(args, args.pairs * (args.warmup + args.steps))

    def logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        per_token = torch.gather(logits.float().log_softmax(-1), 2, labels.clamp(min=0)[..., None]).squeeze(-1)
        return (per_token * mask).sum(-1)

    times, tokens = [], []
    count_trunk_tokens(policy, tokens)
    for start in range(0, len(samples), args.pairs):
        batch = collate_preference_pairs(samples[start : start + args.pairs], pad_token_id=0)
        batch = {k: v.to(device) for k, v in batch.items()}
        synchronize(args.device)
        began = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            policy_logps = logps(policy, batch)
            with torch.no_grad():
                reference_logps = logps(reference, batch)
        b = policy_logps.shape[0] // 2
        margins = (policy_logps[:b] - reference_logps[:b]) - (policy_logps[b:] - reference_logps[b:])
        loss = -F.logsigmoid(0.1 * margins).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(args.device)
        times.append(time.perf_counter() - began)
    return times[args.warmup :], tokens[-args.steps :]


def run_trl(args: argparse.Namespace, model_dir: Path) -> tuple[list[float], list[int]]:
    import copy

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    def text(ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)

    samples = make_pairs(args, args.pairs * (args.warmup + args.steps))
    rows = {
        "prompt": [text(s["prompt_input_ids"]) for s in samples],
        "chosen": [text(s["chosen_input_ids"][:-1]) for s in samples],  # TRL appends EOS itself
        "rejected": [text(s["rejected_input_ids"][:-1]) for s in samples],
    }
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=args.attn)
    reference = copy.deepcopy(model)  # TRL needs an explicit reference for a model it did not load itself
    times: list[float] = []
    tokens: list[int] = []
    count_trunk_tokens(model, tokens)

    class Timer(TrainerCallback):
        def on_step_begin(self, *unused, **kwargs) -> None:
            synchronize(args.device)
            self.start = time.perf_counter()

        def on_step_end(self, *unused, **kwargs) -> None:
            synchronize(args.device)
            times.append(time.perf_counter() - self.start)

    config = DPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        per_device_train_batch_size=args.pairs,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        beta=0.1,
        max_length=None,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16",
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    trainer.train()
    return times[args.warmup :], tokens[-args.steps :]


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model_dir = Path(args.workdir) / "model"
    if args.child == "precompute":
        run_precompute(args, model_dir)
        return
    runner = {"floor": run_floor, "trl": run_trl}.get(args.child)
    times, tokens = runner(args, model_dir) if runner else run_ours(args, model_dir, args.child)
    result = {"times": times, "trunk_tokens": tokens, "peak_gb": peak_memory(args.device)}
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------- parent
def launch(args: argparse.Namespace, variant: str, argv: list[str]) -> dict | None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env |= {"OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    command = [sys.executable, __file__, *argv, "--child", variant, "--workdir", args.workdir]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or (variant != "precompute" and not results):
        print(f"[{variant}] failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(results[-1][len("RESULT ") :]) if results else {}


# Model FLOPs per token, in units of N (the parameters that multiply: all but the input embedding):
# training a model costs 6N per token (forward 2N, backward 4N), a forward pass alone 2N; LoRA trains no base
# weight, so its backward costs 2N (activation gradients only).
FLOPS_PER_TOKEN = {"ours_packed": 8, "ours": 8, "floor": 8, "trl": 8, "ours_precomputed": 6, "ours_lora": 6}


def matmul_parameters(args: argparse.Namespace) -> int:
    """N: the parameters of the Llama-style model that take part in matrix products."""
    h, i, layers, v = args.hidden, args.intermediate, args.layers, args.vocab
    return layers * (4 * h * h + 3 * h * i) + v * h


def information_tokens(args: argparse.Namespace) -> float:
    """Prompt + chosen + rejected tokens of a timed step (the tokens that carry information), averaged over steps."""
    lengths = pair_lengths(args, args.pairs * (args.warmup + args.steps))[args.pairs * args.warmup :]
    return sum(p + c + r for p, c, r in lengths) / args.steps


def table(args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    """The results table and the ratio lines of packed against padded and against TRL."""
    medians = {v: statistics.median(statistics.median(r["times"]) for r in rs) for v, rs in runs.items() if rs}
    peaks = {v: max(r["peak_gb"] for r in rs) for v, rs in runs.items() if rs}
    trunk = {
        v: statistics.median(statistics.mean(r["trunk_tokens"]) for r in rs) / args.pairs
        for v, rs in runs.items()
        if rs
    }
    gpu = args.device == "cuda"
    memory = "peak CUDA allocation" if gpu else "peak RSS"
    tokens = information_tokens(args)  # MFU counts each information-carrying token once, for every variant
    header = (
        f"| variant | s/step | pairs/s | trunk tokens/pair | {memory} (GB) | throughput vs TRL | memory vs TRL "
        "| step time vs floor |"
    )
    lines = [
        header + (" tokens/s | MFU |" if gpu else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else ""),
    ]
    trl, floor = medians.get("trl"), medians.get("floor")
    for variant, seconds in medians.items():
        speed = f"{trl / seconds:.2f}×" if trl else "–"
        mem = f"{peaks[variant] / peaks['trl']:.2f}×" if "trl" in peaks else "–"
        vs_floor = f"{seconds / floor:.2f}×" if floor else "–"
        line = (
            f"| {VARIANTS[variant]} | {seconds:.3f} | {args.pairs / seconds:.2f} | {trunk[variant]:.0f} | "
            f"{peaks[variant]:.2f} | {speed} | {mem} | {vs_floor} |"
        )
        if gpu:
            flops = FLOPS_PER_TOKEN[variant] * matmul_parameters(args) * tokens / seconds
            line += f" {tokens / seconds:,.0f} | {100 * flops / (args.peak_tflops * 1e12):.1f}% |"
        lines.append(line)
    lines.append("")
    lines.append(f"information tokens (prompt + chosen + rejected) per pair: {tokens / args.pairs:.0f}")
    if "ours_packed" in medians:
        packed = medians["ours_packed"]
        for other, name in (("ours", "ours padded"), ("trl", "TRL")):
            if other in medians:
                lines.append(f"ours packed / {name} throughput: {medians[other] / packed:.2f}×")
        if "ours" in medians:
            ratio = trunk["ours_packed"] / trunk["ours"]
            lines.append(f"ours packed / ours padded trunk tokens per pair: {ratio:.2f}×")
            lines.append(f"ours packed / ours padded peak memory: {peaks['ours_packed'] / peaks['ours']:.2f}×")
    return "\n".join(lines)


def child_arguments(argv: list[str]) -> list[str]:
    """The command line without ``--out`` (the children print their results instead)."""
    passthrough, skip = [], False
    for item in argv:
        if skip or item.startswith("--out="):
            skip = False
            continue
        skip = item == "--out"
        if not skip:
            passthrough.append(item)
    return passthrough


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    if "trl" in variants:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed (pip install -e '.[bench]'): skipping its variant.", file=sys.stderr)
            variants.remove("trl")
    passthrough = child_arguments(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        build_model_dir(args, Path(workdir) / "model")
        if "ours_precomputed" in variants:
            launch(args, "precompute", passthrough)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_index in range(args.rounds):
            for variant in variants:
                result = launch(args, variant, passthrough)
                if result:
                    runs[variant].append(result)
                    print(
                        f"round {round_index + 1} {variant}: {statistics.median(result['times']):.3f} s/step, "
                        f"{result['peak_gb']:.2f} GB",
                        file=sys.stderr,
                        flush=True,
                    )
    size = (
        f"Llama hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, {args.heads} heads, "
        f"vocabulary {args.vocab}; {args.pairs} pairs a step, "
        + (
            f"{args.prompt} prompt + {args.response} response tokens; "
            if args.lengths == "fixed"
            else f"lengths from the {args.lengths} table, max_length {args.max_length}; "
        )
        + f"{args.dtype} on {args.device}"
        + (f", {args.threads} threads" if args.device == "cpu" else "")
        + f"; median of {args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} warm-up steps"
    )
    print(f"\n{size}\n\n{table(args, runs)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
