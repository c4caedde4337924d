"""Ray's GPUs as an inventory: a node is a domain, a group never spans nodes (no Ray needed)."""

from __future__ import annotations

import pytest

from pytest_disteval.executors.ray import RayExecutor, RayInventory
from pytest_disteval.gpu.inventory import make_groups
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.plan.planner import _check_ray_groups


def two_nodes() -> RayInventory:
    return RayInventory([
        {"node_id": "a" * 40, "ip": "10.0.0.1", "gpus": 4, "cpus": 32, "accelerator": "H200"},
        {"node_id": "b" * 40, "ip": "10.0.0.2", "gpus": 4, "cpus": 32, "accelerator": "H200"},
        {"node_id": "c" * 40, "ip": "10.0.0.3", "gpus": 0, "cpus": 8, "accelerator": None},
    ])


def test_groups_stay_on_one_node() -> None:
    inv = two_nodes()
    assert [g.name for g in inv.gpus()[:1]] == ["H200 on 10.0.0.1"]
    for size, count in ((4, 2), (2, 4), (3, 2)):
        groups = make_groups(inv.gpus(), size, None, inv)
        assert len(groups) == count
        for group in groups:
            assert len({inv.domain(g) for g in group}) == 1
        _check_ray_groups(groups, inv, size)  # no error


def test_a_group_larger_than_a_node_is_refused() -> None:
    inv = two_nodes()
    groups = make_groups(inv.gpus(), 8, 1, inv)  # make_groups crosses domains when it must
    with pytest.raises(LayoutError, match=r"a group of 8 GPUs does not fit on one Ray node "
                                          r"\(the largest has 4\); a group never spans nodes"):
        _check_ray_groups(groups, inv, 8)


def test_the_plan_names_each_actor_and_the_nodes_that_fit() -> None:
    inv = two_nodes()
    lines = RayExecutor.describe_groups(make_groups(inv.gpus(), 4, 2, inv), inv)
    assert lines == [
        f"  ray actor {i}: num_gpus=4 num_cpus=1; Ray places it on a node with 4 free GPU(s) "
        "(10.0.0.1, 10.0.0.2)" for i in (0, 1)]
    assert RayExecutor.describe_groups([[]], inv) == [
        "  ray actor 0: num_gpus=0 num_cpus=1; Ray places it on any node with a free CPU"]
