"""Request sharding (pytest_disteval.worker.sharding): dp-independent scores, resume, balance.

The slow tests run real lm-eval on the untrained demo model (its scores are not
all 1.0, so they tell layouts apart) in worker subprocesses, one torch thread
each, and compare with a plain ``lm_eval.simple_evaluate(model="hf", ...)``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.store.responses import ResponseStore
from pytest_disteval.worker.sharding import (
    MissingResponses,
    ReplayLM,
    ShardLM,
    assign_shards,
    request_keys,
)

from conftest import DEMO_MODELS, ROOT, SUITES

MODEL = DEMO_MODELS / "tiny-arith-untrained"
MODEL_ARGS = {"pretrained": str(MODEL), "dtype": "float32"}
MODEL_KEY = "k" * 64  # the scheduler's model key; any string serves here
BATCH = 16
LIMIT = 40
TASKS = ("arith_mc", "arith_gen")
FEWSHOTS = (0, 3)
SEED = 1234
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_EVALUATE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
       # 2 cores, several workers at once: one thread each (also faster on this box)
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------- helpers


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(ENV)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p)
    return out


def write_spec(base: Path, name: str, mode: str, responses: Path | None = None,
               shard: tuple[int, int] | None = None, chunk_size: int | None = None) -> Path:
    run_dir = base / name
    run_dir.mkdir(parents=True, exist_ok=True)
    runs = [{"settings": {"num_fewshot": shots, "limit": LIMIT, "fewshot_seed": SEED},
             "entries": [{"task": task, "entry_key": f"{task}-{shots}",
                          "path": str(run_dir / "entries" / f"{task}-{shots}.json")}
                         for task in TASKS]}
            for shots in FEWSHOTS]
    spec: dict[str, Any] = {
        "backend": "hf", "lm_eval_model": "hf", "install_hint": "", "model_args": MODEL_ARGS,
        "batch_size": BATCH, "device": "cpu", "gen_kwargs": None,
        "include_paths": [str(SUITES / "tasks")], "workdir": str(SUITES), "all_local": True,
        "model_key": MODEL_KEY, "runs": runs,
        "error_path": str(run_dir / "error.json"), "meta_path": str(run_dir / "meta.json"),
        "mode": mode,
    }
    if responses is not None:
        spec["responses"] = str(responses)
    if shard is not None:
        spec["shard"] = {"index": shard[0], "count": shard[1]}
    if chunk_size is not None:
        spec["chunk_size"] = chunk_size
    path = run_dir / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def start(spec: Path) -> subprocess.Popen[bytes]:
    with open(spec.parent / "worker.log", "wb") as log:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "pytest_disteval.worker", str(spec)],
                                env=env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_all(procs: list[tuple[Path, subprocess.Popen[bytes]]], timeout: float = 300) -> None:
    """Wait for every process; on a failure, end the others and show its log."""
    failed: tuple[Path, int | None] | None = None
    deadline = time.monotonic() + timeout
    for spec, proc in procs:
        try:
            returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            returncode = None
        if returncode != 0 and failed is None:
            failed = (spec, returncode)
            for _, other in procs:
                if other.poll() is None:
                    other.kill()
                    other.wait()
    if failed is not None:
        log = (failed[0].parent / "worker.log").read_text(errors="replace")
        pytest.fail(f"worker {failed[0]} exited with {failed[1]}:\n{log[-4000:]}")


def entry_scores(spec: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for shots in FEWSHOTS:
        for task in TASKS:
            entry = json.loads((spec.parent / "entries" / f"{task}-{shots}.json").read_text())
            out.setdefault(shots, {})[task] = entry["lm_eval"]["results"][task]
    return out


# A plain lm-eval run, in its own process like the workers (lm-eval imported into the
# pytest process would clash with pytester's module snapshots); its CachingLM
# (use_cache) keeps every response for comparison.
DIRECT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
out, cache, model_args, batch, limit, seed, tasks, fewshots, tasks_dir = json.loads(sys.argv[1])
manager = TaskManager(include_path=tasks_dir, include_defaults=False, metadata=model_args)
scores = {}
for shots in fewshots:
    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, device="cpu", batch_size=batch, tasks=tasks,
        num_fewshot=shots, limit=limit, fewshot_random_seed=seed, task_manager=manager,
        log_samples=False, use_cache=cache)
    scores[shots] = {task: results["results"][task] for task in tasks}
with open(out, "w") as handle:
    json.dump(scores, handle)
"""

# the worker's "score" mode for several specs, one process (imports paid once)
SCORE = ("import sys; from pytest_disteval.worker.main import main; "
         "sys.exit(max([main([spec]) for spec in sys.argv[1:]]))")


def start_direct(base: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    base.mkdir(parents=True, exist_ok=True)
    args = json.dumps([str(base / "direct.json"), str(base / "direct-cache"), MODEL_ARGS, BATCH,
                       LIMIT, SEED, list(TASKS), list(FEWSHOTS), str(SUITES / "tasks")])
    spec = base / "direct.json"
    with open(base / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", DIRECT, args], env=env(), stdout=log,
                                stderr=subprocess.STDOUT, cwd=SUITES)
    return spec, proc


def start_scores(base: Path, specs: list[Path]) -> tuple[Path, subprocess.Popen[bytes]]:
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", SCORE, *map(str, specs)], env=env(),
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return base / "scores", proc


def stored_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(str(path), timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


def all_responses(path: Path) -> dict[tuple[str, str], Any]:
    with sqlite3.connect(str(path)) as db:
        return {(kind, h): json.loads(r) for kind, h, r in
                db.execute("SELECT kind, request_hash, response FROM responses")}


# ----------------------------------------------------------- real evaluations


class KillAfterRows(threading.Thread):
    """SIGKILLs a worker once its store holds ``rows`` responses: killed mid-run."""

    def __init__(self, proc: subprocess.Popen[bytes], store: Path, rows: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.store, self.rows = proc, store, rows
        self.finished_first = False

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while stored_rows(self.store) < self.rows and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.finished_first = True
                return
            time.sleep(0.02)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A direct run, and shard runs for dp = 1, 2, 3 (each into its own store) + scoring.

    Shard 0 of dp=3 first runs alone, committing each response, and is killed after
    a few; it is rerun beside the other two dp=3 shards (the resume test). Worker
    processes cost seconds of imports each: this is the fewest that test it all.
    """
    base = tmp_path_factory.mktemp("sharding")
    stores = {dp: base / f"dp{dp}" / "responses.sqlite" for dp in (1, 2, 3)}
    shards = {dp: [write_spec(base / f"dp{dp}", f"shard{i}", "shard", stores[dp], (i, dp))
                   for i in range(dp)] for dp in (1, 2, 3)}
    scores = {dp: write_spec(base / f"dp{dp}", "score", "score", stores[dp]) for dp in (1, 2, 3)}
    killed_spec = write_spec(base / "dp3", "shard0", "shard", stores[3], (0, 3), chunk_size=1)
    killer = KillAfterRows(start(killed_spec), stores[3], 3)
    killer.start()
    # the direct run, dp=1, and both shards of dp=2 at once (into one store)
    direct = start_direct(base / "direct")
    wait_all([direct, *[(spec, start(spec)) for dp in (1, 2) for spec in shards[dp]]])
    killer.join()
    killed_rows = stored_rows(stores[3])
    # the killed shard rerun beside the other two; dp=1 and dp=2 scored meanwhile
    shards[3][0] = write_spec(base / "dp3", "shard0", "shard", stores[3], (0, 3))
    wait_all([start_scores(base / "score12", [scores[1], scores[2]]),
              *[(spec, start(spec)) for spec in shards[3]]])
    wait_all([start_scores(base / "score3", [scores[3]])])
    reference = {int(k): v for k, v in json.loads(direct[0].read_text()).items()}
    return {"reference": reference, "direct_cache": base / "direct" / "direct-cache_rank0.db",
            "stores": stores, "shards": shards,
            "scores": {dp: entry_scores(spec) for dp, spec in scores.items()},
            "killed_rows": killed_rows, "killed_returncode": killer.proc.returncode,
            "killed_finished_first": killer.finished_first}


@pytest.mark.slow
@pytest.mark.parametrize("dp", [1, 2, 3])
def test_scores_identical_to_direct_lm_eval_for_any_dp(evaluations: dict[str, Any],
                                                       dp: int) -> None:
    scores = evaluations["scores"][dp]
    reference = evaluations["reference"]
    for shots in FEWSHOTS:
        for task in TASKS:
            assert scores[shots][task] == reference[shots][task], (dp, shots, task)
    # not all 1.0: the comparison can tell layouts apart
    assert 0 < reference[3]["arith_mc"]["acc,none"] < 1
    assert reference[3]["arith_mc"]["acc_stderr,none"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("dp", [1, 2, 3])
def test_shards_run_each_request_once_and_store_what_caching_lm_stores(
        evaluations: dict[str, Any], dp: int) -> None:
    reports = [json.loads((spec.parent / f"shard-{i}.json").read_text())
               for i, spec in enumerate(evaluations["shards"][dp])]
    killed = evaluations["killed_rows"] if dp == 3 else 0  # shard 0 of dp=3 resumed
    assert all(r["complete"] for r in reports)
    assert [r["already_stored"] for r in reports] == [killed] + [0] * (dp - 1)
    ours = all_responses(evaluations["stores"][dp])
    assert sum(r["requests_executed"] for r in reports) + killed == len(ours)
    executed = [r["requests_executed"] for r in reports]
    assert min(executed) > 0
    # the phases of each run add up within its eval_s: building, planning, the model
    for run in (run for r in reports for run in r["runs"]):
        kinds = run["kinds"].values()
        phases = [run["build_s"], sum(k["plan_s"] for k in kinds),
                  sum(k["seconds"] for k in kinds)]
        assert all(p > 0 for p in phases) and sum(phases) <= run["eval_s"]
    # lm-eval's own CachingLM (in the direct run) keys by hash_args(kind, args) too
    from sqlitedict import SqliteDict

    with SqliteDict(str(evaluations["direct_cache"]), flag="r") as cache:
        theirs = {h: (list(v) if isinstance(v, tuple) else v) for h, v in cache.items()}
    assert {h for _, h in ours} == set(theirs)
    differ = {h: (v, theirs[h]) for (_, h), v in ours.items() if v != theirs[h]}
    if dp == 1:
        # the same requests in one call: the same batches, bit for bit
        assert not differ
    # other shards batch other requests together; HF's kernels then round a few
    # logprobs differently in float32, as lm-eval itself does for another batch_size
    for mine, direct in differ.values():
        assert isinstance(mine, list) and mine[1] == direct[1]
        assert mine[0] == pytest.approx(direct[0], rel=1e-6)
    assert len(differ) <= len(ours) // 20


@pytest.mark.slow
def test_killed_shard_resumes_with_only_the_missing_requests(evaluations: dict[str, Any]) -> None:
    assert not evaluations["killed_finished_first"], "the worker finished before it was killed"
    assert evaluations["killed_returncode"] == -signal.SIGKILL
    before = evaluations["killed_rows"]
    assert before >= 3
    spec = evaluations["shards"][3][0]
    report = json.loads((spec.parent / "shard-0.json").read_text())
    assert report["complete"]
    # the rows found are exactly the killed run's: other shards never write shard 0's keys
    assert report["already_stored"] == before
    assert before < report["requests_in_shard"], "the worker finished before it was killed"
    assert report["requests_executed"] == report["requests_in_shard"] - report["already_stored"]
    per_kind = [k for run in report["runs"] for k in run["kinds"].values()]
    assert sum(k["executed"] for k in per_kind) == report["requests_executed"]
    assert sum(k["already_stored"] for k in per_kind) == before
    assert evaluations["scores"][3] == evaluations["reference"]


# ------------------------------------------------------------------ balancing


class Req:
    """The one attribute of lm-eval's Instance that sharding reads."""

    def __init__(self, *args: Any) -> None:
        self.args = args


def synthetic(n: int, seed: int = 7) -> tuple[list[Req], dict[str, int]]:
    rng = random.Random(seed)
    reqs = [Req(f"doc {i} " + "x" * rng.randint(1, 400), {"until": ["\n"]}) for i in range(n)]
    costs = {r.args[0]: len(r.args[0]) for r in reqs}
    return reqs, costs


@pytest.mark.parametrize("count", [2, 3, 7, 16])
def test_assign_shards_balances_tokens(count: int) -> None:
    reqs, costs = synthetic(1000)
    shards = assign_shards(reqs, "generate_until", count, lambda r: costs[r.args[0]])
    loads = [0] * count
    for req, shard in zip(reqs, shards, strict=True):
        loads[shard] += costs[req.args[0]]
    ideal = sum(loads) / count
    assert max(loads) <= ideal * 1.01 + 1
    assert max(loads) - min(loads) <= max(costs.values())
    assert set(shards) == set(range(count))


def test_assign_shards_is_deterministic_across_processes_and_hash_seeds() -> None:
    # many equal costs: only the tie-break decides, and it must not be Python's hash()
    code = ("import json; from test_sharding import Req, assign_shards;"
            "reqs = [Req(f'q{i}', {'until': ['x']}) for i in range(300)];"
            "print(json.dumps(assign_shards(reqs, 'generate_until', 4, lambda r: 5)))")
    runs = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parent,
                             env={**env(), "PYTHONHASHSEED": seed,
                                  "PYTHONPATH": os.pathsep.join(  # the module, its conftest
                                      [str(ROOT), str(Path(__file__).parent),
                                       str(Path(__file__).parents[1])])})
        runs.add(out.stdout)
    reqs = [Req(f"q{i}", {"until": ["x"]}) for i in range(300)]
    here = json.dumps(assign_shards(reqs, "generate_until", 4, lambda r: 5))
    assert runs == {here + "\n"}
    assert sorted(json.loads(here).count(i) for i in range(4)) == [75, 75, 75, 75]


def test_assign_shards_keeps_a_context_with_its_continuations() -> None:
    reqs = [Req(f"question {q}=", f" {c}") for q in range(50) for c in range(4)]
    shards = assign_shards(reqs, "loglikelihood", 3, lambda r: len(r.args[0]) + 1)
    by_context: dict[str, set[int]] = {}
    for req, shard in zip(reqs, shards, strict=True):
        by_context.setdefault(req.args[0], set()).add(shard)
    assert all(len(s) == 1 for s in by_context.values())
    assert sorted({s for group in by_context.values() for s in group}) == [0, 1, 2]


def test_assign_shards_generate_cost_counts_max_gen_toks() -> None:
    from pytest_disteval.worker.sharding import token_cost

    cost = token_cost(object(), "generate_until")  # no tokenizer: characters / 4
    assert cost(Req("x" * 40, {"until": ["\n"], "max_gen_toks": 8})) == 10 + 8
    assert cost(Req("x" * 40, {"until": ["\n"]})) == 10 + 256


# ------------------------------------------------------- shard and replay LMs


class FakeLM:
    """Answers by the request's text; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []
        self.world_size = 1

    def loglikelihood(self, requests: list[Req]) -> list[tuple[float, bool]]:
        self.asked.extend(("loglikelihood", r.args) for r in requests)
        return [(-float(len(r.args[0] + r.args[1])), len(r.args[1]) % 2 == 0) for r in requests]

    def generate_until(self, requests: list[Req]) -> list[str]:
        self.asked.extend(("generate_until", r.args) for r in requests)
        return [r.args[0][::-1] for r in requests]

    def loglikelihood_rolling(self, requests: list[Req]) -> list[float]:
        self.asked.extend(("loglikelihood_rolling", r.args) for r in requests)
        return [-0.5 * len(r.args[0]) for r in requests]


def test_shard_lms_cover_every_request_once_and_replay_answers_all(tmp_path: Path) -> None:
    ll = [Req(f"ctx {i}", f" {c}") for i in range(20) for c in "abc"]
    gen = [Req(f"prompt {i}", {"until": ["\n"], "max_gen_toks": 4}) for i in range(25)]
    gen.append(gen[3])  # a duplicate is answered once
    truth = FakeLM()
    want_ll, want_gen = truth.loglikelihood(ll), truth.generate_until(gen)
    with ResponseStore(tmp_path / "r.sqlite") as store:
        fakes = [FakeLM() for _ in range(3)]
        for i, fake in enumerate(fakes):
            shard = ShardLM(fake, store, MODEL_KEY, i, 3)  # type: ignore[arg-type]
            answers = shard.loglikelihood(ll)
            assert any(a == (0.0, False) for a in answers)  # others' placeholders
            shard.generate_until(gen)
        asked = [a for f in fakes for a in f.asked]
        assert len(asked) == len(ll) + 25  # each distinct request once over all shards
        replay = ReplayLM(store, MODEL_KEY)
        assert replay.loglikelihood(ll) == want_ll
        assert replay.generate_until(gen) == want_gen
        # a rerun of any shard finds everything stored
        again = FakeLM()
        ShardLM(again, store, MODEL_KEY, 1, 3).loglikelihood(ll)  # type: ignore[arg-type]
        assert again.asked == []
        # another model key shares nothing
        with pytest.raises(MissingResponses):
            ReplayLM(store, "other-model").loglikelihood(ll)


def test_sampled_repeats_get_distinct_keys() -> None:
    greedy = Req("p", {"until": ["\n"], "do_sample": False})
    sampled = Req("p", {"until": ["\n"], "do_sample": True})
    keys = request_keys("generate_until", [greedy, greedy, sampled, sampled, sampled])
    assert keys[0] == keys[1]
    assert len(set(keys[2:])) == 3 and keys[3] == keys[2] + "#1"


def test_replay_names_what_is_missing(tmp_path: Path) -> None:
    reqs = [Req(f"ctx {i}", " a") for i in range(10)]
    with ResponseStore(tmp_path / "r.sqlite") as store:
        ShardLM(FakeLM(), store, MODEL_KEY, 0, 2).loglikelihood(reqs)  # type: ignore[arg-type]
        stored = stored_rows(tmp_path / "r.sqlite")
        assert 0 < stored < 10
        with pytest.raises(MissingResponses) as info:
            ReplayLM(store, MODEL_KEY).loglikelihood(reqs)
    message = str(info.value)
    assert f"{10 - stored} of 10 distinct loglikelihood responses are missing" in message
    assert f"it holds for this model: loglikelihood {stored}" in message
    assert "r.sqlite" in message and "Run the missing shards" in message


def test_store_round_trips_responses_exactly(tmp_path: Path) -> None:
    values = [(-1.2345678901234567e-05, True), (float("-inf"), False), 0.1 + 0.2, " 42\n", 7]
    with ResponseStore(tmp_path / "r.sqlite", batch_size=2) as store:
        assert store.put_many(MODEL_KEY, "k", [(str(i), v) for i, v in enumerate(values)]) == 5
        assert store.put_many(MODEL_KEY, "k", [("0", "ignored: first answer wins")]) == 0
        got = store.get_many(MODEL_KEY, "k", [str(i) for i in range(5)] + ["absent"])
    assert [got[str(i)] for i in range(5)] == values
    assert "absent" not in got


@pytest.mark.parametrize(("extra", "message"), [
    ({"mode": "replay"}, "worker mode 'replay' is not one of direct, shard, score"),
    ({"mode": "score"}, "worker mode 'score' needs 'responses'"),
    ({"mode": "shard", "responses": "r.sqlite", "shard": {"index": 2, "count": 2}},
     "needs 'shard': {'index': i, 'count': n} with 0 <= i < n"),
])
def test_worker_refuses_a_bad_mode_spec(tmp_path: Path, extra: dict[str, Any],
                                        message: str) -> None:
    from pytest_disteval.worker.main import EXIT_BAD_REQUEST, main

    spec = json.loads(write_spec(tmp_path, "bad", "direct").read_text())
    spec.update(extra)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main([str(path)]) == EXIT_BAD_REQUEST
    assert message in json.loads((tmp_path / "bad" / "error.json").read_text())["message"]
