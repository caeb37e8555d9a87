"""The command line (``aiva-cy`` / ``python -m aiva_cy``): commands, names, bad values, and
that a run which cannot train never touches the saved weights."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import aiva_cy
from aiva_cy import __main__ as cli
from aiva_cy.bench import compare


def run_cli(argv: List[str], capsys: pytest.CaptureFixture[str], prog: str = "aiva-cy"):
    """(exit status, stdout, stderr) of main(argv); argparse's SystemExit becomes the status."""
    try:
        status = cli.main(argv, prog=prog)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["--help"], capsys)
    assert status == 0
    assert out.startswith("usage: aiva-cy ")
    for command in ("run", "train", "bench", "convert"):
        assert f"    {command}" in out, out
    # Nothing more: no alias that the help does not explain.
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["run", "train", "bench", "convert"]


def test_readme_lists_every_command() -> None:
    """The README's command table names each command of --help, and only those."""
    readme = CHECKOUT / "README.md"
    if not readme.exists():
        pytest.skip("not a checkout")
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## Commands"):]
    section = section[:section.index("\n## ", 1)]
    for command in ("run", "train", "bench", "convert"):
        assert f"`aiva-cy {command}" in section, command


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["--version"], capsys)
    assert status == 0 and out.strip() == f"aiva-cy {aiva_cy.__version__}"


def test_python_dash_m_names_itself() -> None:
    done = subprocess.run([sys.executable, "-m", "aiva_cy", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m aiva_cy ")


def test_console_script_name(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [os.path.join("venv", "bin", "aiva-cy"), "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().out.startswith("usage: aiva-cy ")


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
    (["train", "--epochs", "-1"], "--epochs: expected an integer >= 1, got -1"),
    (["train", "--epochs", "two"], "--epochs: expected an integer >= 1, got 'two'"),
    (["--epochs", "0"], "--epochs"),
    (["train", "--quick"], "unrecognized arguments: --quick"),
    (["run", "--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (["run", "--quick"], "unrecognized arguments: --quick"),
    (["bench", "--rounds", "0"], "--rounds"),
    (["bench", "--rows", "nope"], "--rows: expected a comma-separated subset of"),
    (["bench", "--wait-quiet", "-1"], "--wait-quiet"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_values_are_argparse_errors(argv: List[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "weights").exists()      # nothing trained, nothing written


def test_a_refused_run_leaves_saved_weights_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    saved = tmp_path / "weights" / cli.WEIGHTS_FILE
    saved.parent.mkdir()
    saved.write_bytes(b"the weights of a long training run")
    monkeypatch.chdir(tmp_path)
    for argv in (["--epochs", "0"], ["train", "--epochs", "0"], ["run", "--threads", "nope"]):
        status, _, _ = run_cli(argv, capsys)
        assert status == 2
    assert saved.read_bytes() == b"the weights of a long training run"


def test_train_function_refuses_zero_epochs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        cli.train(tmp_path, epochs=0)
    assert list(tmp_path.iterdir()) == []


def test_train_writes_a_checked_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["train", "--epochs", "1", "-q", "--weights-dir", str(tmp_path / "w")],
                             capsys)
    assert status == 0
    assert (tmp_path / "w" / cli.WEIGHTS_FILE).stat().st_size > 0
    assert "weights identical, predictions identical" in out
    loaded = aiva_cy.AIVANet.load(tmp_path / "w" / cli.WEIGHTS_FILE)
    assert loaded.optimizer.step > 0          # trained, not a fresh net


def test_weights_dir_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    status, _, err = run_cli(["train", "--weights-dir", str(a_file)], capsys)
    assert status == 2 and "expected a folder" in err


def _no_training(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Make fit record that it ran (and do nothing): a refused folder must stop the run first."""
    calls: List[str] = []
    monkeypatch.setattr(aiva_cy.AIVANet, "fit", lambda self, *a, **k: calls.append("fit") or {})
    return calls


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("where", ["under a file", "in /proc", "weights file is a folder"])
def test_an_unwritable_weights_dir_is_refused_before_training(
        command: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One line, `aiva-cy: error: ...`, status 2, no traceback, and no training first."""
    if where == "under a file":
        (tmp_path / "file").write_text("x")
        folder = tmp_path / "file" / "weights"
    elif where == "in /proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        folder = Path("/proc/nope")
    else:
        folder = tmp_path / "w"
        (folder / cli.WEIGHTS_FILE).mkdir(parents=True)
    calls = _no_training(monkeypatch)
    monkeypatch.setattr(compare, "run_short", lambda **k: calls.append("bench"))
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli([command, "--weights-dir", str(folder)], capsys)
    assert status == 2
    assert calls == []
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("aiva-cy: error: "), err
    assert str(folder) in errors[0]


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    target = cli.prepare_weights_dir(tmp_path / "a" / "b")
    assert target == tmp_path / "a" / "b" / cli.WEIGHTS_FILE
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_a_failed_save_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the disk fill up after training, the user reads why, not a traceback."""
    def full_disk(self: aiva_cy.AIVANet, path: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aiva_cy.AIVANet, "save", full_disk)
    _no_training(monkeypatch)
    status, _, err = run_cli(["train", "--epochs", "1", "-q", "--weights-dir", str(tmp_path)],
                             capsys)
    assert status == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("aiva-cy: error: could not save the weights")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_is_one_line(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    status, _, err = run_cli(["train", "--weights-dir", str(tmp_path)], capsys)
    assert status == 130 and err.strip() == "aiva-cy: interrupted"


def test_missing_benchmark_parts_are_said_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    events: List[str] = []
    monkeypatch.setattr(compare, "optional_parts",
                        lambda chart=True: events.append("checked") or ["no PyTorch column: test"])
    monkeypatch.setattr(cli, "train", lambda *a, **k: events.append("trained"))
    monkeypatch.setattr(compare, "run_short", lambda **k: events.append("benchmarked") or {})
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli([], capsys)          # no command: the main job
    assert status == 0
    assert events == ["checked", "trained", "benchmarked"]
    assert "speed table: no PyTorch column: test" in err
    assert out.count("aiva-cy bench") == 1          # one pointer to the full benchmark


def test_main_job_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job as a user runs it, made small (one epoch on 200 images, one round of
    one row): a line per stage, the short table labelled as such, no verdicts, no harness
    internals, no files but the weights."""
    import aiva_cy.datasets

    real_run, real_load = compare.run, aiva_cy.datasets.load_digits

    def one_round(**kwargs: object) -> object:
        return real_run(**{**kwargs, "rounds": 1, "rows": ["forward_b1"]})  # type: ignore[arg-type]

    def few_digits(split: str = "train", **kwargs: object) -> object:
        X, y = real_load(split=split, **kwargs)         # type: ignore[arg-type]
        return X[:200], y[:200]

    monkeypatch.setattr(compare, "run", one_round)
    monkeypatch.setattr(aiva_cy.datasets, "load_digits", few_digits)
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(["--epochs", "1", "-q"], capsys)
    assert status == 0, err
    for stage in ("[1/3] train:", "[2/3] save:", "[3/3] speed:"):
        assert stage in out, out
    assert "accuracy" in out and "SHORT table" in out and "no targets judged" in out
    assert "✓" not in out and "✗" not in out and "target" not in out.split("SHORT table")[1].split("\n")[1]
    assert "k=" not in err + out                     # the harness's details: only with -v
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["aiva_digits.npz", "weights"]


def test_no_command_with_options_is_the_main_job(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    seen: List[argparse.Namespace] = []
    monkeypatch.setattr(cli, "_run_all", lambda args: seen.append(args) or 0)
    ap = cli.build_parser()
    args = ap.parse_args(["run", "--epochs", "3", "--threads", "1", "-v"])
    assert (args.epochs, args.threads, args.verbose) == (3, 1, 1)
    # The dispatch in main() inserts "run" when the first word is an option.
    monkeypatch.setattr(cli, "build_parser", lambda prog="aiva-cy": _parser_with(seen))
    status, _, _ = run_cli(["--epochs", "3"], capsys)
    assert status == 0 and seen[-1].command == "run" and seen[-1].epochs == 3


def _parser_with(seen: List[argparse.Namespace]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aiva-cy")
    sub = ap.add_subparsers(dest="command")
    p = sub.add_parser("run")
    p.add_argument("--epochs", type=compare.positive_int)
    p.set_defaults(func=lambda args: seen.append(args) or 0)
    return ap


def test_a_new_command_plugs_in(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """The extension point: a module's add_parser(subparsers) appended to COMMANDS."""
    def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
        p = sub.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, add_parser])
    status, out, _ = run_cli(["--help"], capsys)
    assert status == 0 and "hello" in out
    status, out, _ = run_cli(["hello", "--name", "aiva"], capsys)
    assert status == 0 and out.strip() == "hello aiva"


CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (CHECKOUT / "benchmarks" / "compare.py").exists(),
                    reason="not a checkout: benchmarks/ is not installed")
def test_checkout_entry_point() -> None:
    """benchmarks/compare.py runs the packaged benchmark with the checkout's aiva_cy."""
    done = subprocess.run([sys.executable, str(CHECKOUT / "benchmarks" / "compare.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python benchmarks/compare.py ")


def test_convert_is_a_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """aiva-cy convert comes from aiva_cy.convert.add_parser; without --trust-pickle it refuses."""
    status, _, err = run_cli(["convert", str(tmp_path / "old.pkl"), str(tmp_path / "new.npz")],
                             capsys)
    assert status == 2 and "refusing" in err
    assert list(tmp_path.iterdir()) == []
