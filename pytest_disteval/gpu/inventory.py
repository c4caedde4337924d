"""GPU inventory (NVML or fake), groups kept on one interconnect domain, and leases.

Imported at pytest collection time, so only the standard library is imported here;
pynvml is imported when an NvmlInventory is built.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pytest_disteval.units import parse_size

VISIBLE_VAR = "CUDA_VISIBLE_DEVICES"


class NoGPUError(RuntimeError):
    """NVML is unusable here (no driver, no library): the caller runs on CPU or says so."""






@dataclass(frozen=True)
class GPU:
    index: int  # NVML (physical, PCI bus order) index, whatever CUDA_VISIBLE_DEVICES says
    uuid: str
    name: str
    total_memory: int  # bytes
    free_memory: int  # bytes, when the inventory was read


@runtime_checkable
class Inventory(Protocol):
    @property
    def source(self) -> str:  # "nvml" or "fake"
        ...

    def gpus(self) -> list[GPU]: ...

    def domain(self, gpu: GPU) -> str | None: ...


DomainOf = Callable[[GPU], "str | None"]


def _indices(gpus: Sequence[GPU]) -> str:
    return ",".join(str(g.index) for g in gpus) or "none"


# ---------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


def select_visible(
    gpus: Sequence[GPU], value: str | None, variable: str = VISIBLE_VAR
) -> list[GPU]:
    """The GPUs that `value` (a CUDA_VISIBLE_DEVICES string) lets CUDA see, in its order.

    Entries are NVML indices (CUDA's ordinals match them under CUDA_DEVICE_ORDER=PCI_BUS_ID,
    and on machines of identical GPUs) or UUIDs, with or without "GPU-", possibly an
    unambiguous prefix as CUDA accepts. Unlike CUDA, which silently drops everything
    after a bad entry, a bad entry is an error here.
    """
    if value is None:
        return list(gpus)
    if value.strip() == "":
        return []  # CUDA: set but empty hides every GPU
    chosen: list[GPU] = []
    for raw in value.split(","):
        entry = raw.strip()
        where = f"{variable}={value!r}"
        if re.fullmatch(r"[+-]?\d+", entry):
            if int(entry) < 0:
                break  # CUDA stops at a negative ordinal: the "=-1 hides all GPUs" idiom
            matches = [g for g in gpus if g.index == int(entry)]
        elif entry.lower().startswith("mig-"):
            raise ValueError(f"{where}: MIG device {entry!r} is not supported; name whole GPUs")
        elif entry:
            key = entry.lower() if entry.lower().startswith("gpu-") else "gpu-" + entry.lower()
            matches = [g for g in gpus if g.uuid.lower().startswith(key)]
        else:
            raise ValueError(f"{where}: empty entry; expected indices or UUIDs, e.g. '0,1'")
        if not matches:
            known = ", ".join(f"{g.index} ({g.uuid})" for g in gpus) or "no GPUs"
            raise ValueError(f"{where}: {entry!r} matches no GPU; this machine has {known}")
        if len(matches) > 1:
            raise ValueError(
                f"{where}: {entry!r} is a prefix of several UUIDs "
                f"({', '.join(g.uuid for g in matches)}); give more of it"
            )
        if matches[0] in chosen:
            raise ValueError(f"{where}: GPU {matches[0].index} is listed twice")
        chosen.append(matches[0])
    return chosen


# ---------------------------------------------------------------------------- inventories


def _text(value: str | bytes) -> str:
    # pynvml before 11.5 returns bytes, later ones str
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlInventory:
    """The GPUs NVML reports, restricted by CUDA_VISIBLE_DEVICES, read once (see refresh).

    `nvml` replaces the pynvml module (tests pass a fake); `environ` replaces os.environ.
    """

    source = "nvml"

    def __init__(self, nvml: Any = None, environ: Mapping[str, str] | None = None) -> None:
        self._nvml = nvml
        self._environ = os.environ if environ is None else environ
        self._gpus: list[GPU] = []
        self._domains: dict[str, str | None] = {}
        self.refresh()

    def gpus(self) -> list[GPU]:
        return list(self._gpus)

    def domain(self, gpu: GPU) -> str | None:
        return self._domains.get(gpu.uuid)

    def refresh(self) -> None:
        """Read GPUs, memory and topology again (free memory changes as others run)."""
        nvml = self._nvml if self._nvml is not None else _import_pynvml()
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise NoGPUError(
                f"NVML could not initialise ({type(exc).__name__}: {exc}); "
                "is an NVIDIA driver installed on this machine?"
            ) from exc
        try:
            handles: dict[str, Any] = {}
            every: list[GPU] = []
            for i in range(nvml.nvmlDeviceGetCount()):
                try:
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    gpu = GPU(
                        index=i,
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        total_memory=int(memory.total),
                        free_memory=int(memory.free),
                    )
                except Exception as exc:
                    raise RuntimeError(f"NVML failed to read GPU {i}: {exc}") from exc
                handles[gpu.uuid] = handle
                every.append(gpu)
            visible = select_visible(every, self._environ.get(VISIBLE_VAR))
            self._gpus = visible
            self._domains = _nvml_domains(nvml, [(g, handles[g.uuid]) for g in visible])
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass  # nothing to do about a failing shutdown, and the data is read


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise NoGPUError(f"pynvml is not importable ({exc}); install nvidia-ml-py") from exc
    return pynvml


def _nvml_domains(nvml: Any, gpus: list[tuple[GPU, Any]]) -> dict[str, str | None]:
    """Interconnect domain of each GPU: the connected components of "close" pairs.

    Close means NVLink peer-to-peer (directly or through NVSwitch, so an HGX board is one
    domain and NVLink-bridged pairs are pairs). Where no pair has NVLink, close means a
    PCIe common ancestor no further than the host bridge (NVML_TOPOLOGY_HOSTBRIDGE):
    crossing host bridges or sockets is where tensor-parallel all-reduces slow most. Where NVML
    answers neither question (VMs, old drivers), every domain is None (unknown).
    """
    gpus = sorted(gpus, key=lambda pair: pair[0].index)
    n = len(gpus)
    unknown: dict[str, str | None] = {g.uuid: None for g, _ in gpus}
    if n < 2:
        return unknown
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def linked(test: Callable[[Any, Any], bool]) -> list[tuple[int, int]] | None:
        found, answered = [], False
        for i, j in pairs:
            try:
                close = test(gpus[i][1], gpus[j][1])
            except Exception:
                continue  # NVMLError_NotSupported and friends: this pair is not known
            answered = True
            if close:
                found.append((i, j))
        return found if answered else None

    kind, edges = "nvlink", None
    if hasattr(nvml, "nvmlDeviceGetP2PStatus") and hasattr(nvml, "NVML_P2P_CAPS_INDEX_NVLINK"):
        edges = linked(
            lambda a, b: (
                nvml.nvmlDeviceGetP2PStatus(a, b, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
                == nvml.NVML_P2P_STATUS_OK
            )
        )
    if not edges:
        kind, edges = "pcie", None
        if hasattr(nvml, "nvmlDeviceGetTopologyCommonAncestor"):
            edges = linked(
                lambda a, b: (
                    nvml.nvmlDeviceGetTopologyCommonAncestor(a, b) <= nvml.NVML_TOPOLOGY_HOSTBRIDGE
                )
            )
    if edges is None:
        return unknown
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        parent[max(root(i), root(j))] = min(root(i), root(j))
    # name a domain after its lowest-indexed GPU so the id is stable and readable
    return {g.uuid: f"{kind}-{gpus[root(i)][0].index}" for i, (g, _) in enumerate(gpus)}


class FakeInventory:
    """A made-up machine for tests and --dry-run planning: see from_spec."""

    source = "fake"

    def __init__(self, gpus: Sequence[GPU], domains: Mapping[int, str] | None = None) -> None:
        self._gpus = list(gpus)
        self._domains = dict(domains or {})

    def gpus(self) -> list[GPU]:
        return list(self._gpus)

    def domain(self, gpu: GPU) -> str | None:
        return self._domains.get(gpu.index)

    SPEC_HELP = (
        "COUNTxSIZE[:NAME][/DOMAIN] or SIZE[:NAME],SIZE[:NAME],...[/DOMAIN], e.g. '8x80GiB', "
        "'4x40GB:A100', '8x80GiB:H100/4' (NVLink domains of 4 GPUs), '80GiB,80GiB,40GiB'"
    )

    @classmethod
    def from_spec(cls, spec: str) -> FakeInventory:
        """'8x80GiB', '4x40GB:A100', '8x80GiB:H100/4', '80GiB,2x40GiB', or '0' for none."""
        text = spec.strip()
        if text.lower() in ("0", "none"):
            return cls([])
        body, per_domain = text, None
        head, slash, tail = text.rpartition("/")
        if slash:
            if not re.fullmatch(r"\s*\d+\s*", tail) or int(tail) < 1:
                raise cls._bad(spec, f"domain size {tail.strip()!r} is not a positive integer")
            body, per_domain = head, int(tail)
        gpus: list[GPU] = []
        for term in body.split(","):
            match = re.fullmatch(r"\s*(?:(\d+)\s*[x×]\s*)?([^:]*?)\s*(?::\s*(.*?))?\s*", term, re.I)
            if match is None or not match.group(2):
                raise cls._bad(spec, f"cannot read {term.strip()!r}")
            count = int(match.group(1) or 1)
            if count < 1:
                raise cls._bad(spec, f"{term.strip()!r} has no GPUs")
            try:
                size = parse_size(match.group(2))
            except ValueError as exc:
                raise cls._bad(spec, str(exc)) from None
            name = match.group(3) or "FakeGPU"
            for _ in range(count):
                i = len(gpus)
                uuid = f"GPU-fa4e0000-0000-0000-0000-{i:012d}"
                gpus.append(GPU(i, uuid, name, total_memory=size, free_memory=size))
        domains = {g.index: str(g.index // per_domain) for g in gpus} if per_domain else None
        return cls(gpus, domains)

    @classmethod
    def _bad(cls, spec: str, why: str) -> ValueError:
        return ValueError(f"invalid fake GPU spec {spec!r}: {why}. Valid: {cls.SPEC_HELP}")


# ---------------------------------------------------------------------------- groups


def make_groups(
    gpus: Sequence[GPU],
    size: int,
    count: int | None = None,
    domain_of: DomainOf | Inventory | None = None,
) -> list[list[GPU]]:
    """Groups of `size` GPUs, contiguous in index order, each inside one domain.

    GPUs that cannot complete a group in their domain are left out. A group larger than
    every domain must cross a boundary anyway, so then domains are ignored. `count=None`
    gives as many groups as fit; otherwise exactly `count` or a ValueError.
    """
    if size < 1:
        raise ValueError(f"a group needs at least 1 GPU, not {size}")
    if count is not None and count < 1:
        raise ValueError(f"the number of groups must be at least 1, not {count}")
    lookup = _domain_lookup(domain_of)
    ordered = sorted(gpus, key=lambda g: g.index)
    by_domain: dict[str | None, list[GPU]] = {}
    for gpu in ordered:
        by_domain.setdefault(lookup(gpu), []).append(gpu)
    if by_domain and size > max(len(members) for members in by_domain.values()):
        by_domain = {None: ordered}
    groups = [
        members[start : start + size]
        for members in by_domain.values()
        for start in range(0, len(members) - size + 1, size)
    ]
    groups.sort(key=lambda group: group[0].index)
    wanted = 1 if count is None else count
    if len(groups) < wanted:
        need = f"a group of {size} needs" if wanted == 1 else f"{wanted} groups of {size} need"
        message = f"{need} {wanted * size} GPUs; {len(ordered)} granted: {_indices(ordered)}"
        if len(ordered) >= wanted * size:
            domains = " | ".join(
                f"{_indices(members)} ({name})" for name, members in by_domain.items()
            )
            message += (
                f", but only {len(groups)} such group(s) fit without crossing an interconnect "
                f"domain: {domains}"
            )
        raise ValueError(message)
    return groups if count is None else groups[:count]


def _domain_lookup(domain_of: DomainOf | Inventory | None) -> DomainOf:
    if domain_of is None:
        return lambda gpu: None
    if isinstance(domain_of, Inventory):
        return domain_of.domain
    return domain_of

















