"""``python -m aiva_cy``: the main job.

    python -m aiva_cy            train on the bundled digits, save, reload, check, benchmark
    python -m aiva_cy train      only the training part
    python -m aiva_cy bench ...  only the benchmark (arguments go to benchmarks/compare.py)
    python -m aiva_cy convert OLD.pkl NEW.npz --trust-pickle
                                 AIVA's pickled weights to a checkpoint (aiva_cy.convert)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def train(out_dir: Path, epochs: int = 20, quiet: bool = False) -> Path:
    """Train AIVANet on the digits training split, save it, reload it, check it agrees."""
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
    print(f"trained in {took:.1f} s; test loss {result['loss']:.4f}, "
          f"test accuracy {result['accuracy']:.2%}")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "aiva_digits.npz"
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


def bench(argv: Sequence[str]) -> int:
    compare = REPO / "benchmarks" / "compare.py"
    if not compare.exists():
        raise SystemExit("the benchmark lives in the source checkout's benchmarks/ folder, "
                         "which this installation does not have; run it from a checkout")
    sys.path.insert(0, str(compare.parent))
    import compare as compare_module  # noqa: E402
    return int(compare_module.main(list(argv)) or 0)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return bench(argv[1:])
    if argv and argv[0] == "convert":
        from aiva_cy.convert import main as convert_main
        return convert_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m aiva_cy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", choices=["all", "train"], default="all")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--weights-dir", type=Path, default=Path("weights"),
                    help="where the trained weights go (default: ./weights)")
    ap.add_argument("--quick", action="store_true", help="a short benchmark (checks it runs)")
    args = ap.parse_args(argv)
    train(args.weights_dir, epochs=args.epochs)
    if args.command == "train":
        return 0
    print()
    return bench(["--quick"] if args.quick else [])


if __name__ == "__main__":
    sys.exit(main())
