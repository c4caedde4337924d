"""The gpu_group fixture: leased groups for users' own tests, never shared at once."""

from __future__ import annotations

import json

import pytest

USER_TESTS = """
import json, os, time
import pytest

@pytest.mark.parametrize("n", range(4))
@pytest.mark.gpu_group(size=2)
def test_holds_a_group(gpu_group, n, tmp_path_factory):
    start = time.monotonic()
    env = gpu_group.env({})
    time.sleep(0.3)
    record = {"gpus": gpu_group.indices, "env": env["CUDA_VISIBLE_DEVICES"],
              "start": start, "end": time.monotonic()}
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps(record) + "\\n")

@pytest.mark.parametrize("gpu_group", [4], indirect=True)
def test_size_by_argument(gpu_group):
    assert gpu_group.indices == [0, 1, 2, 3]
"""


def test_concurrent_tests_never_share_a_gpu(pytester: pytest.Pytester,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    record = pytester.path / "record.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-n", "3", "-p", "xdist",
                                           "--disteval-fake-gpus", "4x80GiB")
    result.assert_outcomes(passed=5)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["env"] == ",".join(map(str, row["gpus"])) and len(row["gpus"]) == 2
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]
            assert not (overlap and set(a["gpus"]) & set(b["gpus"])), (a, b)


def test_skips_without_gpus(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(gpu_group):\n    pass\n")
    result = pytester.runpytest("--gpus", "0", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*gpu_group needs 1 GPU(s); no GPU (CPU run)*"])
