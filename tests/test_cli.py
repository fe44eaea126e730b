"""CLI surface: help texts, `models` listing and offline CT coverage."""

import pytest

from ctrobust.cli import build_parser, main


@pytest.mark.parametrize("cmd", ["sweep", "demo", "plot", "check", "report", "models"])
def test_help_ends_with_worked_examples(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out.rstrip()
    tail = out[out.rindex("example:" if "examples:" not in out else "examples:"):]
    assert "ctrobust " + cmd in tail


def test_main_help_returns_0(capsys):
    assert main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_models_lists_robustbench_zoo_and_bundled(capsys):
    assert main(["models", "--dataset", "cifar10", "--threat", "Linf"]) == 0
    names = capsys.readouterr().out.split()
    assert "Standard" in names and "bundled/resnet18-cifar10" in names and len(names) > 50


def test_models_coverage_offline(capsys):
    assert main(["models", "--coverage", "--only", "Standard", "bundled/resnet18-cifar10"]) == 0
    out = capsys.readouterr().out
    # relu mod, relu fn, leaky | scope all: tuned, untouched, missed, CT | scope modules: the same
    std = next(line for line in out.splitlines() if line.startswith("Standard "))
    assert std.split()[1:12] == ["25", "0", "0", "25", "0", "0", "full", "25", "0", "0", "full"]
    bundled = next(line for line in out.splitlines() if line.startswith("bundled/resnet18-cifar10"))
    # F.relu only: the reference's module swap (scope modules) tunes none of it
    assert bundled.split()[1:12] == ["0", "17", "0", "17", "0", "0", "full", "0", "17", "0", "none"]


def test_unknown_model_suggests_and_exits_2(capsys):
    assert main(["models", "--dataset", "cifar1O"]) == 2
    assert "did you mean 'cifar10'" in capsys.readouterr().err
