"""The demo (``python -m dirloss.demo``) runs end to end and prints the three methods."""

import math

import pytest

from dirloss import demo


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
