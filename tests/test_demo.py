"""The demo (``python -m dirloss.demo``) runs end to end and prints the three methods."""

import math
import warnings

import pytest
import torch

from dirloss import GroupBinner, demo


def test_demo_prints_mse_paper_and_defaults(capsys):
    results = demo.main(["--train-size", "600", "--test-size", "200", "--epochs", "2"])
    names = list(results)
    assert names[0] == "MSE" and names[1] == "Group-DIR (paper)"
    assert names[2].startswith("dirloss defaults (")
    for metrics in results.values():
        assert math.isfinite(metrics["all"]["mae"]) and math.isfinite(metrics["bmae"])
    out = capsys.readouterr().out
    assert all(name in out for name in names)


@pytest.mark.parametrize("argv", [["--groups", "1"], ["--epochs", "0"], ["--train-size", "1"]])
def test_demo_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as err:
        demo.main(argv)
    assert err.value.code == 2


def test_demo_default_groups_leave_none_empty(capsys):
    # The demo's first run must not show the library's empty-group warning: with the default
    # --groups 10 the long tail leaves [90, 100] without a training label, so that group is
    # merged into [80, 90].
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        demo.main(["--train-size", "8000", "--test-size", "200", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "group edges: [0, 10, 20, 30, 40, 50, 60, 70, 80, 100]" in out


@pytest.mark.parametrize("num_groups", [2, 5, 10, 40])
def test_groups_with_data_merges_empty_groups(num_groups):
    _, y = demo.make_long_tailed_regression(3000)
    y = y / 100
    settings = demo._groups_with_data(y, num_groups)
    binner = GroupBinner(**settings).fit(y)
    assert bool((binner.counts > 0).all())
    uniform = torch.linspace(0.0, 1.0, num_groups + 1, dtype=torch.float64)
    edges = binner.edges
    assert edges[0] == 0.0 and edges[-1] == 1.0  # the whole range is still covered
    assert bool(torch.isin(edges, uniform).all())  # only uniform edges, some dropped


def test_groups_with_data_merges_an_empty_first_group_upward():
    settings = demo._groups_with_data(torch.tensor([0.6, 0.7, 0.9]), 4)
    assert settings["edges"].tolist() == [0.0, 0.75, 1.0]


# ---------------------------------------------------------------------------------------------
# Every demo option has help text
# ---------------------------------------------------------------------------------------------
def test_every_demo_option_has_help_text(monkeypatch):
    import argparse

    from dirloss import demo

    class Parsed(Exception):
        pass

    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed):
        demo.main([])
    (parser,) = seen
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options, "no options found"
    assert [a.dest for a in options if not a.help] == []
