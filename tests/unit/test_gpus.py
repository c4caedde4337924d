"""Inventory, CUDA_VISIBLE_DEVICES, groups and cross-process leases (pytest_disteval.gpu)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

from pytest_disteval.gpu.inventory import (
    GPU,
    FakeInventory,
    Inventory,
    NoGPUError,
    NvmlInventory,
    make_groups,
    parse_size,
    select_visible,
)
from pytest_disteval.gpu.lease import LeaseError, LeaseManager, LeaseTimeout

GiB = 2**30

# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * GiB),
        ("20GB", 20 * 10**9),
        ("512MiB", 512 * 2**20),
        ("512MB", 512 * 10**6),
        ("80 GiB", 80 * GiB),
        (" 40 gb ", 40 * 10**9),
        ("1.5GiB", 3 * GiB // 2),
        ("1TiB", 2**40),
        ("123456789012345678B", 123456789012345678),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("20", "a unit is required"),
        ("20G", "ambiguous"),
        ("20 g", "ambiguous"),
        ("GiB", "expected a number"),
        ("-1GiB", "expected a number"),
        ("20 parsecs", "ambiguous or unknown"),
        ("", "expected a number"),
    ],
)
def test_parse_size_rejects_with_valid_units(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        parse_size(text)
    assert "GiB" in str(info.value) and "GB" in str(info.value)


# ---------------------------------------------------------------------------- fake inventory


def test_fake_spec_count_and_size() -> None:
    inventory = FakeInventory.from_spec("8x80GiB")
    gpus = inventory.gpus()
    assert [g.index for g in gpus] == list(range(8))
    assert {g.total_memory for g in gpus} == {80 * GiB}
    assert len({g.uuid for g in gpus}) == 8
    assert inventory.source == "fake"
    assert inventory.domain(gpus[0]) is None
    assert isinstance(inventory, Inventory)


def test_fake_spec_name_domains_and_mixed_sizes() -> None:
    inventory = FakeInventory.from_spec("8x80GiB:H100/4")
    gpus = inventory.gpus()
    assert {g.name for g in gpus} == {"H100"}
    assert [inventory.domain(g) for g in gpus] == ["0"] * 4 + ["1"] * 4

    mixed = FakeInventory.from_spec("80GiB,80GiB, 40GB:A100")
    assert [g.total_memory for g in mixed.gpus()] == [80 * GiB, 80 * GiB, 40 * 10**9]
    assert mixed.gpus()[2].name == "A100"
    assert [g.total_memory for g in FakeInventory.from_spec("4 X 40GB").gpus()] == [40 * 10**9] * 4
    assert FakeInventory.from_spec("0").gpus() == []


@pytest.mark.parametrize(
    "spec", ["8x80G", "8x", "x80GiB", "8x80GiB/0", "2xH100-80GiB", "0x80GiB", ""]
)
def test_fake_spec_rejects_with_example(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid fake GPU spec") as info:
        FakeInventory.from_spec(spec)
    assert "e.g. '8x80GiB'" in str(info.value)


# ---------------------------------------------------------------------------- NVML


class FakeNvml:
    """Stands in for the pynvml module: the real NvmlInventory code runs against it."""

    NVML_TOPOLOGY_INTERNAL = 0
    NVML_TOPOLOGY_SINGLE = 10
    NVML_TOPOLOGY_MULTIPLE = 20
    NVML_TOPOLOGY_HOSTBRIDGE = 30
    NVML_TOPOLOGY_NODE = 40
    NVML_TOPOLOGY_SYSTEM = 50
    NVML_P2P_CAPS_INDEX_NVLINK = 3
    NVML_P2P_STATUS_OK = 0
    NVML_P2P_STATUS_NOT_SUPPORTED = 5

    class NVMLError(Exception):
        pass

    def __init__(
        self,
        count: int = 4,
        *,
        as_bytes: bool = False,
        nvlink: set[frozenset[int]] | None = None,
        ancestor: dict[frozenset[int], int] | None = None,
        fail_init: bool = False,
    ) -> None:
        self.count = count
        self.as_bytes = as_bytes
        self.nvlink = nvlink
        self.ancestor = ancestor
        self.fail_init = fail_init
        self.open = 0

    def uuid(self, i: int) -> str:
        return f"GPU-{i}{i}{i}aaaa-0000-0000-0000-00000000000{i}"

    def _out(self, text: str) -> str | bytes:
        return text.encode() if self.as_bytes else text

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.open -= 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        return self._out(self.uuid(handle))

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self._out("NVIDIA H100 80GB HBM3")

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        class Memory:
            total = 80 * GiB
            free = 80 * GiB - handle * GiB

        return Memory()

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
        assert index == self.NVML_P2P_CAPS_INDEX_NVLINK
        if self.nvlink is None:
            raise self.NVMLError("Not Supported")
        return 0 if frozenset((a, b)) in self.nvlink else 5

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        if self.ancestor is None:
            raise self.NVMLError("Not Supported")
        return self.ancestor.get(frozenset((a, b)), self.NVML_TOPOLOGY_SYSTEM)


def test_nvml_reads_gpus_and_decodes_bytes() -> None:
    nvml = FakeNvml(count=2, as_bytes=True)
    inventory = NvmlInventory(nvml=nvml, environ={})
    gpus = inventory.gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].uuid == nvml.uuid(1) and isinstance(gpus[1].uuid, str)
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[1].free_memory == 79 * GiB and gpus[1].total_memory == 80 * GiB
    assert inventory.source == "nvml"
    assert nvml.open == 0  # shut down after reading
    assert inventory.domain(gpus[0]) is None  # topology not supported: unknown


def test_nvml_without_driver_raises_no_gpu_error() -> None:
    with pytest.raises(NoGPUError, match="Driver Not Loaded"):
        NvmlInventory(nvml=FakeNvml(fail_init=True), environ={})


def test_nvml_module_is_imported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(count=3))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert len(NvmlInventory().gpus()) == 3


def test_real_nvml_here_gives_gpus_or_no_gpu_error() -> None:
    try:
        inventory = NvmlInventory()
    except NoGPUError as exc:
        assert "NVML could not initialise" in str(exc) or "pynvml" in str(exc)
    else:
        assert all(g.total_memory > 0 for g in inventory.gpus())


@pytest.mark.parametrize(
    ("value", "indices"),
    [
        ("2,0", [2, 0]),
        (" 1 , 3 ", [1, 3]),
        ("", []),
        ("-1", []),
        ("1,-1,2", [1]),  # CUDA stops at a negative ordinal
        ("GPU-333aaaa-0000-0000-0000-000000000003", [3]),
        ("333aaaa-0000-0000-0000-000000000003", [3]),
        ("GPU-222,0", [2, 0]),  # an unambiguous prefix, as CUDA allows
        ("gpu-111AAAA", [1]),
    ],
)
def test_cuda_visible_devices_restricts_inventory(value: str, indices: list[int]) -> None:
    inventory = NvmlInventory(nvml=FakeNvml(count=4), environ={"CUDA_VISIBLE_DEVICES": value})
    assert [g.index for g in inventory.gpus()] == indices


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("7", "'7' matches no GPU"),
        ("0,GPU-999", "'GPU-999' matches no GPU"),
        ("GPU-", "prefix of several UUIDs"),
        ("0,0", "listed twice"),
        ("0,,1", "empty entry"),
        ("MIG-abc", "MIG device"),
    ],
)
def test_cuda_visible_devices_bad_entry_is_named(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        NvmlInventory(nvml=FakeNvml(count=4), environ={"CUDA_VISIBLE_DEVICES": value})
    assert f"CUDA_VISIBLE_DEVICES={value!r}" in str(info.value)


def test_select_visible_names_the_variable() -> None:
    gpus = FakeInventory.from_spec("2x40GB").gpus()
    assert select_visible(gpus, None) == gpus
    with pytest.raises(ValueError, match="MY_GPUS='5': '5' matches no GPU; this machine has 0"):
        select_visible(gpus, "5", variable="MY_GPUS")


def test_nvlink_components_are_domains() -> None:
    pairs = {frozenset(p) for p in [(0, 1), (2, 3), (4, 5), (5, 6), (6, 7), (4, 7)]}
    inventory = NvmlInventory(nvml=FakeNvml(count=8, nvlink=pairs), environ={})
    domains = [inventory.domain(g) for g in inventory.gpus()]
    assert domains == ["nvlink-0", "nvlink-0", "nvlink-2", "nvlink-2"] + ["nvlink-4"] * 4


def test_pcie_domains_when_no_nvlink() -> None:
    # two host bridges of 2 GPUs each; across them, the socket interconnect
    ancestor = {frozenset((0, 1)): 20, frozenset((2, 3)): 30}
    nvml = FakeNvml(count=4, nvlink=set(), ancestor=ancestor)
    inventory = NvmlInventory(nvml=nvml, environ={})
    domains = [inventory.domain(g) for g in inventory.gpus()]
    assert domains == ["pcie-0", "pcie-0", "pcie-2", "pcie-2"]


def test_domains_among_visible_gpus_named_by_lowest_index() -> None:
    nvml = FakeNvml(count=4, nvlink={frozenset((0, 1)), frozenset((2, 3))})
    inventory = NvmlInventory(nvml=nvml, environ={"CUDA_VISIBLE_DEVICES": "3,1,2"})
    assert [inventory.domain(g) for g in inventory.gpus()] == ["nvlink-2", "nvlink-1", "nvlink-2"]


# ---------------------------------------------------------------------------- groups


def indices(groups: list[list[GPU]]) -> list[list[int]]:
    return [[g.index for g in group] for group in groups]


def test_groups_are_contiguous_in_index_order() -> None:
    gpus = FakeInventory.from_spec("8x80GiB").gpus()
    assert indices(make_groups(list(reversed(gpus)), 4)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert indices(make_groups(gpus, 3)) == [[0, 1, 2], [3, 4, 5]]
    assert indices(make_groups(gpus, 2, count=2)) == [[0, 1], [2, 3]]
    assert indices(make_groups(gpus, 1)) == [[i] for i in range(8)]


def test_groups_stay_in_their_domain() -> None:
    inventory = FakeInventory.from_spec("8x80GiB/4")
    # 3 does not complete a group of 3 in domain 0, so it is left out
    assert indices(make_groups(inventory.gpus(), 3, domain_of=inventory)) == [[0, 1, 2], [4, 5, 6]]
    visible = [g for g in inventory.gpus() if g.index in (1, 2, 3, 4, 5)]
    assert indices(make_groups(visible, 2, domain_of=inventory.domain)) == [[1, 2], [4, 5]]


def test_group_larger_than_every_domain_crosses_them() -> None:
    inventory = FakeInventory.from_spec("8x80GiB/4")
    assert indices(make_groups(inventory.gpus(), 8, domain_of=inventory)) == [list(range(8))]


def test_too_few_gpus_for_one_group() -> None:
    gpus = FakeInventory.from_spec("3x40GB").gpus()
    with pytest.raises(ValueError, match="a group of 4 needs 4 GPUs; 3 granted: 0,1,2"):
        make_groups(gpus, 4)


def test_too_few_groups_in_domains_names_the_domains() -> None:
    inventory = FakeInventory.from_spec("6x80GiB/3")
    with pytest.raises(ValueError, match=r"3 groups of 2 need 6 GPUs; 6 granted") as info:
        make_groups(inventory.gpus(), 2, count=3, domain_of=inventory)
    assert "only 2 such group(s) fit without crossing an interconnect domain" in str(info.value)
    assert "0,1,2 (0) | 3,4,5 (1)" in str(info.value)


# ---------------------------------------------------------------------------- leases


def test_lease_env_and_owner_record(manager: LeaseManager, gpus: list[GPU]) -> None:
    with manager.acquire([gpus[3], gpus[1]], owner="pytest -k foo") as lease:
        assert lease.cuda_visible_devices == "1,3"
        env = lease.env({"PATH": "/bin"})
        assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["PATH"] == "/bin"
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # NVML indices mean PCI bus order
        record = manager.holder(gpus[1])
        assert record is not None
        assert record["pid"] == os.getpid() and record["owner"] == "pytest -k foo"
        assert record["gpu"] == 1 and record["gpus"] == [1, 3] and "since" in record
        assert manager.holder(gpus[0]) is None
        described = manager.describe_holder(gpus[3])
        assert f"GPU 3 is held by this process (pid {os.getpid()}" in described
    assert lease.released
    assert manager.holder(gpus[1]) is None
    lease.release()  # twice is harmless


def test_in_process_double_acquisition_refused(manager: LeaseManager, gpus: list[GPU]) -> None:
    other = LeaseManager(manager.lock_dir)
    with manager.acquire(gpus[:2]):
        assert manager.try_acquire(gpus[1:3]) is None
        assert other.try_acquire([gpus[0]]) is None
        with pytest.raises(LeaseError, match="this thread already leases them"):
            manager.acquire([gpus[0]], timeout=None)
        # a different thread waits, then times out naming this process as the holder
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                manager.acquire([gpus[1]], timeout=0.05)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=wait)
        thread.start()
        thread.join()
        assert isinstance(errors[0], LeaseTimeout)
        assert "GPU 1 is held by this process" in str(errors[0])
    assert manager.try_acquire(gpus[1:3]) is not None


def test_group_acquisition_is_all_or_nothing(manager: LeaseManager, gpus: list[GPU]) -> None:
    blocker = manager.acquire([gpus[2]])
    assert manager.try_acquire(gpus[:3]) is None
    # none of 0 and 1 stayed held by the failed attempt
    for gpu in gpus[:2]:
        assert manager.holder(gpu) is None
    with manager.acquire(gpus[:2]):
        pass
    blocker.release()
    with manager.acquire(gpus[:3]) as lease:
        assert lease.cuda_visible_devices == "0,1,2"












