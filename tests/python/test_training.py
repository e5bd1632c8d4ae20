"""The training example runs and learns with every mechanism it trains (a short run)."""
import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
import train_tiny  # noqa: E402


def test_tiny_model_learns_with_each_mechanism(tmp_path):
    png = tmp_path / "loss.png"
    plot = importlib.util.find_spec("matplotlib") is not None  # the PNG needs matplotlib
    curves = train_tiny.main(["--steps", "60"] + (["--png", str(png)] if plot else []))
    assert set(curves) == set(train_tiny.MECHANISMS)
    for label, losses in curves.items():
        first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
        assert last < 0.8 * first, (label, first, last)
    if plot:
        assert png.stat().st_size > 1000
