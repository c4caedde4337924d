"""The Ray executor on a real local Ray cluster whose GPUs are logical (declared).

One cluster for the module (``ray start --head --num-gpus 4``, as a user starts a
head node), pytest sessions in subprocesses pointed at it with ``--ray-address``.
The demo model runs on the CPU inside actors that hold logical GPU ids, so
placement, CUDA_VISIBLE_DEVICES, rescheduling and the scores are all real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, Demo
from helpers import DP_TASKS, model_block, write_suite

RAY_BIN = Path(sys.executable).with_name("ray")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None or not RAY_BIN.exists(),
                               reason="ray is not installed (pip install 'pytest-disteval[ray]')")

TASKS = DP_TASKS
# a CI cluster has no token set up; a real one should (docs/multi-node.md)
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head with 4 logical GPUs and 4 CPUs; its address."""
    if importlib.util.find_spec("ray") is None or not RAY_BIN.exists():
        pytest.skip("ray is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    env = {**os.environ, **RAY_ENV}
    with log.open("wb") as out:
        # --block: the head's processes stay children of this one, in its process group,
        # so the fixture ends exactly them (never `ray stop`, which ends every Ray here)
        head = subprocess.Popen(
            [str(RAY_BIN), "start", "--head", "--block", f"--port={port}", "--num-gpus=4",
             "--num-cpus=4", "--include-dashboard=false", "--object-store-memory=100000000",
             "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass


def _suite_text(demo: Demo, extra: str = "") -> str:
    # the untrained model: scores away from 0 and 1, so a wrong shard would show
    return ("disteval: 1\ninclude: [tasks]\nmodels:\n"
            + model_block("weak", demo.weak, extra="timeout: 5m\n" + extra) + TASKS)


def _suite(project: pytest.Pytester, demo: Demo, extra: str = "") -> None:
    write_suite(project, "dp", _suite_text(demo, extra))


@pytest.fixture(scope="module")
def local_scores(tmp_path_factory: pytest.TempPathFactory, demo: Demo) -> dict[str, object]:
    """The suite's scores with the local executor, dp=1: what every Ray run must match."""
    root = tmp_path_factory.mktemp("local")
    for name in ("tasks", "data"):
        shutil.copytree(ROOT / "suites" / name, root / "suites" / name)
    (root / "suites" / "dp.yaml").write_text(_suite_text(demo), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suites",
                          f"--disteval-dir={root / 'base'}", "--gpus", "0"],
                         cwd=root, env=_env(), capture_output=True, text=True)
    assert "2 passed" in run.stdout, run.stdout[-3000:]
    scores = _results(root / "base")
    assert 0 < scores["arith_mc"]["acc,none"] < 1  # type: ignore[index]
    return scores


def _command(base: Path, address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suites",
            f"--disteval-dir={base}", "--disteval-executor", "ray", "--ray-address", address,
            *args]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **RAY_ENV, "PYTHONPATH": path, **extra}


def _records(base: Path, event: str) -> list[dict[str, object]]:
    lines = (base / "workers.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _results(base: Path) -> dict[str, object]:
    data = json.loads((base / "results" / "suites" / "dp" / "weak.json").read_text())
    return {task: data["results"][task] for task in ("arith_mc", "arith_gen")}


def _shard_records(base: Path) -> dict[int, dict[str, object]]:
    records = {}
    for path in base.glob("runs/*/shard-*.json"):
        record = json.loads(path.read_text())
        records[int(record["shard"]["index"])] = record
    return records


@needs_ray
@pytest.mark.slow
def test_actors_get_disjoint_gpus_and_the_scores_of_a_local_dp1_run(
        project: pytest.Pytester, demo: Demo, cluster: str,
        local_scores: dict[str, object]) -> None:
    # NVML budgets: each actor samples the (logical) GPUs Ray gave it, where NVML is absent
    _suite(project, demo, "budgets:\n  gpu_memory: 8GiB\n  gpu_util: 10%\n")
    plan = subprocess.run(_command(project.path / "plan", cluster, "--tp", "2",
                                   "--disteval-plan"),
                          cwd=project.path, env=_env(), capture_output=True, text=True)
    assert "executor: ray, address 127.0.0.1:" in plan.stdout, plan.stdout + plan.stderr
    assert "1 node(s), 4 GPU(s)" in plan.stdout
    assert "tp=2 pp=1 dp=2" in plan.stdout
    assert plan.stdout.count("ray actor ") == 2
    assert "ray actor 1: num_gpus=2 num_cpus=1; Ray places it on a node with 2 free" in plan.stdout

    base = project.path / "ray"
    run = subprocess.run(_command(base, cluster, "--tp", "2", "-rs"), cwd=project.path,
                         env=_env(), capture_output=True, text=True)
    assert "2 passed, 2 skipped" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    actors = _records(base, "actor")
    assert len(actors) == 2 and all(a["num_gpus"] == 2 for a in actors)
    ids = [list(a["gpu_ids"]) for a in actors]  # type: ignore[call-overload]
    assert all(len(i) == 2 for i in ids)
    assert sorted(ids[0] + ids[1]) == ["0", "1", "2", "3"]  # disjoint, all of them
    shards = _shard_records(base)
    assert sorted(shards) == [0, 1]
    for record in shards.values():
        ray = record["ray"]
        assert isinstance(ray, dict)
        # what the worker saw is what Ray granted its actor
        assert record["cuda_visible_devices"] == ",".join(ray["gpu_ids"])
        assert record["complete"] and record["already_stored"] == 0
    # scoring ran here, on the driver, once (it starts beside the shards and waits for them)
    assert [r["mode"] for r in _records(base, "start")].count("score") == 1

    # each actor sampled its GPUs beside its worker; the driver wrote the timelines where
    # the local sampler puts them. Without NVML here they carry the sampler's reason
    (node_ip,) = {str(a["node_ip"]) for a in actors}
    sampled = []
    for index in (0, 1):
        (path,) = base.glob(f"runs/*/gpu-weak-*-shard{index}.json")
        timeline = json.loads(path.read_text())
        assert timeline["t"] == [] and timeline["ray"]["node_ip"] == node_ip
        assert timeline["ray"]["nvml_index"] is None  # no NVML: nothing was mapped
        assert timeline["ray"]["cuda_visible_devices"] == shards[index]["cuda_visible_devices"]
        assert timeline["unavailable"].startswith("NVML unavailable (")
        assert timeline["unavailable"].endswith(f") on Ray node {node_ip}")
        sampled += list(timeline["gpus"])
    assert sorted(sampled) == ["0", "1", "2", "3"]  # the GPUs Ray gave the actors
    reason = timeline["unavailable"]
    record = json.loads((base / "results" / "suites" / "dp" / "weak.json").read_text())
    job = record["config"]["disteval"]["job"]
    assert job["gpu"] is None and job["gpu_unavailable"] == reason
    # the NVML budgets are skipped with that reason, as beside a local worker
    assert run.stdout.count(f": {reason}") == 2, run.stdout[-3000:]
    for line in (11, 12):  # the budgets' lines in suites/dp.yaml
        assert f"SKIPPED [1] suites/dp.yaml:{line}: {reason}" in run.stdout, run.stdout[-3000:]

    assert _results(base) == local_scores


@needs_ray
@pytest.mark.slow
def test_an_actor_killed_mid_shard_is_replaced_and_nothing_stored_is_redone(
        project: pytest.Pytester, demo: Demo, cluster: str,
        local_scores: dict[str, object]) -> None:
    _suite(project, demo)
    base = project.path / "killed"
    responses = base / "store" / "responses"
    # shard 0 slow (0.25 s per call of 2 requests) so the kill lands mid-shard
    proc = subprocess.Popen(_command(base, cluster, "--dp", "2"), cwd=project.path,
                            env=_env(DISTEVAL_FAULT="shard0:slow", DISTEVAL_CHUNK_SIZE="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        actor = None
        while time.monotonic() < deadline and proc.poll() is None:
            actor = next(base.glob("runs/*/actor-*shard0-actor0.json"), None)
            shard1 = next(base.glob("runs/*/shard-1.json"), None)
            stores = list(responses.glob("*.sqlite"))
            if actor is not None and shard1 is not None and stores:
                # shard 1 is done; anything beyond its rows was streamed by shard 0
                done = json.loads(shard1.read_text())["requests_executed"]
                if _count(stores[0]) >= done + 4:
                    break
            time.sleep(0.2)
        assert actor is not None and proc.poll() is None, "shard 0 never got going"
        assert not list(base.glob("runs/*/shard-0.json")), "shard 0 finished before the kill"
        placed = json.loads(actor.read_text())
        os.kill(int(placed["pid"]), signal.SIGKILL)  # the actor dies, as on a lost node
        output = proc.communicate(timeout=300)[0].decode()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert placed["dir"] not in ps, "the killed actor's worker outlived it"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "2 passed" in output, output[-4000:]
    lost = _records(base, "actor_lost")
    assert [str(r["actor"]) for r in lost] == [str(actor.stem).removeprefix("actor-")]
    replaced = [a for a in _records(base, "actor") if a["attempt"] == 1]
    assert len(replaced) == 1 and "shard0" in str(replaced[0]["actor"])
    shard0 = _shard_records(base)[0]
    ray = shard0["ray"]
    assert isinstance(ray, dict)
    streamed = ray["lost_actors"][0]["streamed"]
    assert streamed > 0
    # what the lost actor streamed was stored, and the new actor did not run it again
    assert shard0["already_stored"] == streamed
    executed, in_shard = shard0["requests_executed"], shard0["requests_in_shard"]
    assert executed == in_shard - streamed  # type: ignore[operator]
    log = next((base / "logs").glob("*shard0*.log")).read_text()
    assert "lost (ActorDiedError" in log and "responses it streamed are kept" in log
    assert _results(base) == local_scores


@needs_ray
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # Ray's own deprecation notes, in this process
def test_an_actor_samples_the_gpus_ray_gave_it_over_nvml(
        cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-sample path through a Ray actor; NVML is the fake with pynvml's interface."""
    import ray
    from ray import cloudpickle

    from pytest_disteval.executors.ray_actor import GroupActor
    from pytest_disteval.worker.spec import WorkerSpec

    import fakenvml

    # the actor's node has no tests/ on its path: the fake travels by value
    cloudpickle.register_pickle_by_value(fakenvml)
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    before = dict(os.environ)
    ray.init(address=cluster, namespace="disteval-test", log_to_driver=False,
             runtime_env={"py_modules": [str(ROOT / "pytest_disteval")]})
    try:
        # a first actor takes a GPU, so the sampled one does not simply get GPUs 0 and 1
        blocker = ray.remote(GroupActor).options(num_gpus=1, num_cpus=1).remote()
        taken = ray.get(blocker.where.remote(), timeout=120)["gpu_ids"]
        actor = ray.remote(GroupActor).options(num_gpus=2, num_cpus=1).remote(
            nvml=fakenvml.FakeNvml({i: [10 * (i + 1)] for i in range(4)}))
        where = ray.get(actor.where.remote(), timeout=120)
        assert not set(taken) & set(where["gpu_ids"])
        spec = WorkerSpec(Path("/x/error.json"), Path("/x/meta.json"), model_key="m")
        stream = actor.run.options(num_returns="streaming").remote(
            ["python", "-c", "import time; time.sleep(1.0)", "SPEC"], spec, {}, 60.0, [],
            sample_gpus=True)
        done = [ray.get(ref) for ref in stream][-1]
        ray.kill(actor)
        ray.kill(blocker)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(fakenvml)
        # ray.init leaves variables here (PYTHONBREAKPOINT, to its debugger): later tests'
        # subprocesses must not inherit them
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)
    gpu = done["gpu"]
    assert done["returncode"] == 0 and gpu["unavailable"] is None
    # Ray's CUDA_VISIBLE_DEVICES, read as NVML indices: each GPU's own samples
    assert gpu["cuda_visible_devices"] == where["cuda_visible_devices"]
    assert sorted(gpu["gpus"]) == sorted(where["gpu_ids"]) and len(gpu["t"]) >= 2
    for index in where["gpu_ids"]:
        assert set(gpu["gpus"][index]["util_pct"]) == {10 * (int(index) + 1)}


def _count(store: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_the_ray_executor_without_ray_says_how_to_install_it(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without it
    result = pytester.runpytest("--disteval-executor", "ray")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # (no fnmatch: [ray] would be a character class there)
    assert ("ERROR: --disteval-executor: the ray executor needs Ray, which is not installed; "
            "install it with: pip install 'pytest-disteval[ray]'") in result.stderr.lines
    monkeypatch.setenv("DISTEVAL_EXECUTOR", "ray")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*environment variable DISTEVAL_EXECUTOR: the ray executor "
                                 "needs Ray*"])


def test_executor_values_are_checked(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--disteval-executor", "slurm")
    result.stderr.fnmatch_lines(["*--disteval-executor: 'slurm' is not valid: one of local, ray"])
    pytester.makeini("[pytest]\ndisteval_executor = k8s\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*ini option 'disteval_executor': 'k8s' is not valid*"])


@needs_ray
def test_an_unreachable_cluster_fails_the_items_saying_where(
        project: pytest.Pytester, demo: Demo) -> None:
    _suite(project, demo)
    port = _free_port()  # nobody listens there
    result = project.runpytest("suites", f"--disteval-dir={project.path / 'base'}",
                               "--disteval-executor", "ray", "--ray-address",
                               f"127.0.0.1:{port}")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([f"*cannot lay out model 'weak': cannot connect to the Ray "
                                 f"cluster at '127.0.0.1:{port}' (from --ray-address or "
                                 f"RAY_ADDRESS): *; is `ray start --head --port={port}` "
                                 "running on 127.0.0.1?"])
    result = project.runpytest("--disteval-executor", "ray", "--ray-address", "headnode")
    result.stderr.fnmatch_lines(["*--ray-address: 'headnode' is not valid: auto, host:port*"])


@needs_ray
def test_fake_gpus_and_ray_do_not_mix(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--disteval-executor", "ray", "--disteval-fake-gpus", "4x80GiB")
    result.stderr.fnmatch_lines(["*--disteval-fake-gpus cannot be combined with "
                                 "--disteval-executor 'ray': the GPUs are the Ray cluster's*"])


def test_the_sbatch_and_gpu_scripts_are_valid_bash() -> None:
    script = ROOT / "examples" / "slurm" / "disteval.sbatch"
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(script)], check=True)
    text = script.read_text()
    # the pieces docs/multi-node.md describes
    for piece in ("#SBATCH --nodes", "ray start --head", "ray start --address",
                  "--disteval-executor ray", "--ray-address"):
        assert piece in text
    subprocess.run([bash, "-n", str(ROOT / "examples" / "ray" / "gpu-check.sh")], check=True)
