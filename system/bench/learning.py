"""Learning benchmark: `qfleet train` over several seeds, and the CleanRL-style DQN baseline beside
it, one run after another (never side by side, so wall times compare). Markdown tables and JSON.

    .venv/bin/python -m system.bench.learning --config configs/cartpole.yaml --seeds 0,1,2,3,4 \
        --total-env-steps 100000 --eval-every 5000 --threshold 475 --baseline
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
"""The checkout: `qfleet train` runs from here (configs/ paths are relative to it)."""


def run_qfleet(config: str, seed: int, args, out_dir: pathlib.Path) -> dict:
    run_dir = out_dir / f"qfleet-seed{seed}"
    settings = {
        "train.seed": seed,
        "train.total_env_steps": args.total_env_steps,
        "train.eval_every_steps": args.eval_every,
        "train.eval_episodes": args.eval_episodes,
        "train.log_every_s": 30,
    }
    command = [sys.executable, "-m", "system.cli", "train", config, "--run-dir", str(run_dir)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    for override in args.set:
        command += ["--set", override]
    print(f"[learning] qfleet seed {seed}: {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    with open(out_dir / f"qfleet-seed{seed}.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - started
    if code != 0:  # reported with the seed's figures so far; the other seeds still run
        print(f"[learning] qfleet train (seed {seed}) exited {code}; see {out_dir / f'qfleet-seed{seed}.log'}")
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    records = [json.loads(line) for line in lines]
    evals = [
        {"env_steps": r["env_steps"], "wall_s": r["wall_s"], "mean_return": r["mean_return"]}
        for r in records
        if r["kind"] == "eval"
    ]
    progress = [r for r in records if r["kind"] == "progress"]
    return {
        "seed": seed,
        "evals": evals,
        "wall_s": round(wall, 1),
        "updates": progress[-1]["updates"] if progress else 0,
        "env_steps": progress[-1]["env_steps"] if progress else 0,
        "achieved_utd": progress[-1]["achieved_utd"] if progress else 0.0,
        "exit_code": code,
    }


def run_baseline(seed: int, args, out_dir: pathlib.Path) -> dict:
    from system.bench.dqn_baseline import train

    print(f"[learning] baseline seed {seed}: {args.baseline_steps:,} steps", flush=True)
    result = train(seed, args.env, args.baseline_steps, args.baseline_eval_every, args.eval_episodes, args.threshold)
    (out_dir / f"baseline-seed{seed}.json").write_text(json.dumps(result))
    return {"seed": seed, "evals": result["evals"], "wall_s": result["train_seconds"]}


def summarise(result: dict, threshold: float | None) -> dict:
    """One seed's figures: the first evaluation at or above `threshold` (env steps, and wall time
    since the run started, start-up included), the lowest evaluation from then on ("held" when it
    stays at or above the threshold), the final evaluation and the run's wall time."""
    evals = result["evals"]
    out = {"seed": result["seed"], "final": evals[-1]["mean_return"] if evals else None, "wall_s": result["wall_s"]}
    if threshold is not None:
        hit = next((i for i, e in enumerate(evals) if e["mean_return"] >= threshold), None)
        out["reached_env_steps"] = evals[hit]["env_steps"] if hit is not None else None
        out["reached_wall_s"] = evals[hit]["wall_s"] if hit is not None else None
        out["min_after"] = min(e["mean_return"] for e in evals[hit:]) if hit is not None else None
        # From which evaluation on every evaluation stays at or above the threshold ("held").
        stable = len(evals)
        while stable > 0 and evals[stable - 1]["mean_return"] >= threshold:
            stable -= 1
        out["held_from_env_steps"] = evals[stable]["env_steps"] if stable < len(evals) else None
        out["held_from_wall_s"] = evals[stable]["wall_s"] if stable < len(evals) else None
    return out


def _fmt(value, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def _median(rows: list[dict], key: str, spec: str) -> str:
    value = statistics.median([r[key] if r[key] is not None else float("inf") for r in rows])
    return _fmt(None if value == float("inf") else value, spec)


def table(name: str, rows: list[dict], threshold: float | None) -> str:
    if threshold is None:
        head = f"| {name} seed | final eval return | wall time (s) |\n|---:|---:|---:|\n"
        body = "".join(f"| {r['seed']} | {_fmt(r['final'], '.1f')} | {r['wall_s']:.0f} |\n" for r in rows)
        return head + body + f"| median | {_median(rows, 'final', '.1f')} | |\n"
    t = f"{threshold:g}"
    head = (
        f"| {name} seed | first eval >= {t} (env steps) | wall time to it (s) | lowest eval after | "
        f"every eval >= {t} from (env steps) | wall time to it (s) | final eval | run wall time (s) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['seed']} | {_fmt(r['reached_env_steps'], ',')} | {_fmt(r['reached_wall_s'], '.0f')} | "
        f"{_fmt(r['min_after'], '.1f')} | {_fmt(r['held_from_env_steps'], ',')} | "
        f"{_fmt(r['held_from_wall_s'], '.0f')} | {_fmt(r['final'], '.1f')} | {r['wall_s']:.0f} |\n"
        for r in rows
    )
    medians = (
        f"| median | {_median(rows, 'reached_env_steps', ',.0f')} | {_median(rows, 'reached_wall_s', '.0f')} | | "
        f"{_median(rows, 'held_from_env_steps', ',.0f')} | {_median(rows, 'held_from_wall_s', '.0f')} | | |\n"
    )
    return head + body + medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cartpole.yaml")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)")
    parser.add_argument("--total-env-steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threshold", type=float, help="return to reach (CartPole: 475)")
    parser.add_argument("--set", action="append", default=[], help="extra qfleet overrides (repeatable)")
    parser.add_argument("--baseline", action="store_true", help="also run the CleanRL-style DQN baseline")
    parser.add_argument("--baseline-steps", type=int, default=500_000)
    parser.add_argument("--baseline-eval-every", type=int, default=10_000)
    parser.add_argument("--env", default="CartPole-v1", help="the baseline's env (default: CartPole-v1)")
    parser.add_argument("--out-dir", default="runs/bench-learning", help="run directories and logs")
    parser.add_argument("--output", help="write every figure as JSON here")
    parser.add_argument("--summarise", metavar="JSON", help="only print the tables of an earlier --output file")
    args = parser.parse_args()
    if args.summarise:
        results = json.loads(pathlib.Path(args.summarise).read_text())
        for side in ("qfleet", "baseline"):
            if results[side]:
                print(table(side, [summarise(r, args.threshold) for r in results[side]], args.threshold))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "qfleet": [], "baseline": []}
    for seed in seeds:
        results["qfleet"].append(run_qfleet(args.config, seed, args, out_dir))
        print(table("qfleet", [summarise(r, args.threshold) for r in results["qfleet"]], args.threshold), flush=True)
    if args.baseline:
        for seed in seeds:
            results["baseline"].append(run_baseline(seed, args, out_dir))
    print(table("qfleet", [summarise(r, args.threshold) for r in results["qfleet"]], args.threshold))
    if results["baseline"]:
        print(table("baseline", [summarise(r, args.threshold) for r in results["baseline"]], args.threshold))
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
