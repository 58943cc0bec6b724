"""Loading rows through `datasets`: a Hub id, or local json/jsonl/csv/parquet files."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, line (or row) and field."""


class Source(str):
    """Where rows came from (a file path or ``hub-id[split]``), and how to point at one of them:
    ``line N`` (1-based, as an editor shows it) in jsonl and csv files, ``row N`` (0-based, as
    ``dataset[N]``) in json arrays, parquet files and Hub datasets."""

    lines: list[int] | None = None  # the file line each row starts on, when the format has lines

    def row(self, index: int) -> str:
        if self.lines is not None and index < len(self.lines):
            return f"line {self.lines[index]}"
        return f"row {index}"


def _source(label: str, lines: list[int] | None = None) -> Source:
    where = Source(label)
    where.lines = lines
    return where


def _row_lines(path: Path, fmt: str) -> list[int] | None:
    """The 1-based line on which each row of a jsonl or csv file starts (a csv header is no row)."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            return [n for n, line in enumerate(f, 1) if line.strip()]
    if fmt == "csv":
        import csv

        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            starts, start = [], 1
            for row in reader:  # a quoted field may span lines: a row starts after the last one ended
                if row:  # datasets skips blank lines: they are no row
                    starts.append(start)
                start = reader.line_num + 1
            return starts[1:]
    return None


def _first_bad_json_line(path: Path) -> str | None:
    """Where a jsonl (each line) or json (the whole file) file stops being JSON, with the reason."""
    import json

    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return f"line {err.lineno}, column {err.colno}: {err.msg}"
        return None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {n} is not valid JSON ({err.msg} at column {err.colno}): {line[:60]!r}"
    return None


def load_rows(source: str, split: str, config_name: str | None = None,
              data_files: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], Source]:
    """Rows of ``split`` and where they came from (``where.row(i)`` names row ``i`` in messages).

    ``data_files`` maps split names to local files; otherwise ``source`` is a local file or
    directory (one split) or a Hub dataset id loaded with ``datasets.load_dataset``.
    """
    import datasets

    if data_files:
        if split not in data_files:
            raise DataError(f"task.options.data_files has no '{split}' entry (has: {', '.join(data_files)})")
        return _load_local(datasets, Path(data_files[split]), split)
    path = Path(source)
    if path.exists():
        return _load_local(datasets, path, split)
    ds = datasets.load_dataset(source, config_name, split=split)
    return [dict(r) for r in ds], _source(f"{source}[{split}]")


def _load_local(datasets: Any, path: Path, split: str) -> tuple[list[dict[str, Any]], Source]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _LOCAL_FORMATS and split in p.stem)
        if not files:
            raise DataError(f"{path}: no {split} file (*{split}*.jsonl/.json/.csv/.parquet) in this directory")
        path = files[0]
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    fmt = _LOCAL_FORMATS.get(path.suffix)
    if fmt is None:
        raise DataError(f"{path}: unsupported format '{path.suffix}'; use {', '.join(_LOCAL_FORMATS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; a {split} split needs at least one row")
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as err:  # datasets' parse errors name neither the file nor the line
        bad = _first_bad_json_line(path) if fmt == "json" else None
        raise DataError(f"{path}: {bad}" if bad else f"{path}: cannot read as {fmt}: {err}") from None
    return [dict(r) for r in ds], _source(str(path), _row_lines(path, fmt))


def require_fields(row: dict[str, Any], fields: tuple[str, ...], where: Source, index: int) -> None:
    for name in fields:
        if row.get(name) in (None, ""):
            raise DataError(f"{where}: {where.row(index)} is missing required field '{name}'")


def choose(items: list, limit: int, seed: int) -> list:
    """A seeded subset of at most ``limit`` items (0 = all), in a stable order."""
    if limit <= 0 or limit >= len(items):
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def carved_for_validation(key: str, fraction: float) -> bool:
    """Whether the training row with this ``key`` (its question) is held out as validation.

    A hash of the text, not of the row's position or the seed: the validation set stays the same
    whatever ``num_train``, seed or row order, and never meets the training problems.

    >>> carved_for_validation("q0?", 0.1), carved_for_validation("q0?", 1.0)
    (False, True)
    """
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def check_validation_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"task.options.validation_fraction: must be at least 0 and below 1, got {fraction}")
