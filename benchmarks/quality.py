"""Does dynamic β help? Every method of the library on the synthetic task with a known gold reward.

For each seed: an SFT reference (the chosen responses of the clean training data); from it, every method
(DPO, IPO, β-DPO with ρ = 0 and ρ = 0.2, MallowsPO-θ, ε-DPO) trained with the same budget on three data regimes
(clean; 20% flipped labels; 90% small-gap pairs), once per value of its knob. Each run is evaluated by sampling
on held-out prompts: mean gold reward, win rate against the reference's samples, KL(policy‖reference) from the
policy's samples, and held-out preference accuracy. The knob is chosen per seed on validation prompts; the test
numbers of the chosen runs are reported as means with 95% t-intervals over seeds (splits: see
``quality_lib/settings.py``).

Usage::

    python benchmarks/quality.py            # the full benchmark (8 seeds), ≈ 12 minutes on 2 CPU cores
    python benchmarks/quality.py --quick    # the same pipeline with tiny budgets, ≈ 1–2 minutes

Writes ``quality_table.md``, ``quality.json``, ``quality_gold_vs_kl.png`` and ``quality_beta_dpo.png`` to
``--out`` (``benchmarks/results`` by default; ``--quick`` defaults to ``benchmarks/results/quick``);
``--report quality.json`` rewrites them from an earlier run without training.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from quality_lib import runs as jobs
from quality_lib.plots import beta_dpo_traces, gold_vs_kl
from quality_lib.report import markdown
from quality_lib.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
START = time.perf_counter()


def log(message: str) -> None:
    elapsed = time.perf_counter() - START
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", flush=True)


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = "a GPU" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} × {name}, {gpu} (training on CPU), torch {torch.__version__}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline in a few minutes")
    parser.add_argument("--out", type=Path, default=None, help="where the table, JSON and plots go")
    parser.add_argument("--work", type=Path, default=None, help="work folder (models, logs); a temporary one if unset")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (default: delete it)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes, 1 thread each (default: 2)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 8; --quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per preference run")
    parser.add_argument(
        "--report", type=Path, default=None, help="only rewrite the table and plots from a quality.json"
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings().quick() if args.quick else Settings()
    if args.workers is not None:
        settings = replace(settings, workers=args.workers)
    if args.seeds is not None:
        settings = replace(settings, seeds=tuple(range(args.seeds)))
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if len(settings.seeds) < 2:
        raise SystemExit("--seeds must be at least 2 (the intervals need two values)")
    return settings


def prepare_data(settings: Settings, work: Path) -> None:
    """Generate and tokenize every seed's and regime's data once, before the workers read it from the cache."""
    for seed in settings.seeds:
        for regime in settings.regimes:
            jobs.datamodule(settings, seed, regime, work).prepare_data()


def preference_jobs(settings: Settings) -> list[tuple]:
    """Every (seed, regime, method, value), the slowest methods first (the pool then ends evenly)."""
    cost = {"epsilon": 0, "beta_dpo": 1, "constant": 2}
    methods = sorted(settings.methods, key=lambda m: cost.get(m.controller, 3))
    return [
        (seed, regime, method, value)
        for method in methods
        for value in method.values
        for regime in settings.regimes
        for seed in settings.seeds
    ]


def run_all(settings: Settings, work: Path, pool: Executor) -> tuple[list[dict], list[dict]]:
    log(f"SFT references for {len(settings.seeds)} seeds ({settings.sft_steps} steps each)")
    sft: dict[Future, int] = {pool.submit(jobs.sft_job, settings, seed, work): seed for seed in settings.seeds}
    references = []
    for future in as_completed(sft):
        reference = future.result()
        references.append(reference)
        gold = sum(reference["test_rewards"]) / len(reference["test_rewards"])
        log(f"  SFT seed {reference['seed']}: test gold reward {gold:.2f} ({reference['seconds']:.0f} s)")
    references.sort(key=lambda r: r["seed"])
    todo = preference_jobs(settings)
    log(f"{len(todo)} preference runs ({settings.steps} steps each) on {settings.workers} workers")
    futures = {pool.submit(jobs.preference_job, settings, *job, work): job for job in todo}
    results = []
    for done, future in enumerate(as_completed(futures), 1):
        seed, regime, method, value = futures[future]
        result = future.result()
        results.append(result)
        log(
            f"  [{done}/{len(todo)}] seed {seed} {regime.key:<5} {method.name} {method.knob_label(value)}: "
            f"val gold {result['val_gold']:.2f}, test gold {result['gold']:.2f}, KL {result['kl']:.2f}, "
            f"acc {result['accuracy']:.3f} ({result['seconds']:.0f} s)"
        )
    results.sort(key=lambda r: (r["seed"], r["regime"], r["method"], r["value"]))
    return results, references


def compact_json(record: dict) -> str:
    """The record as JSON with one line per top-level field and one line per reference and run."""
    parts = []
    for key, value in record.items():
        if isinstance(value, list):
            rows = ",\n  ".join(json.dumps(item, ensure_ascii=False) for item in value)
            parts.append(f"{json.dumps(key)}: [\n  {rows}\n]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_outputs(settings: Settings, results: list[dict], references: list[dict], out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_table.md").write_text(markdown(settings, results, references, info), encoding="utf-8")
    record = {"info": info, "settings": asdict(settings), "references": references, "runs": results}
    (out / "quality.json").write_text(compact_json(record), encoding="utf-8")
    gold_vs_kl(settings, results, references, out / "quality_gold_vs_kl.png")
    beta_dpo_traces(settings, results, out / "quality_beta_dpo.png")


def report_only(path: Path, out: Path) -> None:
    """Rewrite the table, JSON and plots from an earlier run's ``quality.json`` (no training)."""
    record = json.loads(path.read_text(encoding="utf-8"))
    settings = Settings.from_dict(record["settings"])
    write_outputs(settings, record["runs"], record["references"], out, record["info"])
    log(f"rewrote the results of {path} in {out}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.report is not None:
        report_only(args.report, args.out or args.report.parent)
        return
    settings = settings_from(args)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    work = args.work or Path(tempfile.mkdtemp(prefix="betadpo-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"quality benchmark{' (quick)' if args.quick else ''}: work folder {work}, results to {out}")
    jobs.init_worker()
    prepare_data(settings, work)
    log("data ready")
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=jobs.init_worker) as pool:
            results, references = run_all(settings, work, pool)
        wall = time.perf_counter() - START
        info = {"quick": args.quick, "machine": machine(), "workers": settings.workers, "wall_seconds": wall,
                "python": sys.version.split()[0]}  # fmt: skip
        write_outputs(settings, results, references, out, info)
    finally:
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    log(f"done in {wall / 60:.1f} min: {out / 'quality_table.md'}")


if __name__ == "__main__":
    main()
