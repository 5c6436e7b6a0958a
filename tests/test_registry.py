"""The one registry shape of the extension points, and what each register_* refuses."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from prefkit.errors import ConfigError
from prefkit.evaluate import available_scorers, register_scorer
from prefkit.evaluate.options import EvaluateOptions
from prefkit.registry import Registry
from prefkit.select import SelectOptions, available_metrics, register_metric
from prefkit.synth import SynthOptions, available_synth_methods, register_synth_method


def test_a_registry_keeps_order_and_names_the_choices_of_an_unknown_name():
    reg = Registry("widget")
    reg.add("b", 1)
    reg.add("a", 2)
    assert reg.names() == ["a", "b"] and reg.get("a") == 2 and "b" in reg and list(reg) == [2, 1]
    reg.add("b", 3)  # re-registering replaces (a user may override a built-in)
    assert reg.get("b") == 3 and reg.names() == ["a", "b"]
    with pytest.raises(ConfigError, match=r"unknown widget 'c'; choose from a, b"):
        reg.get("c")


def test_the_built_ins_and_the_options_objects_validate_against_the_registries():
    assert available_metrics() == ["alignment-potential", "ap-paper", "dpo-implicit", "explicit", "implicit",
                                   "random"]
    assert available_synth_methods() == ["rlaif", "rlcd", "rmboost", "west-of-n"]
    assert available_scorers() == ["judge-single", "pairwise", "reward-fn", "reward-model"]
    with pytest.raises(ConfigError, match="unknown metric 'nope'; choose from alignment-potential"):
        SelectOptions(metric="nope")
    with pytest.raises(ConfigError, match="unknown scorer 'nope'; choose from judge-single"):
        EvaluateOptions(scorers=("nope",))
    assert EvaluateOptions(scorers="reward-fn").scorers == ("reward-fn",)


def test_registrations_that_could_not_work_are_refused_at_once():
    with pytest.raises(TypeError, match="needs must be among"):
        register_metric("m", needs=("gpu",), ranked_by="x")
    with pytest.raises(TypeError, match="needs must be among"):
        register_scorer("s", needs=("oracle",))

    @dataclass(frozen=True)
    class NoHelp(SynthOptions):
        depth: int = 2  # a CLI flag needs its help

    with pytest.raises(TypeError, match="depth need metadata help"):
        register_synth_method("no-help", options=NoHelp, help="x")

    with pytest.raises(TypeError, match="must be a SynthOptions subclass"):
        register_synth_method("not-options", options=dict, help="x")
    assert "no-help" not in available_synth_methods()
