"""The run directory: plain files, written so that a kill at any moment loses nothing finished.

    config.yaml             the resolved config (updated when a safe change is accepted)
    config_changes.jsonl    safe config changes accepted on resume
    metrics.jsonl           one JSON object per finished iteration (0 = few-shot base model)
    iter_NNN/samples.jsonl  every sampled rationale with its correctness
    iter_NNN/train.jsonl    the kept examples the adapter was trained on
    iter_NNN/eval.jsonl     held-out completions and their grades
    iter_NNN/adapter/       the LoRA adapter (peft.PeftModel.from_pretrained loads it)

Under ``accelerate launch`` only rank 0 writes (the write functions here do nothing in the other
processes, which hold the same rows in memory), and a metrics row is a point where every process
waits for the others. Whole files are written to a temporary name and renamed; jsonl appends end in a newline
and a torn last line is ignored on read. An iteration is finished when its metrics row
exists; anything of a later iteration is redone, except samples already saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import distributed
from .config import RESUMABLE_KEYS, Config, ConfigError, diff_keys, from_dict


_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named place where a crash test makes this process die: with ``STAR_LITE_KILL_AT=name:n``
    the process sends itself SIGKILL the n-th time it reaches ``name`` (no clean-up runs, as
    with the OOM killer or a closed laptop). Points: ``samples_saved`` (a sampling batch was
    appended), ``train_step`` (an optimizer step ended), ``adapter_saved`` (an adapter was
    renamed into place). Without the variable this does nothing.
    """
    target = os.environ.get("STAR_LITE_KILL_AT")
    if not target:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def write_atomic(path: Path, text: str) -> None:
    if not distributed.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    if not distributed.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so appends start clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a jsonl file; a torn (unterminated or unparsable) last line is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    complete, tail = lines[:-1], lines[-1]
    rows = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(complete) - 1:
                warnings.warn(f"{path}: ignoring a damaged last line {i + 1}")
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    if tail.strip():
        warnings.warn(f"{path}: ignoring an unfinished last line (the run was interrupted while writing)")
    return rows


class RunDirBusy(ConfigError):
    """Another process is running in this run directory."""


_HELD: dict[str, list[int]] = {}  # run directories this process holds: resolved path -> [fd, depth]


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextlib.contextmanager
    def locked(self):
        """Hold the run directory for this process, or raise RunDirBusy naming the holder's PID.

        An OS lock (flock) on ``.lock``: the OS drops it when the holder exits or is killed, so
        nothing is left to clean. Re-entrant within a process (compare -> method -> loop). Under
        ``accelerate launch`` rank 0 takes the lock for the run, and every process learns whether
        it got it (so a refused run stops in all processes instead of leaving them at a barrier).
        """
        self.check_writable()
        key = str(self.root.resolve())
        busy = None
        if key in _HELD:
            _HELD[key][1] += 1
        elif distributed.is_main():
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                busy = (f"{self.root} is in use by another star_lite process (PID {holder}); wait for "
                        "it to finish or stop it, or choose another run.output_dir")
            else:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                _HELD[key] = [fd, 1]
        else:
            _HELD[key] = [-1, 1]  # rank 0 holds the OS lock for every process
        busy = distributed.broadcast(busy)
        if busy:
            if _HELD.get(key, [0])[0] == -1:
                del _HELD[key]
            raise RunDirBusy(busy)
        try:
            yield self
        finally:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                fd = _HELD.pop(key)[0]
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:03d}"

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def finished(self) -> dict[int, dict[str, Any]]:
        return {row["iteration"]: row for row in self.metrics()}

    def last_stage(self) -> dict[str, Any] | None:
        """The metrics row of the last finished iteration (the run's last stage), or None."""
        finished = self.finished()
        return finished[max(finished)] if finished else None

    def add_metrics(self, row: dict[str, Any]) -> None:
        """Record a finished iteration (with the run's number of processes, ``world_size``); every
        process waits here until rank 0 has written it, so all read the same metrics next."""
        row["world_size"] = distributed.world_size()
        append_jsonl(self.metrics_path, [row])
        distributed.barrier()

    STOP_REASONS = ("budget", "iterations", "steps", "validation_stopped_rising", "no_data", "schedule")

    def record_stop(self, reason: str, detail: str = "") -> None:
        """Why the method stopped (``stop.json``): budget (run.budget_* spent), iterations (star.iterations
        reached), steps (rl.steps reached), validation_stopped_rising, no_data (nothing to train on), schedule
        (a method with a fixed length that generates nothing: sft-direct, few-shot). The comparison shows it beside the
        budget spent."""
        if reason not in self.STOP_REASONS:
            raise ValueError(f"stop reason {reason!r} is not one of {self.STOP_REASONS}")
        if distributed.is_main():
            write_atomic(self.root / "stop.json", json.dumps({"stop_reason": reason, "detail": detail}) + "\n")

    def stop(self) -> dict[str, Any]:
        """What ``record_stop`` saved ({} when the run never recorded one)."""
        path = self.root / "stop.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def check_writable(self) -> None:
        """Create the directory; refuse one this process cannot write, naming run.output_dir."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if distributed.is_main():  # the one process that writes it
                probe = self.root / ".write_test"
                probe.write_text("")
                probe.unlink()
        except OSError as err:
            raise ConfigError(f"run.output_dir: cannot write to '{self.root}' ({err.strerror}). "
                              "Choose a directory you can write, e.g. --set run.output_dir=runs/mine") from None

    def prepare(self, cfg: Config, unread_sections: frozenset[str] = frozenset()) -> list[str]:
        """Create the directory, or check a saved config against ``cfg``; return accepted changes.
        Changes in ``unread_sections`` (config sections this run's method never reads) are accepted."""
        self.check_writable()
        saved_path = self.root / "config.yaml"
        current = cfg.to_dict()
        changed: list[str] = []
        if saved_path.exists():
            raw = yaml.safe_load(saved_path.read_text()) or {}
            if self.metrics():
                adopted = adopt_legacy_values(raw, cfg)
                if adopted:
                    current = cfg.to_dict()
                    print(f"[star_lite] {self.root} was saved before {', '.join(adopted)} existed; it continues "
                          f"with what that code did: {', '.join(f'{k}={LEGACY_VALUES[k]}' for k in adopted)}", flush=True)
            saved = from_dict(with_legacy_values(raw)).to_dict()
            changed = diff_keys(saved, current)
            refused = [k for k in changed if k not in RESUMABLE_KEYS and k.split(".")[0] not in unread_sections]
            if refused and self.metrics():
                detail = ", ".join(f"{k} (saved {_get(saved, k)!r}, now {_get(current, k)!r})" for k in refused)
                raise ConfigError(
                    f"{self.root} holds a run with a different config: {detail}. Continuing would mix "
                    "results; use another run.output_dir, or restore these values.")
            if changed:
                append_jsonl(self.root / "config_changes.jsonl", [{
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "changes": {k: {"saved": _get(saved, k), "now": _get(current, k)} for k in changed}}])
        write_atomic(saved_path, yaml.safe_dump(current, sort_keys=False))
        distributed.barrier()  # every process has read the saved config before it is replaced again
        return changed


# What a run saved before a key existed did, where that differs from the key's default: such a
# run continues with this value when the key is left at its default, and is compared against it.
LEGACY_VALUES = {"train.autocast": "off",  # before the switch, training computed in model.compute_dtype
                 "sampling.autocast": "off",  # before the switch, generation computed in model.compute_dtype
                 "train.rl_autocast": "off"}  # before the switch, reward model, GRPO, DPO and verifier ran in float32 on a CPU


def adopt_legacy_values(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Set in ``cfg`` the LEGACY_VALUES of keys ``saved`` lacks and ``cfg`` leaves at their defaults, so a run
    saved before those keys existed continues as it started; returns the keys set. A value set on purpose
    stays, and is then refused as a change (``prepare``)."""
    adopted = []
    for dotted, value in LEGACY_VALUES.items():
        section, key = dotted.split(".")
        if not isinstance(saved.get(section), dict) or key in saved[section]:
            continue
        part = getattr(cfg, section)
        default = next(f.default for f in dataclasses.fields(part) if f.name == key)
        if getattr(part, key) == default != value:
            setattr(part, key, value)
            adopted.append(dotted)
    return adopted


def with_legacy_values(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a config.yaml's dict) with LEGACY_VALUES filled in where it lacks the key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for dotted, value in LEGACY_VALUES.items():
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section][key] = value
    return out


def _get(d: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return d.get(section, {}).get(key) if key else d.get(section)


def read_run(path: str | Path) -> dict[str, Any]:
    """A run's config and metrics, for notebooks: ``{"config": dict, "metrics": [rows]}``."""
    root = Path(path)
    cfg_path = root / "config.yaml"
    return {"config": yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else None,
            "metrics": read_jsonl(root / "metrics.jsonl")}
