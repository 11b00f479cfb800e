"""Loads every export format with Hugging Face `datasets`, as a data team would.

    python tests/datasets_load.py DIR

DIR holds <format>.jsonl for each format and expected.json:
{"<format>": {"rows": N, "columns": [...]}}. Each file must load with the
`json` builder into exactly those columns and that many rows; anything else
exits non-zero. Run by tests/api/dataset.rs; .ci/run installs `datasets`.
"""

import json
import sys
from pathlib import Path

import datasets


def main(folder: Path) -> int:
    expected = json.loads((folder / "expected.json").read_text())
    failures = []
    for name, want in sorted(expected.items()):
        path = folder / f"{name}.jsonl"
        loaded = datasets.load_dataset("json", data_files=str(path), split="train")
        columns = sorted(loaded.column_names)
        if columns != sorted(want["columns"]):
            failures.append(f"{name}: columns {columns}, expected {sorted(want['columns'])}")
        if loaded.num_rows != want["rows"]:
            failures.append(f"{name}: {loaded.num_rows} rows, expected {want['rows']}")
        if "label" in loaded.features and loaded.features["label"].dtype != "bool":
            failures.append(f"{name}: label is {loaded.features['label'].dtype}, not bool")
        print(f"loaded {name}: {loaded.num_rows} rows, columns {columns}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
