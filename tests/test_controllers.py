"""The Controller protocol's adapters (ahm.agents.base) and make_controller; the heuristics themselves are
tested in tests/test_heuristics.py, learned controllers in tests/test_learned.py."""

from __future__ import annotations

import numpy as np
import pytest

from ahm.agents import (
    CONTROLLER_NAMES,
    Controller,
    FunctionController,
    as_controller,
    batch_info,
    batch_observation,
    make_controller,
    unbatch_action,
)


def test_callables_become_controllers_and_bad_shapes_are_refused():
    ctrl = as_controller(lambda obs, mask: np.zeros((len(obs["progress"]), 5), dtype=np.int64))
    assert isinstance(ctrl, FunctionController) and isinstance(ctrl, Controller)
    assert ctrl.act({"progress": np.zeros((2, 1))}).shape == (2, 5)
    bad = FunctionController(lambda obs, mask: np.zeros((1, 4)), name="bad")
    with pytest.raises(ValueError, match="shape"):
        bad.act({"progress": np.zeros((1, 1))})
    with pytest.raises(TypeError, match="cannot use"):
        as_controller(42)


def test_make_controller_knows_every_name_and_refuses_others():
    for name in CONTROLLER_NAMES:
        ctrl = make_controller(name)
        assert isinstance(ctrl, Controller) and ctrl.name == name
    with pytest.raises(ValueError, match="unknown controller"):
        make_controller("no-such-controller")


def test_batching_helpers_round_trip():
    obs = batch_observation({"a": np.arange(3.0), "b": np.zeros((2, 2))})
    assert obs["a"].shape == (1, 3) and obs["b"].shape == (1, 2, 2)
    info = batch_info({"x": 1, "nested": {"y": np.arange(2)}})
    assert info["x"].shape == (1,) and info["nested"]["y"].shape == (1, 2)
    assert unbatch_action(np.arange(5)[None]).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"\(1, 5\)"):
        unbatch_action(np.zeros((2, 5)))
