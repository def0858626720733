"""`jaxnets train|compile|tune|launch|list|bench` (and the workdir commands).

    jaxnets train --config experiments/mnist_cnn.py:smoke --workdir runs/x [--config.KEY=VALUE ...]
    jaxnets train --config experiments/mnist_cnn.py:smoke --print_layout   (where every array lives)
    jaxnets compile --config experiments/lm_7b.py --target tpu:v5p-64 --config.mesh.fsdp=64 [--json]
    jaxnets launch --processes 2 --devices-per-process 2 -- train --config ... --workdir runs/x
    jaxnets tune --config experiments/resnet_cifar.py:smoke --out kernels.json   (kernel table)
    jaxnets list
    jaxnets bench train_step --json          (runs `python -m benchmarks.train_step --json`)

Bad input (unknown key, dataset, model or experiment, unwritable workdir, ...) prints one
paragraph and exits with status 2 (`--debug` adds the traceback); a run stopped by too many
non-finite steps exits with status 3; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import traceback

from jaxnets import options
from jaxnets.commands import COMMANDS as WORKDIR_COMMANDS
from jaxnets.data import DATASETS
from jaxnets.errors import UserError
from jaxnets.models import MODELS
from jaxnets.evaluators import pending_runs
from jaxnets.parallel.compile import format_report
from jaxnets.parallel.launch import die_with_launcher, launch
from jaxnets.parallel.targets import parse_target, prepare
from jaxnets.platform import kernel_table, tune
from jaxnets.platform.devices import auto_cpu_devices, cpu_devices_setting
from jaxnets.platform import cpu_threads
from jaxnets.platform.install import install_process_settings
from jaxnets.tasks import TASKS
from jaxnets.train.ahead_of_time import compile_for_target
from jaxnets.train.preemption import install_early_handlers, uninstall_early_handlers
from jaxnets.train.trainer import Trainer, train

EXIT_USAGE = 2


def repo_dir(name: str) -> str:
    """`experiments/` or `benchmarks/` next to the working directory, else next to the package."""
    if os.path.isdir(name):
        return name
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)


def _config_from(parser, argv):
    """(args, config) from `--config FILE[:ARG]` and `--config.KEY=VALUE` overrides."""
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            raise UserError(f"Unrecognised argument {item!r}. Settings are changed with "
                            "--config.KEY=VALUE (e.g. --config.train.steps=100).")
        overrides.append(item[len("--config."):])
    return args, options.resolve(args.config, overrides)


def _cpu_devices_for(config) -> None:
    """Before JAX starts: the CPU device layout the experiment asks for (config.cpu_devices)."""
    try:
        auto_cpu_devices([config.data.batch_size, config.data.eval_batch_size],
                         config.get("cpu_devices"), limit=config.get("mesh_devices", 0))
    except ValueError as e:
        raise UserError(str(e)) from None


def cmd_train(argv: list[str]) -> int:
    install_early_handlers()   # a SIGTERM/SIGINT while starting up is honoured once training runs
    try:
        return _train(argv)
    finally:
        uninstall_early_handlers()


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jaxnets train", description="Train an experiment config.")
    parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
    parser.add_argument("--workdir", required=False, help="checkpoints, logs, final.json (resumes if present)")
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--print_layout", action="store_true",
                        help="print the mesh and the sharding of every parameter and optimizer "
                             "state array, then exit (nothing is trained or allocated)")
    args, config = _config_from(parser, argv)
    if args.print_config:
        print(options.describe(config))
        return 0
    if args.print_layout:
        print(Trainer(config, None, layout_only=True).layout_table())
        return 0
    if not args.workdir:
        raise UserError("--workdir is required: the directory for checkpoints, logs and final.json.")
    _cpu_devices_for(config)
    # Models the evaluators measure with (the image judge) are trained first, once, by every
    # process of the job together; a finished one is only loaded (read-only) by the evaluator.
    for run_config, run_dir in pending_runs(config):
        print(f"Training the evaluators' model into {run_dir} first (once).", flush=True)
        train(run_config, run_dir)
    final = train(config, args.workdir)
    if final.get("preempted"):
        return 0
    shown = {k: v for k, v in final["metrics"].items() if isinstance(v, float)}
    print(f"Done: step {final['step']}; " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
          + f"\nWrote {os.path.join(args.workdir, 'final.json')}")
    return 0


def cmd_compile(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxnets compile", description="Compile the train step `jaxnets train` would run for "
        "a target (a TPU slice, or N host CPU devices) without allocating it; report its memory "
        "per device (and whether it fits), FLOPs, collectives and a roofline bound.")
    parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
    parser.add_argument("--target", required=True,
                        help="tpu:v5p-N, tpu:v5e-N, tpu:v6e-N, tpu:v4-N (N chips) or cpu:N")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args, config = _config_from(parser, argv)
    target = parse_target(args.target)
    prepare(target)   # before JAX starts: forced host devices, libtpu beside other processes
    report = compile_for_target(config, target)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def cmd_tune(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxnets tune", description="Time the kernel choices of an experiment on this machine "
        "and write the kernel table runs read with --config.platform.kernel_table=PATH.")
    parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
    parser.add_argument("--out", required=True, help="the kernel table to write (JSON)")
    args, config = _config_from(parser, argv)
    _cpu_devices_for(config)
    config.platform.kernel_table = ""   # time every shape afresh
    table = tune.tune(Trainer(config, None, layout_only=True), "jaxnets tune " + " ".join(argv))
    kernel_table.save(table, args.out)
    print(f"Wrote {args.out}: {len(table[kernel_table.FILTER_GRAD])} filter-gradient choice(s)")
    return 0


def cmd_list(argv: list[str]) -> int:
    exp_dir = repo_dir("experiments")
    experiments = sorted(f[:-3] for f in os.listdir(exp_dir) if f.endswith(".py") and not f.startswith("_")) \
        if os.path.isdir(exp_dir) else []
    bench_dir = repo_dir("benchmarks")
    benchmarks = benchmark_names(bench_dir)
    for title, names in (("datasets", DATASETS.names()), ("models", MODELS.names()),
                         ("tasks", TASKS.names()), (f"experiments ({exp_dir})", experiments),
                         (f"benchmarks ({bench_dir})", benchmarks)):
        print(f"{title}:")
        print(textwrap.fill("  ".join(names) or "(none)", width=100, initial_indent="  ",
                            subsequent_indent="  "))
    return 0


def benchmark_names(bench_dir: str) -> list[str]:
    """Runnable as `python -m benchmarks.NAME`: modules of the rooms (speed/, course/, ..., served
    under their flat name by benchmarks/__init__.py), packages with a __main__.py, top-level modules."""
    if not os.path.isdir(bench_dir):
        return []
    names = set()
    for entry in os.listdir(bench_dir):
        path = os.path.join(bench_dir, entry)
        if entry.endswith(".py") and not entry.startswith("_") and entry != "common.py":
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__main__.py")):
            names.add(entry)
        elif os.path.isfile(os.path.join(path, "__init__.py")) and entry != "peers":  # peers: torch venv
            names.update(f[:-3] for f in os.listdir(path) if f.endswith(".py") and not f.startswith("_"))
    return sorted(names - {"suite"})


def cmd_bench(argv: list[str]) -> int:
    if not argv:
        raise UserError("Name a benchmark: `jaxnets bench NAME [ARGS]`; `jaxnets list` shows them.")
    name, rest = argv[0], argv[1:]
    bench_dir = repo_dir("benchmarks")
    if name not in benchmark_names(bench_dir):
        raise UserError(f"Unknown benchmark {name!r} in {bench_dir}; `jaxnets list` shows them.")
    return subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *rest],
                           cwd=os.path.dirname(os.path.abspath(bench_dir)))


def cmd_launch(argv: list[str]) -> int:
    return launch(argv)


COMMANDS = {"train": cmd_train, "compile": cmd_compile, "tune": cmd_tune, "launch": cmd_launch, "list": cmd_list,
            "bench": cmd_bench}
# Commands that run programs here install the process-wide settings (jaxnets.platform.install);
# list, bench and launch run none themselves.
NO_PROCESS_SETTINGS = ("list", "bench", "launch")
COMMANDS.update(WORKDIR_COMMANDS)   # eval, sample, generate, translate, export: jaxnets/commands.py


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()   # a rank of `jaxnets launch` never outlives it
    # Before JAX starts: CPU thread settings that cannot deadlock (for the ranks of a local launch too).
    cpu_threads.apply(os.environ, int(os.environ.get("JAXNETS_LOCAL_PROCESSES", "1")))
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv and argv[:1] != ["bench"]   # bench passes its flags on
    argv = argv if not debug else [a for a in argv if a != "--debug"]
    if debug:
        os.environ["JAXNETS_DEBUG"] = "1"   # read where third-party tracebacks are trimmed
    try:   # a malformed JAXNETS_CPU_DEVICES is refused before any work
        cpu_devices_setting("1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return EXIT_USAGE if argv and argv[0] not in ("-h", "--help") else 0
    if argv[0] not in NO_PROCESS_SETTINGS:
        install_process_settings()
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as e:
        if debug:
            traceback.print_exc()
        # Paths and names stay whole on one line (no breaks at hyphens or inside long words),
        # so they can be copied and searched for.
        print("error: " + textwrap.fill(str(e), width=100, subsequent_indent="  ", break_on_hyphens=False,
                                        break_long_words=False), file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
