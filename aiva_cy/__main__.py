"""The command line: ``aiva-cy`` or ``python -m aiva_cy``.

    aiva-cy [run]      the main job: train on the bundled digits, save, reload, check, benchmark
    aiva-cy train      only the training part (train, save, reload, check)
    aiva-cy bench      only the benchmark
    aiva-cy convert    AIVA's pickled weights to an aiva_cy checkpoint (aiva_cy.convert)

A command is a function ``add_parser(subparsers)`` that adds its subparser and sets
``func`` (called with the parsed arguments, returns the exit status); :data:`COMMANDS`
lists them in the order ``--help`` shows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np

from aiva_cy import __version__
from aiva_cy import convert
from aiva_cy.bench import compare

#: The file the main job writes into --weights-dir.
WEIGHTS_FILE = "aiva_digits.npz"


def train(out_dir: Path, epochs: int = 20, quiet: bool = False) -> Path:
    """Train AIVANet on the digits training split, save it, reload it, check it agrees.

    The weights are written only after training has finished, atomically: a run that
    fails or is interrupted leaves the previous file as it was.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    from aiva_cy import AIVANet
    from aiva_cy.datasets import load_digits

    X_train, y_train = load_digits(split="train")
    X_test, y_test = load_digits(split="test")
    # Inputs in [0, 0.25]: the initial membrane potentials then sit below threshold, and
    # training recruits the neurons it needs (README, "Training").
    X_train, X_test = X_train / np.float32(4), X_test / np.float32(4)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images, 64 features, 10 classes")
    net = AIVANet(input_size=64, num_tools=10, seed=0)
    print(f"{net!r}: {net.num_parameters:,} weights")
    start = time.perf_counter()
    net.fit(X_train, y_train, epochs=epochs, batch_size=32, seed=0, verbose=0 if quiet else 1)
    took = time.perf_counter() - start
    result = net.evaluate(X_test, y_test)
    print(f"trained {epochs} epochs in {took:.1f} s; test loss {result['loss']:.4f}, "
          f"test accuracy {result['accuracy']:.2%}")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    net.save(path)
    again = AIVANet.load(path)
    same_probs = np.array_equal(again.predict_proba(X_test), net.predict_proba(X_test))
    same_weights = all(np.array_equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    print(f"saved to {path} ({path.stat().st_size / 1e6:.1f} MB); reloaded: weights "
          f"{'identical' if same_weights else 'DIFFER'}, predictions "
          f"{'identical' if same_probs else 'DIFFER'}")
    if not (same_probs and same_weights):
        raise SystemExit("the reloaded net does not agree with the trained one")
    return path


# --------------------------------------------------------------------------- commands


def _writable_dir(text: str) -> Path:
    """argparse type for --weights-dir: a folder (or a path where one can be made)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text!r}")
    return path


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=compare.positive_int, default=20,
                   help="training epochs, >= 1 (default: 20)")
    p.add_argument("--weights-dir", type=_writable_dir, default=Path("weights"),
                   help=f"where {WEIGHTS_FILE} goes (default: ./weights)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _say_what_bench_leaves_out(args: argparse.Namespace) -> None:
    # Before training: a missing optional library is worth knowing before minutes of work.
    for line in compare.optional_parts(chart=not args.no_chart):
        print(f"benchmark: {line}", file=sys.stderr)


def _run_all(args: argparse.Namespace) -> int:
    _say_what_bench_leaves_out(args)
    train(args.weights_dir, epochs=args.epochs, quiet=args.quiet)
    print()
    return compare.run_from_args(args)


def _run_train(args: argparse.Namespace) -> int:
    train(args.weights_dir, epochs=args.epochs, quiet=args.quiet)
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    _say_what_bench_leaves_out(args)
    return compare.run_from_args(args)


def add_run_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "run", aliases=["all"], help="the main job (the default): train, save, reload, benchmark",
        description="Train AIVANet on the bundled digits, save it to --weights-dir, reload "
                    "it and check it agrees, then run the benchmark and print the speed table.")
    _add_training_arguments(p)
    compare.add_arguments(p)
    p.set_defaults(func=_run_all)


def add_train_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "train", help="train on the bundled digits, save, reload and check",
        description="Train AIVANet on the bundled digits, save it to --weights-dir, reload "
                    "it and check that the reloaded net predicts the same.")
    _add_training_arguments(p)
    p.set_defaults(func=_run_train)


def add_bench_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "bench", help="the benchmark: aiva_cy side by side with its peers",
        description="aiva_cy side by side with the numpy BioNeuron, PyTorch, ONNX Runtime and "
                    "the raw BLAS floor; prints the table and writes the result JSON and chart.")
    compare.add_arguments(p)
    p.set_defaults(func=_run_bench)


#: The subcommands, in --help order. A new one adds its ``add_parser(subparsers)`` here.
COMMANDS: List[Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], Any]] = [
    add_run_parser,
    add_train_parser,
    add_bench_parser,
    convert.add_parser,
]


def build_parser(prog: str = "aiva-cy") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="AIVA's spiking decision core: train it, check it, time it.",
        epilog=f"With no command, '{prog}' runs the main job ('{prog} run'). "
               f"'{prog} COMMAND --help' lists a command's options.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add in COMMANDS:
        add(sub)
    return ap


def _default_prog() -> str:
    # `python -m aiva_cy` runs this file as __main__.py; the console script is aiva-cy.
    return "python -m aiva_cy" if os.path.basename(sys.argv[0]) == "__main__.py" else "aiva-cy"


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser(prog or _default_prog())
    # No command (nothing, or options only) means the main job.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(prog="python -m aiva_cy"))
