"""lm-eval's own built-in task YAMLs on small local data in their datasets' schemas.

Each local task ``include``s the built-in YAML by absolute path (the install path differs
per machine, so it is written at test time) and points ``dataset_path`` at local JSONL
files, so the real prompts, preprocessing, filters and metrics run offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_EVAL = ROOT / "tests" / "data" / "code_eval"


def builtin_tasks() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.submodule_search_locations, "lm-eval is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


# the same arithmetic the demo model learned, in each dataset's own fields
GSM8K = [
    {"question": "12+30=", "answer": "12+30=42\n#### 42"},
    {"question": "7+5=", "answer": "7+5=12\n#### 12"},
    {"question": "21+4=", "answer": "21+4=25\n#### 25"},
    {"question": "3+3=", "answer": "3+3=6\n#### 6"},
]
# five: gsm8k.yaml's num_fewshot
GSM8K_TRAIN = [{"question": f"{a}+{b}=", "answer": f"{a}+{b}={a + b}\n#### {a + b}"}
               for a, b in ((1, 2), (10, 10), (4, 9), (30, 3), (8, 0))]
MMLU_TEST = [
    {"question": "1+1=", "subject": "abstract_algebra", "choices": ["2", "3", "4", "5"],
     "answer": 0},
    {"question": "2+2=", "subject": "abstract_algebra", "choices": ["3", "4", "5", "6"],
     "answer": 1},
    {"question": "3+3=", "subject": "abstract_algebra", "choices": ["4", "5", "6", "7"],
     "answer": 2},
    {"question": "4+4=", "subject": "abstract_algebra", "choices": ["5", "6", "7", "8"],
     "answer": 3},
]
MMLU_DEV = [
    {"question": "5+5=", "subject": "abstract_algebra", "choices": ["10", "11", "12", "13"],
     "answer": 0},
]
# hellaswag's preprocessing drops " [title]" and bracketed spans and capitalises ctx_b
HELLASWAG = [
    {"ind": 1, "activity_label": "Sums", "ctx_a": "12+30 [title]", "ctx_b": "=",
     "ctx": "12+30 [title] =", "endings": [" 42", " 41 [step]", " 52", " 32"],
     "source_id": "a", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 2, "activity_label": "Sums", "ctx_a": "7+5", "ctx_b": "=",
     "ctx": "7+5 =", "endings": [" 13", " 12", " 2", " 22"],
     "source_id": "b", "split": "val", "split_type": "indomain", "label": "1"},
    {"ind": 3, "activity_label": "Sums", "ctx_a": "40+9 [header]", "ctx_b": "=",
     "ctx": "40+9 [header] =", "endings": [" 48", " 59", " 49", " 39"],
     "source_id": "c", "split": "val", "split_type": "indomain", "label": "2"},
]
HELLASWAG_TRAIN = [
    {"ind": 9, "activity_label": "Sums", "ctx_a": "1+1", "ctx_b": "=", "ctx": "1+1 =",
     "endings": [" 2", " 3", " 11", " 12"], "source_id": "d", "split": "train",
     "split_type": "indomain", "label": "0"},
]
# humaneval-shaped: each prompt ends in a comment, so whatever the model writes after it
# (a few tokens) is code only up to its first newline; the tests decide pass or fail
HUMANEVAL = [
    {"task_id": "Arith/0", "prompt": "def add(a, b):\n    return a + b  # 2+3=",
     "canonical_solution": "", "test": "def check(f):\n    assert f(2, 3) == 5\n",
     "entry_point": "add"},
    {"task_id": "Arith/1", "prompt": "def sub(a, b):\n    return a + b  # 9+1=",
     "canonical_solution": "", "test": "def check(f):\n    assert f(9, 1) == 8\n",
     "entry_point": "sub"},
    {"task_id": "Arith/2", "prompt": "def two():\n    return 2  # 1+1=",
     "canonical_solution": "", "test": "def check(f):\n    assert f() == 2\n",
     "entry_point": "two"},
]


def _jsonl(path: Path, docs: list[dict[str, object]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path.name


def write_real_tasks(suites: Path) -> dict[str, str]:
    """Write the local tasks under ``suites/real_tasks`` and their data under ``suites/data``
    (paths relative to ``suites``, lm-eval's working directory); task name -> built-in YAML."""
    builtin = builtin_tasks()
    tasks = suites / "real_tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    data = suites / "data"
    _jsonl(data / "gsm8k_test.jsonl", GSM8K)
    _jsonl(data / "gsm8k_train.jsonl", GSM8K_TRAIN)
    _jsonl(data / "mmlu_test.jsonl", MMLU_TEST)
    _jsonl(data / "mmlu_dev.jsonl", MMLU_DEV)
    _jsonl(data / "hellaswag_val.jsonl", HELLASWAG)
    _jsonl(data / "hellaswag_train.jsonl", HELLASWAG_TRAIN)
    _jsonl(data / "humaneval_test.jsonl", HUMANEVAL)
    included = {
        "gsm8k_local": (builtin / "gsm8k" / "gsm8k.yaml",
                        "{train: data/gsm8k_train.jsonl, test: data/gsm8k_test.jsonl}"),
        "mmlu_abstract_algebra_local": (builtin / "mmlu" / "default" /
                                        "mmlu_abstract_algebra.yaml",
                                        "{dev: data/mmlu_dev.jsonl, test: data/mmlu_test.jsonl}"),
        "hellaswag_local": (builtin / "hellaswag" / "hellaswag.yaml",
                            "{train: data/hellaswag_train.jsonl, "
                            "validation: data/hellaswag_val.jsonl}"),
        "humaneval_local": (builtin / "humaneval" / "humaneval.yaml",
                            "{test: data/humaneval_test.jsonl}"),
    }
    for name, (yaml_path, files) in included.items():
        assert yaml_path.is_file(), yaml_path
        # the built-in's own keys stay; only the task's name and its dataset change
        (tasks / f"{name}.yaml").write_text(
            f"include: {yaml_path}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files: {files}\n", encoding="utf-8")
    # HF code_eval, found by evaluate.load("code_eval") in the working directory: offline
    shutil.copytree(CODE_EVAL, suites / "code_eval", dirs_exist_ok=True)
    return {name: str(path) for name, (path, _files) in included.items()}
