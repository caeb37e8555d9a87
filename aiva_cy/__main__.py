"""The command line: ``aiva-cy`` or ``python -m aiva_cy``.

    aiva-cy [run]      the main job: train on the bundled digits, save, reload, a short speed table
    aiva-cy train      only the training part (train, save, reload, check)
    aiva-cy bench      the full benchmark (every row, every peer installed, judged if quiet)
    aiva-cy convert    AIVA's pickled weights to an aiva_cy checkpoint (aiva_cy.convert)

A command is a function ``add_parser(subparsers)`` that adds its subparser and sets
``func`` (called with the parsed arguments, returns the exit status); :data:`COMMANDS`
lists them in the order ``--help`` shows. A command reports a user's mistake (a folder it
cannot write, say) by raising :class:`CommandError`: ``main`` prints it as one line,
``aiva-cy: error: ...``, and exits with status 2, as argparse does for a bad option.
"""
from __future__ import annotations

import argparse
import os
import secrets
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
#: Epochs of the main job: the digits net is at 100% training accuracy after 4-5 epochs,
#: 97% on the test split (96.9-97.5% over four shuffle orders); 20 epochs add nothing
#: (README, "Training").
DEFAULT_EPOCHS = 5


class CommandError(Exception):
    """A mistake of the user's, said in one line: ``aiva-cy: error: <message>``, status 2."""


def prepare_weights_dir(out_dir: Path) -> Path:
    """Make ``out_dir`` and prove it takes a file, before any minutes go into training.

    Writes and removes a probe file; refuses a weights file that is a folder or not
    writable. Returns the path the weights will be written to.
    """
    target = out_dir / WEIGHTS_FILE
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise CommandError(f"--weights-dir {out_dir}: expected a folder, got a file")
        out_dir.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise CommandError(f"cannot write the weights to {target}: it is a folder")
        if target.exists() and not os.access(target, os.W_OK):
            raise CommandError(f"cannot write the weights to {target}: no permission to "
                               "replace that file")
        probe = out_dir / f".aiva_cy-probe-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        with open(probe, "xb") as f:
            f.write(b"aiva_cy checks that this folder takes a file")
        probe.unlink()
    except OSError as e:
        raise CommandError(f"cannot write to the weights folder {out_dir}: "
                           f"{e.strerror or e}") from None
    return target


def train(out_dir: Path, epochs: int = DEFAULT_EPOCHS, quiet: bool = False, *,
          stages: int = 2) -> Path:
    """Train AIVANet on the digits training split, save it, reload it, check it agrees.

    The folder is checked first (:func:`prepare_weights_dir`); the weights are written only
    after training has finished, atomically: a run that fails or is interrupted leaves the
    previous file as it was. Prints one progress line per stage, numbered ``[i/stages]``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    path = prepare_weights_dir(out_dir)
    from aiva_cy import AIVANet
    from aiva_cy.datasets import load_digits

    X_train, y_train = load_digits(split="train")
    X_test, y_test = load_digits(split="test")
    # Inputs in [0, 0.25]: the initial membrane potentials then sit below threshold, and
    # training recruits the neurons it needs (README, "Training").
    X_train, X_test = X_train / np.float32(4), X_test / np.float32(4)
    net = AIVANet(input_size=64, num_tools=10, seed=0)
    print(f"[1/{stages}] train: AIVANet 64 → {net.hidden_size} → {net.spiking_size} → 10 "
          f"({net.num_parameters:,} weights) on {len(X_train)} images of 8×8 digits, "
          f"{epochs} epochs", flush=True)
    start = time.perf_counter()
    net.fit(X_train, y_train, epochs=epochs, batch_size=32, seed=0, verbose=0 if quiet else 1)
    took = time.perf_counter() - start
    result = net.evaluate(X_test, y_test)
    print(f"      trained in {took:.1f} s; on the {len(X_test)} test images: accuracy "
          f"{result['accuracy']:.1%}, loss {result['loss']:.4f}", flush=True)

    start = time.perf_counter()
    try:
        net.save(path)
    except (OSError, ValueError) as e:
        raise CommandError(f"could not save the weights: {e}") from None
    again = AIVANet.load(path)
    same_probs = np.array_equal(again.predict_proba(X_test), net.predict_proba(X_test))
    same_weights = all(np.array_equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    print(f"[2/{stages}] save: {path} ({path.stat().st_size / 1e6:.1f} MB); reloaded in "
          f"{time.perf_counter() - start:.1f} s: weights "
          f"{'identical' if same_weights else 'DIFFER'}, predictions "
          f"{'identical' if same_probs else 'DIFFER'}", flush=True)
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
    p.add_argument("--epochs", type=compare.positive_int, default=DEFAULT_EPOCHS,
                   help=f"training epochs, >= 1 (default: {DEFAULT_EPOCHS})")
    p.add_argument("--weights-dir", type=_writable_dir, default=Path("weights"),
                   help=f"where {WEIGHTS_FILE} goes, made if missing (default: ./weights)")
    p.add_argument("-q", "--quiet", action="store_true", help="no training progress bar")


#: What the main job's last line points to, with how long it takes (measured on 2 cores).
FULL_BENCH_HINT = ("For the full comparison (every row and peer, the start-up, the BLAS floor, "
                   "judged against the targets on a quiet machine): aiva-cy bench "
                   "(4-7 minutes on 2 cores)")


def _run_all(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    print("aiva-cy: the main job: train AIVANet on the bundled digits, save, reload, and a "
          "short speed table", flush=True)
    # Before training: a missing optional peer is worth knowing before the work starts.
    for line in compare.optional_parts(chart=False):
        print(f"speed table: {line}", file=sys.stderr)
    train(args.weights_dir, epochs=args.epochs, quiet=args.quiet, stages=3)
    print(f"[3/3] speed: the short table against the NumPy BioNeuron "
          f"({', '.join(compare.ROW_LABELS[r] for r in compare.SHORT_ROWS)}) …", flush=True)
    compare.run_short(threads=args.threads, verbose=1 + args.verbose)
    print()
    print(FULL_BENCH_HINT)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    train(args.weights_dir, epochs=args.epochs, quiet=args.quiet)
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    for line in compare.optional_parts(chart=not args.no_chart):
        print(f"benchmark: {line}", file=sys.stderr)
    return compare.run_from_args(args)


def add_run_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "run", help="the main job (the default): train, save, reload, short speed table",
        description="Train AIVANet on the bundled digits, save it to --weights-dir, reload "
                    "it and check it agrees, then time it against the NumPy BioNeuron (and "
                    "PyTorch and ONNX Runtime where installed) in a short table. About a "
                    "minute on 2 cores; 'aiva-cy bench' is the full benchmark.")
    _add_training_arguments(p)
    p.add_argument("--threads", type=compare.positive_int, default=None,
                   help="threads for every library in the speed table (default: all cores)")
    compare.add_verbose_argument(p)
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
        "bench", help="the full benchmark: aiva_cy side by side with its peers (minutes)",
        description="aiva_cy side by side with the numpy BioNeuron, PyTorch, ONNX Runtime and "
                    "the raw BLAS floor; prints the table and writes the result JSON and "
                    "chart. A full run on a quiet machine is judged against the targets and "
                    "replaces latest.json and latest.png; a --quick or disturbed run prints "
                    "its numbers marked as such and writes a file of its own.")
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
    try:
        return int(args.func(args))
    except CommandError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{ap.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(prog="python -m aiva_cy"))
