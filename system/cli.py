"""The `qfleet` command line.

    qfleet train CONFIG [--set section.key=value ...] [--run-dir DIR] | --resume RUN_DIR
    qfleet eval RUN_DIR [--episodes N]
    qfleet status [RUN_DIR | --redis-url URL --run NAME]
    qfleet report RUN_DIR
    qfleet discovery [RUN_DIR] [--redis-url URL] [--run NAME ...] [--host H] [--port P]
    qfleet replay serve [--config FILE] [--spec FILE] [--set section.key=value ...] [--capacity N ...]
    qfleet learner run --redis-url URL --run NAME [--config FILE] [--checkpoint-dir DIR] [...]
    qfleet actors run --redis-url URL --run NAME [--config FILE] [--num-actors N] [...]
    qfleet scale --actors N --redis-url URL --run NAME
    qfleet bench {replay,sharded,learner,actors} [--seconds S] [--output FILE]
    qfleet config [CONFIG] [--set ...]          print the resolved config (or the reference)

Option help comes from the config dataclasses' field docstrings.
"""

from __future__ import annotations

import argparse
import logging
import sys

from actors import ActorsConfig, EnvConfig
from learner import LearnerConfig
from replay import ReplayConfig, ReplayError, SpecMismatchError
from system.config import RunConfig, load_config, to_yaml
from system.dataclass_args import ConfigError, add_arguments, describe


def _flags(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "." in k}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML run config (configs/*.yaml); defaults apply without one")
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, e.g. --set replay.capacity=1000000 (repeatable)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", required=True, help="the run's Redis, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--run", default="default", help="run name shared by its shards, learner and actors (default: default)"
    )


def _add_bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (default: 3)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats per figure; the median is reported (default: 3)"
    )
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfleet",
        description="qfleet: distributed actor-learner Q-learning on Ray with a sharded gRPC replay service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train: the whole system (Redis, Ray, shards, learner, actors) for one run",
        description=(
            "Run the whole system for one run until train.total_env_steps, Ctrl-C or SIGTERM. With no "
            "redis.url and no ray.address it starts everything on this machine: a redis-server on a free "
            "loopback port, Ray, train.num_shards replay shards, the learner and actors.num_actors env "
            "actors (all Ray actors); with both set it runs on that Ray cluster. Progress goes to the "
            "terminal; the run directory gets the resolved config, metrics.jsonl, checkpoints, and at "
            "the end a learning curve and summary. Ctrl-C/SIGTERM stops in order (actors flush, the "
            "learner checkpoints, shards checkpoint); --resume continues the run later. Every key: "
            "`qfleet config`."
        ),
        epilog="example: qfleet train configs/cartpole.yaml --set train.total_env_steps=20000 --set actors.num_actors=1",
    )
    train.add_argument("path", nargs="?", metavar="CONFIG", help="YAML run config (configs/*.yaml); omit with --resume")
    train.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, e.g. --set train.total_env_steps=50000 (repeatable; also with --resume)",
    )
    train.add_argument(
        "--run-dir", metavar="DIR", help="run directory (default: train.run_dir, else runs/<env>-<time>)"
    )
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run: its config, checkpoints and counters"
    )

    evaluate = commands.add_parser(
        "eval",
        help="evaluate the newest learner checkpoint of a run",
        description=(
            "Load RUN_DIR's config and newest learner checkpoint and run --episodes episodes (one env "
            "each) acting greedily (or with --epsilon). Prints mean, std, min and max return and writes "
            "RUN_DIR/eval.json. Needs no Redis, Ray or shards."
        ),
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a `qfleet train` run directory")
    evaluate.add_argument("--episodes", type=int, metavar="N", help="episodes (default: train.eval_episodes)")
    evaluate.add_argument("--epsilon", type=float, metavar="E", help="exploration (default: train.eval_epsilon)")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the episodes (default: 0)")

    status = commands.add_parser(
        "status",
        help="live view of a run's learner, shards and actors (from Redis)",
        description=(
            "Read a running run's status from its Redis: the learner (updates, rate, weights version, "
            "UTD, loss), every live shard (address, items, inserts, samples) and every actor (env steps, "
            "episodes, weights, epsilon, restarts, lost transitions). Give a `qfleet train` RUN_DIR, or "
            "--redis-url and --run."
        ),
    )
    status.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a running `qfleet train` run directory")
    status.add_argument("--redis-url", help="the run's Redis, e.g. redis://127.0.0.1:6379/0")
    status.add_argument("--run", help="run name (default: the run directory's, else default)")

    report = commands.add_parser(
        "report",
        help="learning curve (PNG) and summary table of a run",
        description=(
            "Rebuild RUN_DIR/learning_curve.png (return vs env steps and vs wall time: training episodes "
            "and evaluations) and RUN_DIR/summary.md from RUN_DIR/metrics.jsonl; print the summary. "
            "Works on finished and running runs."
        ),
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a `qfleet train` run directory")

    discovery = commands.add_parser(
        "discovery",
        help="Prometheus HTTP service discovery of every component's /metrics (from Redis)",
        description=(
            "Serve Prometheus' http_sd at http://HOST:PORT/targets: the /metrics address of the driver, "
            "learner, every live shard and every reporting actor of the runs registered in a Redis, "
            "labelled job, run, shard and actor. deploy/prometheus/prometheus.yml points at it. Give "
            "--redis-url (every run there, or --run NAME ...) or a `qfleet train` RUN_DIR (that run)."
        ),
    )
    discovery.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a running `qfleet train` run directory")
    discovery.add_argument("--redis-url", help="the Redis the runs register in, e.g. redis://redis:6379/0")
    discovery.add_argument("--run", action="append", default=[], metavar="NAME", help="only this run (repeatable)")
    discovery.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    discovery.add_argument("--port", type=int, default=9101, help="port (default: 9101; 0: any free port)")

    replay = commands.add_parser("replay", help="replay shard commands", description="Replay shard commands.")
    replay_commands = replay.add_subparsers(dest="replay_command", metavar="SUBCOMMAND", required=True)
    serve = replay_commands.add_parser(
        "serve",
        help="run one standalone replay shard",
        description=(
            "Run one replay shard (gRPC) until SIGTERM or Ctrl-C. The item spec comes from --spec, or "
            "else from the config's environment (env.id). With replay.checkpoint_dir set, the shard "
            "restores the newest good checkpoint at start and writes one at shutdown. Prints "
            "'qfleet replay: shard N serving at HOST:PORT; metrics URL' once serving."
        ),
    )
    _add_config_options(serve)
    serve.add_argument(
        "--spec", metavar="FILE", help='JSON/YAML spec file: {"obs": {"shape": [4], "dtype": "float32"}, ...}'
    )
    serve.add_argument(
        "--env-id",
        dest="env.id",
        metavar="ID",
        help=f"gymnasium id whose transitions the shard stores (default: {EnvConfig.id})",
    )
    serve.add_argument(
        "--report-every", type=float, default=30.0, metavar="S", help="seconds between progress lines (default: 30)"
    )
    add_arguments(serve, ReplayConfig, "replay")

    learner = commands.add_parser("learner", help="learner commands", description="Learner commands.")
    learner_commands = learner.add_subparsers(dest="learner_command", metavar="SUBCOMMAND", required=True)
    learner_run = learner_commands.add_parser(
        "run",
        help="run the learner against a run's shards until SIGTERM",
        description=(
            "Train from the shards registered under --run in Redis, publish weights to the run's "
            "parameter store, checkpoint into --checkpoint-dir (resuming any checkpoint there) and "
            "serve /metrics. SIGTERM or Ctrl-C: finish the update, publish, checkpoint, exit 0. "
            "Prints 'qfleet learner: run NAME on DEVICE (...); metrics URL' once started."
        ),
    )
    _add_config_options(learner_run)
    _add_run_options(learner_run)
    learner_run.add_argument("--checkpoint-dir", metavar="DIR", help="learner checkpoints (resumed when present)")
    learner_run.add_argument("--max-updates", type=int, metavar="N", help="stop after N updates in total")
    learner_run.add_argument("--metrics-port", type=int, metavar="PORT", help="serve /metrics here (0: a free port)")
    learner_run.add_argument(
        "--log-every", type=float, default=10.0, metavar="S", help="seconds between progress lines (default: 10)"
    )
    add_arguments(learner_run, LearnerConfig, "learner")

    actors = commands.add_parser("actors", help="env actor commands", description="Env actor commands.")
    actors_commands = actors.add_subparsers(dest="actors_command", metavar="SUBCOMMAND", required=True)
    actors_run = actors_commands.add_parser(
        "run",
        help="run the env actors of a run on Ray until SIGTERM",
        description=(
            "Start actors.num_actors env actors (Ray actors; a local Ray instance unless --ray-address) "
            "that step env.num_envs copies of env.id each with the latest published weights and insert "
            "n-step transitions into the shards registered under --run. Restarts actors that die, follows "
            "`qfleet scale`, prints progress. SIGTERM or Ctrl-C: flush every actor's transitions, stop, exit 0."
        ),
    )
    _add_config_options(actors_run)
    _add_run_options(actors_run)
    actors_run.add_argument(
        "--ray-address", metavar="ADDR", help="an existing Ray cluster (default: start Ray locally)"
    )
    actors_run.add_argument("--max-env-steps", type=int, metavar="N", help="stop after N env steps over all actors")
    actors_run.add_argument(
        "--log-every", type=float, default=10.0, metavar="S", help="seconds between progress lines (default: 10)"
    )
    add_arguments(actors_run, ActorsConfig, "actors")

    scale = commands.add_parser(
        "scale",
        help="change the number of env actors of a running run",
        description="Write the wanted actor count to the run's Redis; the running actor supervisor starts or retires actors to match within a second.",
    )
    scale.add_argument("--actors", type=int, required=True, metavar="N", help="wanted number of env actors")
    _add_run_options(scale)

    bench = commands.add_parser("bench", help="benchmarks (figures for docs/benchmarks.md)", description="Benchmarks.")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    bench_replay = bench_commands.add_parser(
        "replay",
        help="insert/sample throughput of one shard vs raw gRPC and an in-process table",
        description=(
            "Measures one replay shard on loopback with CartPole-size (4 float32 obs) and Atari-size "
            "(84x84x4 uint8 obs) transitions: insert and prioritized-sample throughput, beside raw gRPC "
            "streaming of the same bytes (the transport limit) and an in-process numpy table (the memory "
            "limit), all in one run. Prints a Markdown table."
        ),
    )
    _add_bench_options(bench_replay)
    bench_replay.add_argument("--only", choices=["cartpole", "cartpole_small", "atari"], help="run one payload only")

    bench_sharded = bench_commands.add_parser(
        "sharded",
        help="aggregate throughput of 1, 2, 4 shards; prefetching vs synchronous sampling",
        description=(
            "Starts N shard processes (CartPole-size items) with one writer process per shard and "
            "measures aggregate insert and sample throughput for each N, then the batches/s a "
            "consumer receives with synchronous sampling vs the Prefetcher. Prints Markdown tables."
        ),
    )
    _add_bench_options(bench_sharded)
    bench_sharded.add_argument("--shards", default="1,2,4", help="comma-separated shard counts (default: 1,2,4)")

    bench_learner = bench_commands.add_parser(
        "learner",
        help="learner updates/s fed over gRPC (shard + prefetcher) vs from an in-process buffer",
        description=(
            "Runs the learner's training loop on the CartPole MLP (batch 256) and the Atari Nature CNN "
            "(batches 32 and 256), fed once from a replay shard in another process over gRPC through "
            "the prefetching sampler and once from the same table in-process. Prints a Markdown table."
        ),
    )
    _add_bench_options(bench_learner)
    bench_learner.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N (default: auto)")
    bench_learner.add_argument(
        "--case",
        action="append",
        choices=("cartpole-mlp b256", "atari-cnn b32", "atari-cnn b256"),  # = learner.bench.CASES
        help="run only this case (repeatable; default: all three)",
    )

    bench_actors = bench_commands.add_parser(
        "actors",
        help="env steps/s of qfleet's actor vs a plain gymnasium loop; 1 vs 2 Ray actors",
        description=(
            "Starts a redis-server and a replay shard, then measures env steps/s of a plain gymnasium "
            "loop acting with the same network against qfleet's EnvActor (n-step transitions, inserts, "
            "weight subscription, episode records), in-process and as a Ray actor, alternating "
            "segments; then the aggregate of a fleet of 1 and 2 Ray actors. Prints a Markdown table."
        ),
    )
    _add_bench_options(bench_actors)
    bench_actors.add_argument("--env", default="CartPole-v1", help="gymnasium id (default: CartPole-v1)")
    bench_actors.add_argument("--num-envs", type=int, default=8, help="envs per actor (default: 8)")

    config = commands.add_parser(
        "config",
        help="print a resolved config, or the reference of every key",
        description="Print the resolved config (YAML) of CONFIG with --set overrides; with no CONFIG, every key with its default and meaning.",
    )
    config.add_argument("path", nargs="?", metavar="CONFIG", help="YAML run config")
    config.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="override one value (repeatable)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "train":
            from system.train import run_train

            if args.path is None and args.resume is None:
                raise ConfigError("give a CONFIG (e.g. configs/cartpole.yaml), or --resume RUN_DIR")
            if args.resume is not None and args.run_dir is not None:
                raise ConfigError("--run-dir with --resume: a resumed run stays in its own directory")
            return run_train(args.path, args.set, args.run_dir, args.resume)
        if args.command == "eval":
            from system.evaluate import main_eval

            if args.episodes is not None and args.episodes < 1:
                raise ConfigError(f"--episodes {args.episodes}: must be >= 1")
            return main_eval(args.run_dir, args.episodes, args.epsilon, args.seed)
        if args.command == "status":
            from system.status import main_status

            return main_status(args.run_dir, args.redis_url, args.run)
        if args.command == "discovery":
            from system.discovery_server import main_discovery

            return main_discovery(args.run_dir, args.redis_url, args.run, args.host, args.port)
        if args.command == "report":
            from system.report import main_report

            return main_report(args.run_dir)
        if args.command == "replay":
            from system.serve import main_serve

            config = load_config(args.config, args.set, _flags(args))
            return main_serve(config, args.spec, args.report_every)
        if args.command == "learner":
            from system.learner_cmd import run_learner

            config = load_config(args.config, args.set, _flags(args))
            return run_learner(
                config,
                args.redis_url,
                args.run,
                args.checkpoint_dir,
                args.max_updates,
                args.metrics_port,
                args.log_every,
            )
        if args.command == "actors":
            from system.actors_cmd import run_actors

            config = load_config(args.config, args.set, _flags(args))
            return run_actors(config, args.redis_url, args.run, args.ray_address, args.max_env_steps, args.log_every)
        if args.command == "scale":
            from system.actors_cmd import scale

            if args.actors < 0:
                raise ConfigError(f"--actors {args.actors}: must be >= 0")
            return scale(args.redis_url, args.run, args.actors)
        if args.command == "bench" and args.bench_command == "replay":
            from replay.bench import run_replay_bench

            return run_replay_bench(args.seconds, args.repeats, args.only, args.output)
        if args.command == "bench" and args.bench_command == "sharded":
            from replay.bench_sharded import run_sharded_bench

            try:
                counts = [int(n) for n in args.shards.split(",")]
            except ValueError:
                raise ConfigError(f"--shards {args.shards!r}: expected comma-separated integers") from None
            return run_sharded_bench(args.seconds, args.repeats, counts, args.output)
        if args.command == "bench" and args.bench_command == "learner":
            from learner.bench import run_learner_bench

            return run_learner_bench(args.seconds, args.repeats, args.device, args.output, args.case)
        if args.command == "bench" and args.bench_command == "actors":
            from system.bench_actors import run_actors_bench

            return run_actors_bench(args.seconds, args.repeats, args.env, args.num_envs, args.output)
        if args.command == "config":
            if args.path is None and not args.set:
                import typing

                print("\n".join(describe(cls, name) for name, cls in typing.get_type_hints(RunConfig).items()))
            else:
                print(to_yaml(load_config(args.path, args.set)), end="")
            return 0
    except ConfigError as exc:
        print(f"qfleet: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qfleet: interrupted", file=sys.stderr)
        return 130
    except SpecMismatchError as exc:
        print(f"qfleet: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"qfleet: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
