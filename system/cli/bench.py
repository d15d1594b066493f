"""`qfleet bench replay|priorities|sharded|learner|sac-updates|actors|weights|dataset|offline|ui-env|digiq|critic|scaling|e2e|update-cost|startup|learning`: the benchmarks behind docs/benchmarks.md."""

from __future__ import annotations

import argparse

from learner import WEIGHTS_TRANSPORTS
from system.cli.options import set_option
from system.config import ConfigError

NAME = "bench"

E2E_ENVS = ("cartpole", "breakout")
"""The envs of `qfleet bench e2e` and `bench update-cost`: system.bench.e2e.ENVS, copied so that
`--help` needs no torch."""

LEARNER_CASES = ("cartpole-mlp b256", "atari-cnn b32", "atari-cnn b256")
"""The cases of `qfleet bench learner`: system.bench.learner.CASES, copied so that `--help` needs no
torch (tests/smoke/test_cli.py keeps them equal)."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (default: 3)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats per figure; the median is reported (default: 3)"
    )
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")


def _security(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--security",
        choices=["off", "on", "both"],
        default="both",
        help=(
            "the shard plaintext (off), with TLS and the token on every call as qfleet train runs it (on), "
            "or both in one run, interleaved, with their ratio (both; the default)"
        ),
    )


def add_parser(commands) -> None:
    parser = commands.add_parser(NAME, help="benchmarks (figures for docs/benchmarks.md)", description="Benchmarks.")
    subcommands = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    replay = subcommands.add_parser(
        "replay",
        help="insert/sample throughput of one shard vs raw gRPC and an in-process table",
        description=(
            "Measures one replay shard on loopback with CartPole-size (4 float32 obs) and Atari-size "
            "(84x84x4 uint8 obs) transitions: insert and prioritized-sample throughput, beside raw gRPC "
            "streaming of the same bytes (the transport limit) and an in-process numpy table (the memory "
            "limit), all in one run. Prints a Markdown table."
        ),
    )
    _common(replay)
    replay.add_argument("--only", choices=["cartpole", "cartpole_small", "atari"], help="run one payload only")
    _security(replay)

    priorities = subcommands.add_parser(
        "priorities",
        help="priority updates/s to one shard at 256 keys per call: unary, stream, coalesced (and Reverb's)",
        description=(
            "Fills one prioritized replay shard (its own process, loopback) and measures priority updates of "
            "256 keys per call: the unary UpdatePriorities call, the UpdatePrioritiesStream, and the stream with "
            "coalescing, interleaved; calls/s and keys/s. Beside them Reverb's mutate_priorities at the same "
            "shape when `reverb` imports, or in --reverb-python's interpreter; else it says it skipped Reverb. "
            "Prints a Markdown table and the targets (stream calls/s >= Reverb's, coalesced keys/s >= 10x)."
        ),
    )
    _common(priorities)
    priorities.add_argument(
        "--capacity", type=int, default=100_000, help="items in the (full) table, both systems (default: 100000)"
    )
    priorities.add_argument(
        "--security",
        choices=["off", "on"],
        default="off",
        help="the shard plaintext as Reverb's (off; the default), or with TLS and the token as qfleet train runs it",
    )
    priorities.add_argument(
        "--reverb-python",
        metavar="PYTHON",
        help="an interpreter that has dm-reverb (e.g. a separate venv's bin/python), for the Reverb side",
    )

    sharded = subcommands.add_parser(
        "sharded",
        help="aggregate throughput of 1, 2, 4 shards; prefetching vs synchronous sampling",
        description=(
            "Starts N shard processes (CartPole-size items) with one writer process per shard and "
            "measures aggregate insert and sample throughput for each N, then the batches/s a "
            "consumer receives with synchronous sampling vs the Prefetcher. Prints Markdown tables."
        ),
    )
    _common(sharded)
    sharded.add_argument("--shards", default="1,2,4", help="comma-separated shard counts (default: 1,2,4)")

    learner = subcommands.add_parser(
        "learner",
        help="learner updates/s fed over gRPC (shard + prefetcher) vs from an in-process buffer",
        description=(
            "Runs the learner's training loop on the CartPole MLP (batch 256) and the Atari Nature CNN "
            "(batches 32 and 256), fed once from a replay shard in another process over gRPC through "
            "the prefetching sampler and once from the same table in-process. Prints a Markdown table."
        ),
    )
    _common(learner)
    learner.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N (default: auto)")
    learner.add_argument(
        "--case", action="append", choices=LEARNER_CASES, help="run only this case (repeatable; default: all three)"
    )
    _security(learner)
    learner.add_argument(
        "--feed-only",
        action="store_true",
        help="time the feeds alone (sample and move to torch, no update): batches/s and CPU ms per batch of "
        "the learner's and the shard's processes, for in-process, gRPC (per --security) and the same-host feed",
    )

    sac_updates = subcommands.add_parser(
        "sac-updates",
        help="the SAC learner's updates/s on CPU per ensemble size, beside Stable-Baselines3's SAC",
        description=(
            "Runs qfleet's SAC update step in-process (no Ray, no replay server) on uniform batches of random "
            "Pendulum-shaped transitions, for each ensemble size of LayerNorm critics, and Stable-Baselines3's "
            "SAC.train on a filled buffer at the same batch and network (SB3's defaults for Pendulum: batch 256, "
            "2x256), interleaved, one torch thread each. SB3 runs under --peer-python, a separate venv "
            "(requirements-bench-sb3.txt); where it is missing, its row is skipped and the table says so. Prints "
            "a Markdown table: updates per CPU second and per wall second, and the ratio to SB3's."
        ),
        epilog="example: qfleet bench sac-updates --peer-python /work/peers-sb3/bin/python",
    )
    _common(sac_updates)
    sac_updates.add_argument("--ensembles", default="2,5,10", help="comma-separated critic counts (default: 2,5,10)")
    sac_updates.add_argument("--batch-size", type=int, default=256, help="transitions per update (default: 256)")
    sac_updates.add_argument("--hidden-size", type=int, default=256, help="MLP width (default: 256)")
    sac_updates.add_argument("--num-layers", type=int, default=2, help="MLP hidden layers (default: 2)")
    sac_updates.add_argument(
        "--peer-python", metavar="PATH", help="the interpreter of a venv with stable-baselines3 (default: this one)"
    )

    actors = subcommands.add_parser(
        "actors",
        help="env steps/s of qfleet's actor vs a plain gymnasium loop; 1 vs 2 Ray actors",
        description=(
            "Starts a redis-server and a replay shard, then measures env steps/s of a plain gymnasium "
            "loop acting with the same network against qfleet's EnvActor (n-step transitions, inserts, "
            "weight subscription, episode records), in-process and as a Ray actor, alternating "
            "segments; then the aggregate of a fleet of 1 and 2 Ray actors. Prints a Markdown table."
        ),
    )
    _common(actors)
    actors.add_argument("--env", default="CartPole-v1", help="gymnasium id (default: CartPole-v1)")
    actors.add_argument("--num-envs", type=int, default=8, help="envs per actor (default: 8)")

    weights = subcommands.add_parser(
        "weights",
        help="publish-to-all-subscribers latency and bytes through Redis: object store vs Redis transport",
        description=(
            "Starts a redis-server and a local Ray instance with N subscribers (Ray actors, num_cpus=0, "
            "each following the weights as an env actor does), publishes a policy of S MB --repeats times "
            "through Ray's object store and through Redis (alternating), and reports the latency from "
            "publish to the last subscriber holding the decoded tensors (p50, p99) and the bytes through Redis "
            "per publish. Memory: subscribers drop what they received; the Redis path's subscribers stream "
            "(one chunk held: a lower bound of its latency), so 32 x 300 MB fits in about 10 GiB, most of it "
            "32 torch workers. Quick check: --subscribers 2 --sizes-mb 1 --repeats 3. Prints a "
            "Markdown table."
        ),
    )
    weights.add_argument("--subscribers", default="8,32", help="comma-separated subscriber counts (default: 8,32)")
    weights.add_argument("--sizes-mb", default="7,300", help="comma-separated payload sizes in MB (default: 7,300)")
    weights.add_argument(
        "--transports",
        default=",".join(WEIGHTS_TRANSPORTS),
        help=f"comma-separated transports among {', '.join(WEIGHTS_TRANSPORTS)} (default: all)",
    )
    weights.add_argument("--repeats", type=int, default=20, help="publishes per case (default: 20)")
    weights.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    dataset = subcommands.add_parser(
        "dataset",
        help="loading an offline dataset into shards: read+validate, n-step, insert",
        description=(
            "Writes a CartPole-shaped dataset of --steps steps (episodes of 100 to 400 steps: `even`; or one "
            "episode of half the steps and the rest: `uneven`) to a temporary folder, then times loading it "
            "into fresh in-process offline shards: read and validate, n-step transitions, insert. Prints a "
            "Markdown table."
        ),
    )
    dataset.add_argument("--steps", type=int, default=1_000_000, help="steps in the dataset (default: 1000000)")
    dataset.add_argument(
        "--shape", action="append", choices=["even", "uneven"], help="run this shape only (repeatable; default: both)"
    )
    dataset.add_argument("--shards", type=int, default=2, help="offline shards (default: 2)")
    dataset.add_argument("--n-step", type=int, default=3, help="n of the n-step transitions (default: 3)")
    dataset.add_argument("--repeats", type=int, default=1, help="loads per shape; the median is reported (default: 1)")
    dataset.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    offline = subcommands.add_parser(
        "offline",
        help="offline learners on one dataset: IQL + AWR, IQL + Best-of-N, filtered BC",
        description=(
            "Records a CartPole dataset of medium quality (a pole-balancing controller taking random actions "
            "with a per-episode probability of 0.5 to 0.8), or, with --policy RUN_DIR, one of any env played by "
            "that run's newest checkpoint with --epsilon exploration (as qfleet record does), or takes "
            "--dataset; --config gives the learners' env, network and IQL settings. Then trains IQL + AWR, IQL + "
            "Best-of-N (N = 1, 4, 16) and filtered BC (top 10%%) in-process on uniform batches of it for "
            "--updates updates each, over every seed of --seeds, and evaluates each greedily. Prints a Markdown "
            "table: the dataset's mean return, every learner's greedy return per seed, vs the dataset's mean, "
            "and whether the best beats filtered BC. With --online, instead: per seed, `qfleet train` of "
            "--config offline -> online on the dataset (--updates offline updates) vs --scratch-config from "
            "scratch, each until an evaluation reaches --threshold or --total-env-steps; prints the env steps "
            "each needed."
        ),
        epilog=(
            "MinAtar Breakout (issue 20): qfleet bench offline --config configs/minatar_breakout_iql.yaml "
            "--policy runs/medium --record-steps 200000 --epsilon 0.05,0.5 --datasets-dir DIR --dataset "
            "minatar/breakout-medium-v0 --updates 3000 --eval-episodes 20 --seeds 0,1,2 --best-of-n 4,16; then "
            "--online --config configs/minatar_breakout_offline_online.yaml --dataset minatar/breakout-medium-v0 "
            "--datasets-dir DIR --threshold 16 --eval-episodes 10 --scratch-config "
            "configs/minatar_breakout.yaml (or --no-scratch)."
        ),
    )
    offline.add_argument(
        "--config",
        metavar="FILE",
        help="the learners' settings (env, network, IQL's keys) and --online's offline -> online recipe "
        "(default: configs/cartpole_offline_online.yaml)",
    )
    offline.add_argument(
        "--dataset",
        metavar="ID",
        help="use this recorded dataset instead of recording one; with --policy, the id to record it as "
        "(default: bench/medium-v0)",
    )
    offline.add_argument(
        "--datasets-dir",
        metavar="DIR",
        help="folder of datasets for --dataset (with --policy: where it is recorded and kept; default: a "
        "temporary folder)",
    )
    offline.add_argument(
        "--policy",
        metavar="RUN_DIR",
        help="record the dataset from this qfleet train run's newest checkpoint (its env: match --config)",
    )
    offline.add_argument(
        "--record-steps",
        type=int,
        help="--policy: stop recording once the episodes hold this many transitions (or at --episodes)",
    )
    offline.add_argument(
        "--epsilon",
        help="--policy: a random action with this probability; LO,HI: each episode draws its own from "
        "[LO, HI] (a spread of quality; default: 0.1)",
    )
    offline.add_argument(
        "--episodes",
        type=int,
        help="episodes to record when no --dataset is given (default: 300, or with --policy and --record-steps "
        "none); refused with --dataset alone (nothing is recorded)",
    )
    offline.add_argument(
        "--updates",
        type=int,
        help="updates per learner and seed (default: 2000); --online: the offline phase's (default: 2000 with "
        "the default --config, else the config's offline.updates)",
    )
    offline.add_argument("--seeds", default="0", help="comma-separated seeds, each reported (default: 0)")
    offline.add_argument(
        "--best-of-n",
        metavar="N,...",
        help="the IQL + Best-of-N learners' N, one learner each (default: 1,4,16; not with --online)",
    )
    offline.add_argument(
        "--eval-episodes", type=int, default=10, help="greedy evaluation episodes per run (default: 10)"
    )
    offline.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    offline.add_argument(
        "--online",
        action="store_true",
        help="compare offline -> online `qfleet train` runs with from-scratch ones (env steps to --threshold)",
    )
    offline.add_argument(
        "--threshold",
        type=float,
        help="--online: the evaluation to reach (default: 475 with the default --config; required with another)",
    )
    offline.add_argument(
        "--total-env-steps",
        type=int,
        help="--online: each run's budget (default: 50000 with the default --config, else its train.total_env_steps)",
    )
    offline.add_argument(
        "--eval-every",
        type=int,
        help="--online: env steps between evaluations (default: 2500 with the default --config, else its "
        "train.eval_every_steps)",
    )
    offline.add_argument("--out-dir", help="--online: run directories and logs (default: runs/bench-offline-online)")
    offline.add_argument("--set", action="append", metavar="KEY=VALUE", help="--online: an override for both arms")
    offline.add_argument(
        "--scratch-config",
        metavar="FILE",
        help="--online: the from-scratch arm's recipe (default with the default --config: "
        "configs/cartpole.yaml, the tuned DQN; configs/cartpole_offline_online.yaml compares against the "
        "same IQL + AWR recipe)",
    )
    offline.add_argument(
        "--no-scratch",
        action="store_true",
        help="--online: run only the offline -> online arm (the from-scratch figures are known already)",
    )
    ui_env = subcommands.add_parser(
        "ui-env",
        help="MiniWoB in headless Chromium: env steps/s per browser and per actor",
        description=(
            "Steps one env vector of B MiniWoB browsers (as an env actor steps them, one after another) with "
            "uniformly random UI actions for --seconds, for each B of --browsers, and reports steps/s per actor "
            "and per browser, episodes/s and the launch time per browser. Prints a Markdown table."
        ),
    )
    ui_env.add_argument("--task", default="click-button", help="MiniWoB task or env id (default: click-button)")
    ui_env.add_argument("--browsers", default="1,4", help="comma-separated browsers per actor (default: 1,4)")
    ui_env.add_argument("--seconds", type=float, default=20.0, help="stepping time per case (default: 20)")
    ui_env.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    digiq = subcommands.add_parser(
        "digiq",
        help="issue 21's MiniWoB benchmark: filtered BC vs Digi-Q offline (N = 1, 4, 16) vs offline -> online",
        description=(
            "Per MiniWoB task (headless Chromium, configs/miniwob_digiq.yaml): records --pixel-episodes episodes "
            "of screenshots with the instruction-following behaviour (follows with probability --follow-p per "
            "step, random otherwise), trains the encoder on them (qfleet encoder train, phase 1), records the "
            "--episodes features dataset with that encoder, then trains filtered BC and Digi-Q offline for each N "
            "of --best-of-n (--updates updates each, in this process), runs qfleet train offline (the same "
            "updates) -> online (--online-env-steps env steps, N = --online-n), and evaluates each policy "
            "greedily on --eval-episodes episodes (--browsers at a time): the success rate and its seed. Then "
            "the learner's updates/s on the features vs on the screenshots (a CNN) at the same batch size. Each "
            "finished cell goes to --out (JSON) at once; a re-run with the same --out and settings skips "
            "finished cells (datasets, encoders and runs are kept in --work-dir). Prints a table per task, the "
            "means over tasks and the issue's targets. Ctrl-C stops everything it started."
        ),
        epilog=(
            "example (tiny, one task): qfleet bench digiq --tasks click-button --pixel-episodes 20 --episodes 20 "
            "--encoder-epochs 1 --updates 50 --online-env-steps 200 --eval-episodes 4 --out /tmp/digiq.json"
        ),
    )
    from system.bench.digiq import add_digiq_arguments

    add_digiq_arguments(digiq)
    critic = subcommands.add_parser(
        "critic",
        help="Digi-Q's critics on held-out episodes: does each rank the rewarded UI action first?",
        description=(
            "Splits a recorded features dataset by whole episodes (--holdout-fraction held out, drawn with --seed), "
            "trains CONFIG's IQL learner once per critic of --critics on the rest (--updates updates on uniform "
            "batches), and reports each critic's ranking on the held-out and the training episodes: the share of "
            "rewarded steps whose recorded action has the highest Q of every action, its mean rank, the advantage "
            "AUC (rewarded vs unrewarded steps), mean max-Q and V. Prints a Markdown table; --out also writes JSON."
        ),
        epilog=(
            "example: qfleet bench critic --dataset miniwob/click-button-features-v0 --datasets-dir WORK/datasets "
            "--set env.features.path=WORK/encoders/click-button --set env.features.grid_rows=12 "
            "--set env.features.grid_cols=10 --critics action_embedding,spatial"
        ),
    )
    critic.add_argument(
        "--config", default="configs/miniwob_digiq.yaml", help="the learner and env (default: %(default)s)"
    )
    critic.add_argument("--dataset", required=True, help="the features dataset id (recorded with CONFIG's encoder)")
    critic.add_argument("--datasets-dir", help="where the dataset lives (default: the datasets folder)")
    critic.add_argument(
        "--critics",
        default="action_embedding,spatial",
        help="comma-separated learner.critic values (default: %(default)s)",
    )
    critic.add_argument("--updates", type=int, default=3000, help="updates per critic (default: %(default)s)")
    critic.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="share of episodes held out (default: %(default)s)"
    )
    critic.add_argument("--seed", type=int, default=0, help="the held-out draw and the learners (default: %(default)s)")
    critic.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override of CONFIG (repeatable)")
    critic.add_argument("--out", metavar="FILE", help="also write the results as JSON to FILE")
    scaling = subcommands.add_parser(
        "scaling",
        help="a live qfleet train's env steps/s as its actors are scaled, per placement layout",
        description=(
            "For each --layout (NAME=RESOURCES: the actors' `actors.resources`, e.g. spread='{actors: 1}' vs a "
            "resource only one node offers), starts `qfleet train CONFIG`, waits until it learns, then scales "
            "it to each count of --actors in turn and measures env steps/s, updates/s and the achieved UTD over "
            "--seconds after --warmup-s, with the Ray nodes the actors report from and how many were held back "
            "by the replay's rate limiter (then the learner is the limit: lower learner.updates_per_env_step). "
            "On a cluster: --set ray.address=HOST:PORT --set redis.url=redis://HOST:PORT/0 (the Redis password "
            "from QFLEET_REDIS_PASSWORD); --local-cluster starts the 3-node topology on this machine and stops it "
            "afterwards. Prints a Markdown table, with env steps/s per node."
        ),
    )
    scaling.add_argument(
        "config", nargs="?", default="configs/cartpole.yaml", help="run config (default: configs/cartpole.yaml)"
    )
    scaling.add_argument("--actors", default="1,2,4", help="comma-separated actor counts, in order (default: 1,2,4)")
    scaling.add_argument("--seconds", type=float, default=20.0, help="measuring time per count (default: 20)")
    scaling.add_argument(
        "--warmup-s", type=float, default=10.0, help="time after the actors report before measuring (default: 10)"
    )
    scaling.add_argument(
        "--layout",
        action="append",
        default=[],
        metavar="NAME=RESOURCES",
        help=(
            "a placement of the actors (repeatable; default: the config's own actors.resources; with "
            "--local-cluster: spread over both worker nodes, and all on node B)"
        ),
    )
    scaling.add_argument(
        "--local-cluster",
        action="store_true",
        help=(
            "start the 3-node cluster of README's 'Deploy on a Ray cluster' on this machine (a head, worker "
            "nodes A and B on 127.0.0.1, an external Redis with a password, fresh secrets), run on it and stop it"
        ),
    )
    set_option(scaling, "learner.updates_per_env_step=0.125")
    scaling.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    e2e = subcommands.add_parser(
        "e2e",
        help="the whole system as qfleet train runs it, beside the single-process loop and RLlib's DQN",
        description=(
            "For each env and UTD: runs `qfleet train` (embedded: Redis, Ray, shards, learner, actors as Ray "
            "actors) on the env's config with double DQN on the same MLP and batch, stops it once it has "
            "trained for --seconds (from its first update) or made --env-steps, and reports env steps/s, "
            "updates/s, achieved UTD, policy staleness (the learner's weights version minus the actors') and "
            "sample age (seconds since the weights behind the learner's batch were published). Then the "
            "CleanRL-style single-process loop and RLlib's DQN (new API stack, env runners as qfleet's actors, "
            "training_intensity set for the same UTD) on the same settings, one after another. Every system "
            "samples a uniform replay of 1-step transitions (qfleet runs with replay.selector=uniform, "
            "actors.n_step=1). RLlib runs under --peer-python, a separate venv (its pins clash with qfleet's: "
            "pip install -r requirements-bench-rllib.txt there); where it does not import, its row says so. "
            "Prints JSON lines, then a Markdown table and the issue's target ratios."
        ),
        epilog="example: qfleet bench e2e --envs cartpole --utd 4 --seconds 30 --peer-python /work/peers-rllib/bin/python",
    )
    e2e.add_argument("--envs", default="cartpole,breakout", help="comma-separated: cartpole, breakout (default: both)")
    e2e.add_argument("--utd", default="0.25,1,4", help="comma-separated updates per env step (default: 0.25,1,4)")
    e2e.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="training time per system and case, from its first update (default: 20)",
    )
    e2e.add_argument("--env-steps", type=int, help="instead of --seconds: env steps per system and case in all")
    e2e.add_argument(
        "--systems",
        default="qfleet,single-process,rllib",
        help="comma-separated among qfleet, single-process, rllib (default: all three)",
    )
    e2e.add_argument("--hidden-size", type=int, default=256, help="MLP width of every system (default: 256)")
    e2e.add_argument("--num-layers", type=int, default=2, help="MLP hidden layers (default: 2)")
    e2e.add_argument("--batch-size", type=int, default=128, help="transitions per update (default: 128)")
    e2e.add_argument(
        "--learning-starts", type=int, default=1000, help="transitions before the first update (default: 1000)"
    )
    e2e.add_argument(
        "--peer-python",
        metavar="PATH",
        help="the interpreter of a separate venv that runs RLlib (requirements-bench-rllib.txt; default: this one)",
    )
    set_option(e2e, "env.num_envs=4 (qfleet's runs; RLlib's env runners follow its actors)")
    e2e.add_argument("--out-dir", metavar="DIR", help="run directories and logs (default: a new temporary folder)")
    e2e.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")

    update_cost = subcommands.add_parser(
        "update-cost",
        help="CPU per update of qfleet's learner beside the single-process loop's, one batch, one thread",
        description=(
            "Times, in this process on one torch thread and one fixed batch (no replay, no actors), the update "
            "step `qfleet bench e2e` runs on --env: the single-process loop's update with torch's default "
            "(for-loop) Adam and with the fused one, qfleet's agent.update with the default Adam and with its "
            "fused one, and the learner's whole step (agent.update, priorities, bookkeeping). Cases interleave "
            "over --rounds; microseconds per update (thread CPU time; on a CUDA --device, wall time between "
            "device synchronisations), median and minimum, and each median over the loop's (default Adam). "
            "Leaves out the weight publish, the priority stream and the observation conversion of a run "
            "(and on CUDA the batch's copy to the device). On CUDA qfleet's update and step replay a CUDA "
            "graph (learner.cuda_graph), and one more case times the step op by op. Prints JSON and a "
            "Markdown table."
        ),
        epilog="example: qfleet bench update-cost --env breakout --output update-cost-breakout.json",
    )
    update_cost.add_argument("--env", default="cartpole", choices=E2E_ENVS, help="the e2e env (default: cartpole)")
    update_cost.add_argument("--rounds", type=int, default=7, help="interleaved rounds of every case (default: 7)")
    update_cost.add_argument("--updates", type=int, default=300, help="timed updates per case and round (default: 300)")
    update_cost.add_argument(
        "--device", default="cpu", help="torch device of every case: cpu, cuda, cuda:N (default: cpu)"
    )
    update_cost.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="then profile this many learner steps with torch.profiler: host time, device kernel time, kernel "
        "launches, synchronisations and host reads per step, top ops (default: 0, no profile)",
    )
    update_cost.add_argument(
        "--output", metavar="FILE", help="also write the results as JSON to FILE (command, date, commit, machine)"
    )

    _add_learning(subcommands)

    startup = subcommands.add_parser(
        "startup",
        help="qfleet train's start-up: seconds to the first env step and first update, phase by phase",
        description=(
            "Runs a short CartPole `qfleet train` (everything on this machine) --runs times, one after "
            "another, each as its own process, and reports every run's start-up breakdown (driver, Redis, "
            "Ray, shards, learner, envs, actors, first env step, first insert, first update: seconds since "
            "the process started), the median of each phase and the load average before each run, as JSON."
        ),
    )
    startup.add_argument("--runs", type=int, default=3, help="qfleet train runs; medians reported (default: 3)")
    startup.add_argument("--config", metavar="FILE", help="run config (default: configs/cartpole.yaml)")
    startup.add_argument(
        "--env-steps", type=int, default=4000, help="train.total_env_steps of each run (default: 4000)"
    )
    set_option(startup, "actors.num_actors=1, given to every run; redis.* settings are refused")
    startup.add_argument(
        "--out-dir", metavar="DIR", help="run directories and logs (default: a temporary folder, kept if a run failed)"
    )
    startup.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")


LEARNING_TASKS = ("cartpole", "acrobot", "breakout", "asterix", "freeway", "pendulum", "hopper")
"""The tasks of `qfleet bench learning`: system.bench.learning_tasks.TASKS, copied so that `--help`
needs no torch (tests/unit/test_bench_learning.py keeps them equal)."""
LEARNING_SYSTEMS = ("qfleet", "sb3", "rllib", "cleanrl")


def _add_learning(subcommands) -> None:
    learning = subcommands.add_parser(
        "learning",
        help="qfleet's default recipe beside SB3 (zoo hyper-parameters) and RLlib on a suite of tasks",
        description=(
            "Per task and seed, one run after another (never side by side): `qfleet train --env ID` (the default "
            "recipe; only the budget, seed and evaluation schedule set, every scheduled evaluation made), Stable-Baselines3 with rl-baselines3-zoo's "
            "hyper-parameters for the env (MinAtar, which the zoo lacks: the MinAtar paper's reference DQN), RLlib's "
            "DQN/SAC as its tuned examples set them, and optionally the CleanRL-style DQN baseline. Every system is "
            "evaluated greedily for the same number of episodes after the same env steps. Reports env steps and "
            "wall time to the first evaluation at or above the task's threshold, whether every later evaluation "
            "stays there (held; 'unverified' when a scheduled qfleet evaluation is missing), the final evaluation and each run's exit, as Markdown tables, JSON and one PNG per task. "
            "Wall times count from each run's process start to when an evaluation's result was known (cleanrl's: "
            "training only). "
            "Thresholds: CartPole 475, Acrobot -100 and Hopper 3800 are the env specs' reward_threshold; Pendulum "
            "-200 (its spec has none); MinAtar has none anywhere: Breakout 16 is docs/benchmarks.md's target, "
            "Asterix 8 and Freeway 40 are placeholders chosen here (--threshold replaces them). Default budgets: "
            "cartpole 50k, acrobot 100k, pendulum 20k (the zoo's), MinAtar 250k, hopper 100k (the zoo: 1M). "
            "SB3 and RLlib run under --sb3-python / --rllib-python (separate venvs: requirements-bench-sb3.txt, "
            "requirements-bench-rllib.txt); without its option, or where the package does not import there, a peer "
            "is skipped with a line saying so. RLlib is evaluated at every multiple of eval_every (its iterations "
            "sample gcd(eval_every, budget, 1000) env steps); SB3 stops exactly at the budget. A run that exceeds "
            "--run-timeout is stopped and its exit shows 'timeout'; an earlier run's qfleet folder is moved "
            "aside (NAME.old-TIME) before a rerun."
        ),
        epilog="example: qfleet bench learning --tasks cartpole --seeds 0,1,2 --sb3-python /work/peers-sb3/bin/python "
        "--rllib-python /work/peers-rllib/bin/python --out-dir runs/bench-learning",
    )
    learning.add_argument(
        "--tasks", default="cartpole", help=f"comma-separated among {', '.join(LEARNING_TASKS)} (default: cartpole)"
    )
    learning.add_argument(
        "--systems",
        default="qfleet,sb3,rllib",
        help=f"comma-separated among {', '.join(LEARNING_SYSTEMS)}, run in this order (default: qfleet,sb3,rllib)",
    )
    learning.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    learning.add_argument(
        "--steps", action="append", default=[], metavar="TASK=N", help="env-step budget of a task (repeatable)"
    )
    learning.add_argument(
        "--threshold", action="append", default=[], metavar="TASK=R", help="return to reach on a task (repeatable)"
    )
    learning.add_argument(
        "--sb3-python", metavar="PATH", help="interpreter of a venv with stable-baselines3 (without it: sb3 is skipped)"
    )
    learning.add_argument(
        "--rllib-python", metavar="PATH", help="interpreter of a venv with ray[rllib] (without it: rllib is skipped)"
    )
    learning.add_argument(
        "--run-timeout",
        type=float,
        metavar="S",
        help="seconds one run may take before it is stopped (exit 'timeout'; default: an hour per 100k env steps "
        "of the task's budget, at least an hour)",
    )
    learning.add_argument(
        "--config",
        metavar="FILE",
        help="qfleet runs this config instead of the default recipe (one task only; not the suite's comparison)",
    )
    set_option(learning, "learner.lr=0.0005, for qfleet's runs only (not the suite's comparison)")
    learning.add_argument(
        "--out-dir",
        metavar="DIR",
        default="runs/bench-learning",
        help="runs, logs, PNGs (default: runs/bench-learning)",
    )
    learning.add_argument("--output", metavar="FILE", help="the JSON results (default: OUT_DIR/results.json)")
    learning.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of --output made with the same settings (evaluation schedule, --config/--set, "
        "peer interpreter) and run only the rest",
    )


def _run_learning(args: argparse.Namespace) -> int:
    import dataclasses
    import pathlib

    tasks, systems = args.tasks.split(","), args.systems.split(",")
    for option, given, known in (("--tasks", tasks, LEARNING_TASKS), ("--systems", systems, LEARNING_SYSTEMS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"{option}: unknown {unknown[0]!r} (known: {', '.join(known)})")
    seeds = _numbers("--seeds", args.seeds, int, minimum=0)
    if args.run_timeout is not None and not args.run_timeout > 0:
        raise ConfigError(f"--run-timeout: must be > 0 (got {args.run_timeout:g})")
    if args.config is not None and len(tasks) != 1:
        raise ConfigError("--config: give one task (the config's env must be that task's)")
    from system.bench.learning import Suite, run_learning_bench
    from system.bench.learning_tasks import TASKS, parse_per_task

    try:
        steps = parse_per_task("--steps", args.steps, tasks, int)
        thresholds = parse_per_task("--threshold", args.threshold, tasks, float)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    chosen = []
    for name in tasks:
        task = dataclasses.replace(TASKS[name], env_steps=steps.get(name, TASKS[name].env_steps))
        if name in thresholds:
            task = dataclasses.replace(task, threshold=thresholds[name], threshold_source="--threshold")
        chosen.append(task)
    out_dir = pathlib.Path(args.out_dir)
    suite = Suite(
        tasks=tuple(chosen),
        systems=tuple(systems),
        seeds=tuple(seeds),
        peer_pythons={"sb3": args.sb3_python, "rllib": args.rllib_python},
        out_dir=out_dir,
        output=pathlib.Path(args.output) if args.output else out_dir / "results.json",
        resume=args.resume,
        qfleet_config=args.config,
        qfleet_overrides=tuple(args.set),
        run_timeout_s=args.run_timeout,
    )
    from system.bench.children import interrupt_on_sigterm

    interrupt_on_sigterm()  # SIGTERM stops the running child in order (its `finally`), as Ctrl-C does
    return run_learning_bench(suite)


def run(args: argparse.Namespace) -> int:
    if args.bench_command == "learning":
        return _run_learning(args)
    if args.bench_command == "startup":
        from system.bench.startup import run_startup_bench

        if args.runs < 1 or args.env_steps < 1:
            raise ConfigError("--runs and --env-steps must be >= 1")
        return run_startup_bench(args.runs, args.config, args.env_steps, args.set, args.output, args.out_dir)
    if args.bench_command == "replay":
        from system.bench.replay import run_replay_bench

        return run_replay_bench(args.seconds, args.repeats, args.only, args.output, args.security)
    if args.bench_command == "priorities":
        from system.bench.priorities import run_priorities_bench

        if args.seconds <= 0 or args.repeats < 1 or args.capacity < 64 * 256:
            raise ConfigError("--seconds must be > 0, --repeats >= 1, --capacity >= 16384")
        return run_priorities_bench(
            args.seconds, args.repeats, args.capacity, args.security, args.reverb_python, args.output
        )
    if args.bench_command == "sharded":
        from system.bench.sharded import run_sharded_bench

        counts = _numbers("--shards", args.shards, int)
        return run_sharded_bench(args.seconds, args.repeats, counts, args.output)
    if args.bench_command == "dataset":
        from system.bench.dataset import run_dataset_bench

        if args.steps < 2 or args.shards < 1 or args.n_step < 1 or args.repeats < 1:
            raise ConfigError("--steps must be >= 2, --shards, --n-step and --repeats >= 1")
        shapes = args.shape or ["even", "uneven"]
        return run_dataset_bench(args.steps, shapes, args.shards, args.n_step, args.repeats, args.output)
    if args.bench_command == "offline":
        from system.bench.offline import CONFIG as OFFLINE_CONFIG
        from system.bench.offline import run_offline_bench

        seeds = _numbers("--seeds", args.seeds, int, minimum=0)
        given_counts = [n for n in (args.updates, args.episodes) if n is not None]
        if min(given_counts, default=1) < 1 or args.eval_episodes < 1:
            raise ConfigError("--updates, --episodes and --eval-episodes must be >= 1")
        if args.online and args.best_of_n is not None:
            raise ConfigError("--best-of-n: not with --online (it picks the in-process table's learners)")
        if args.dataset is not None and args.policy is None and args.episodes is not None:
            raise ConfigError("--episodes with --dataset: nothing is recorded (--dataset takes a recorded one)")
        online_only = ("set", "threshold", "total_env_steps", "eval_every", "out_dir", "scratch_config")
        given = [key for key in online_only if getattr(args, key) is not None] + ["no_scratch"] * args.no_scratch
        if not args.online and given:
            options = ", ".join("--" + key.replace("_", "-") for key in given)
            raise ConfigError(f"{options}: only with --online (the offline learners' bench takes none of them)")
        record = _record_settings(args)
        config = args.config or OFFLINE_CONFIG
        online = None
        if args.online:
            from system.bench.offline_online import SCRATCH_CONFIG, Budget

            if args.scratch_config is not None and args.no_scratch:
                raise ConfigError("--scratch-config and --no-scratch: give one")
            if args.config is not None and args.scratch_config is None and not args.no_scratch:
                raise ConfigError(
                    f"--config {args.config}: name the from-scratch arm's recipe (--scratch-config FILE) or "
                    "give --no-scratch (the default, configs/cartpole.yaml, goes with the default --config)"
                )
            defaults = _online_defaults(args.config)
            if args.config not in (None, OFFLINE_CONFIG) and args.threshold is None:
                raise ConfigError(
                    f"--config {args.config}: give --threshold (the default, 475, is CartPole's, for the default --config)"
                )
            online = Budget(
                _or(args.total_env_steps, defaults[0]),
                _or(args.eval_every, defaults[1]),
                args.eval_episodes,
                _or(args.updates, defaults[2]),
                _or(args.threshold, 475.0),
                tuple(args.set or ()),
                None if args.no_scratch else args.scratch_config or SCRATCH_CONFIG,
                config,
            )
            if online.total_env_steps < 1 or online.eval_every_steps < 1:
                raise ConfigError("--total-env-steps and --eval-every must be >= 1")
        return run_offline_bench(
            args.dataset,
            args.datasets_dir,
            _or(args.episodes, 300),
            _or(args.updates, 2000),
            seeds,
            args.eval_episodes,
            args.output,
            online,
            args.out_dir or "runs/bench-offline-online",
            config,
            args.policy,
            record,
            tuple(_numbers("--best-of-n", args.best_of_n or "1,4,16", int)),
        )
    if args.bench_command == "learner":
        if args.feed_only:
            from system.bench.feed import run_feed_bench

            return run_feed_bench(args.seconds, args.repeats, args.output, args.case, args.security)
        from system.bench.learner import run_learner_bench

        return run_learner_bench(args.seconds, args.repeats, args.device, args.output, args.case, args.security)
    if args.bench_command == "sac-updates":
        from system.bench.sac_updates import run_sac_updates_bench

        ensembles = _numbers("--ensembles", args.ensembles, int, minimum=2)
        if args.seconds <= 0 or args.repeats < 1 or min(args.batch_size, args.hidden_size, args.num_layers) < 1:
            raise ConfigError("--seconds must be > 0; --repeats, --batch-size, --hidden-size, --num-layers >= 1")
        return run_sac_updates_bench(
            ensembles,
            args.seconds,
            args.repeats,
            args.batch_size,
            args.hidden_size,
            args.num_layers,
            args.peer_python,
            args.output,
        )
    if args.bench_command == "weights":
        return _run_weights(args)
    if args.bench_command == "scaling":
        from system.bench.scaling import LOCAL_LAYOUTS, parse_layouts, run_scaling_bench

        counts = _numbers("--actors", args.actors, int)
        if args.seconds <= 0 or args.warmup_s < 0:
            raise ConfigError("--seconds must be > 0 and --warmup-s >= 0")
        if args.local_cluster and any(s.startswith(("ray.address=", "redis.url=")) for s in args.set):
            raise ConfigError("--local-cluster starts its own Ray and Redis: drop --set ray.address / redis.url")
        layouts = LOCAL_LAYOUTS if args.local_cluster and not args.layout else parse_layouts(args.layout)
        return run_scaling_bench(
            args.config, counts, args.seconds, args.warmup_s, layouts, args.set, args.output, args.local_cluster
        )
    if args.bench_command == "e2e":
        return _run_e2e(args)
    if args.bench_command == "update-cost":
        if min(args.rounds, args.updates) < 1:
            raise ConfigError("--rounds and --updates must be >= 1")
        from system.bench.update_cost import run_update_cost_bench

        if args.profile < 0:
            raise ConfigError(f"--profile {args.profile}: must be >= 0")
        return run_update_cost_bench(args.env, args.rounds, args.updates, args.output, args.device, args.profile)
    if args.bench_command == "digiq":
        from system.bench.digiq import digiq_from_arguments

        tasks, settings = digiq_from_arguments(args)
        from system.bench.digiq import run_digiq_bench

        return run_digiq_bench(tasks, settings, args.out, args.work_dir)
    if args.bench_command == "critic":
        from system.bench.critic_ranking import run_critic_bench
        from system.datasets import datasets_dir

        critics = [name.strip() for name in args.critics.split(",") if name.strip()]
        if not critics or args.updates < 1:
            raise ConfigError("--critics must name at least one critic and --updates be >= 1")
        return run_critic_bench(
            args.config,
            list(args.set or ()),
            args.dataset,
            str(datasets_dir(args.datasets_dir)),
            critics,
            args.updates,
            args.holdout_fraction,
            args.seed,
            args.out,
        )
    if args.bench_command == "ui-env":
        from system.bench.ui_env import run_ui_env_bench

        counts = _numbers("--browsers", args.browsers, int)
        if args.seconds <= 0:
            raise ConfigError(f"--seconds {args.seconds}: must be > 0")
        return run_ui_env_bench(args.task, counts, args.seconds, args.output)
    from system.bench.actors import run_actors_bench

    return run_actors_bench(args.seconds, args.repeats, args.env, args.num_envs, args.output)


def _numbers(option: str, text: str, kind: type, minimum: float | None = None) -> list:
    """The comma-separated numbers of an option, each > 0 (or >= `minimum`)."""
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers") from None
    if not values or (min(values) <= 0 if minimum is None else min(values) < minimum):
        raise ConfigError(f"{option} {text!r}: every value must be {'> 0' if minimum is None else f'>= {minimum}'}")
    return values


def _run_weights(args: argparse.Namespace) -> int:
    counts = _numbers("--subscribers", args.subscribers, int)
    sizes = _numbers("--sizes-mb", args.sizes_mb, float)
    transports = args.transports.split(",")
    unknown = sorted(set(transports) - set(WEIGHTS_TRANSPORTS))
    if unknown:
        raise ConfigError(f"--transports: unknown {unknown[0]!r} (known: {', '.join(WEIGHTS_TRANSPORTS)})")
    if args.repeats < 1:
        raise ConfigError(f"--repeats {args.repeats}: must be >= 1")
    from system.bench.weights import run_weights_bench

    return run_weights_bench(counts, sizes, transports, args.repeats, args.output)


E2E_SYSTEMS = ("qfleet", "single-process", "rllib")


def _run_e2e(args: argparse.Namespace) -> int:
    import sys

    envs, systems = args.envs.split(","), args.systems.split(",")
    for option, given, known in (("--envs", envs, E2E_ENVS), ("--systems", systems, E2E_SYSTEMS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"{option}: unknown {unknown[0]!r} (known: {', '.join(known)})")
    utds = _numbers("--utd", args.utd, float)
    if args.seconds <= 0 or (args.env_steps is not None and args.env_steps <= args.learning_starts):
        raise ConfigError("--seconds must be > 0 and --env-steps > --learning-starts")
    if min(args.hidden_size, args.num_layers, args.batch_size, args.learning_starts) < 1:
        raise ConfigError("--hidden-size, --num-layers, --batch-size and --learning-starts must be >= 1")
    from system.bench.e2e import ENVS, Budget, actor_layout, run_e2e_bench

    budget = Budget(
        seconds=args.seconds,
        env_steps=args.env_steps,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        batch_size=args.batch_size,
        learning_starts=args.learning_starts,
        overrides=tuple(args.set),
    )
    for name in envs:  # a bad --set fails here, not after the first case's runs
        actor_layout(ENVS[name], budget)
    peer = args.peer_python or sys.executable
    return run_e2e_bench(envs, utds, budget, systems, peer, args.out_dir, args.output)


def _record_settings(args: argparse.Namespace):
    """`bench offline`'s recording settings for --policy (None without it): --epsilon E or LO,HI,
    --record-steps and --episodes as `qfleet record`'s --epsilon, --epsilon-max, --steps, --episodes.

    Raises:
        ConfigError: a recording option without --policy, --policy with --dataset's recording
            options missing, or a bad --epsilon.
    """
    from system.datasets import RecordSettings

    if args.policy is None:
        if args.epsilon is not None or args.record_steps is not None:
            raise ConfigError("--epsilon, --record-steps: only with --policy (they say how it is recorded)")
        return None
    if args.online:
        raise ConfigError(
            "--policy with --online: record the dataset first (bench offline --policy ... or qfleet record)"
        )
    epsilons = _numbers("--epsilon", args.epsilon or "0.1", float, minimum=0)
    if len(epsilons) > 2 or max(epsilons) > 1 or epsilons != sorted(epsilons):
        raise ConfigError(f"--epsilon {args.epsilon!r}: one value, or LO,HI, in [0, 1] with LO <= HI")
    try:
        return RecordSettings(
            episodes=args.episodes if args.episodes is not None or args.record_steps is not None else 300,
            steps=args.record_steps,
            epsilon=epsilons[0],
            epsilon_max=epsilons[1] if len(epsilons) == 2 else None,
        )
    except ValueError as exc:
        raise ConfigError(f"bench offline --policy: {exc}") from None


def _online_defaults(config: str | None) -> tuple[int, int, int]:
    """`--online`'s total env steps, evaluation period and offline updates when not given: the
    CartPole figures with the default --config, else that config's train.total_env_steps,
    train.eval_every_steps and offline.updates (not CartPole's, silently)."""
    from system.bench.offline import CONFIG
    from system.config import load_config

    if config in (None, CONFIG):
        return 50_000, 2500, 2000

    loaded = load_config(config, [])
    return loaded.train.total_env_steps, loaded.train.eval_every_steps, loaded.offline.updates


def _or(value, default):
    """`value`, or `default` when the option was not given (None)."""
    return default if value is None else value
