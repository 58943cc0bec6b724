"""Work that two methods of a comparison compute alike, computed once (``compare.reuse``).

Several methods start the same way: in configs/compare_reasoning.yaml, rest-em's iterations are v-star's
generator (four samples per problem at 0.7, no rationalization, STaR's step schedule), and dpo's first
iteration samples and fine-tunes as rest-em's first does. A generation call and an SFT run are
deterministic functions of their inputs: the model's weights, the prompts or examples, the settings, the
thread count and, for sampling at a temperature, the random generator's state as the call begins. While
``active``, each call's inputs are hashed into a key; a call whose key this comparison has already
computed gets the stored outputs and leaves the random generators where the computation left them, so
the method goes on exactly as if it had computed them (tests/test_reuse.py checks the tokens, samples and
adapters are identical). The key holds every adapter weight, the prompts or examples, the settings, the
draw's random state, the thread count, the libraries and star_lite's computing code; the frozen base is
held by its config (``model``: the checkpoint's name and how it is loaded, its tokenizer with it) and the
first and last 1,024 values of each of its parameters, not all of them (hashing a large base at every call
would cost seconds). A key that differs in any of these is computed; a missed reuse only costs the time it
always cost. Work is reused across seeds too where it is the same (the base's greedy rationales for the
training problems, which every seed shares).

The seconds a stored result took are counted as the method's cost (``seconds_reused`` in its metrics
row; the comparison's seconds column and axis add them), not as time this process spent ("Time by phase").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

_store: list[Path] = []  # the active store's directory (compare.output_dir/.reuse), or none
_reused = [0.0]  # seconds of stored work handed out since the last ``take``
hits = {"generate": 0, "sft": 0}  # stored results handed out in this process (tests read it)


@contextlib.contextmanager
def active(directory: str | Path | None) -> Iterator[None]:
    """While inside, generation and SFT calls look their results up in ``directory`` (None: no reuse)."""
    before = list(_store)
    _store[:] = [Path(directory)] if directory is not None else []
    _reused[0] = 0.0  # seconds a stage that wrote no row left behind belong to no later method
    try:
        yield
    finally:
        _store[:] = before
        _reused[0] = 0.0


def enabled(cfg) -> bool:
    """Whether a comparison's methods reuse each other's identical work (``compare.reuse``): ``auto`` on one
    process with the hf backend, an unquantized base and no wall-seconds budget. A seconds budget: a reused
    result costs no seconds, so it would buy more work than it measures. A 4-bit base: it does not come out of
    SFT as it went in (measured on the tiny model: a DPO adapter trained after a reused SFT differed from one
    trained after the SFT itself), so a method would not go on exactly as it does on its own.

    >>> from star_lite.config import from_dict
    >>> enabled(from_dict({"model": {"load_in_4bit": False}})), enabled(from_dict({"compare": {"reuse": "off"}}))
    (True, False)
    >>> enabled(from_dict({"model": {"load_in_4bit": False}, "run": {"budget_seconds": 600}}))
    False
    >>> enabled(from_dict({"model": {"load_in_4bit": True}}))
    False
    """
    from . import distributed

    if cfg.compare.reuse == "off":
        return False
    return (distributed.world_size() == 1 and cfg.sampling.backend == "hf" and not cfg.model.load_in_4bit
            and not cfg.run.budget_seconds)


def take() -> dict[str, float]:
    """``{"seconds_reused": s}`` for the stored work handed out since the last call ({} for none), then clear."""
    seconds, _reused[0] = _reused[0], 0.0
    return {"seconds_reused": round(seconds, 1)} if seconds else {}


# --- keys ---------------------------------------------------------------------------------------------------

def canonical(value: Any) -> Any:
    """``value`` with every set sorted, so it prints the same in every process (a set's order follows the
    process's string hash seed, and pool workers each have their own: peft keeps target_modules as a set).

    >>> canonical({"b": {"v", "q"}, "a": (1, frozenset({3, 2}))})
    {'a': [1, [2, 3]], 'b': ['q', 'v']}
    """
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def _update(h, value: Any) -> None:
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        for v in value:
            _update(h, v)
    elif isinstance(value, torch.Tensor):
        t = value.detach().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b"")
    else:
        h.update(json.dumps(canonical(value), sort_keys=True, default=str).encode())


SAMPLED_VALUES = 1024  # of each frozen base parameter, first and last, in a fingerprint


def fingerprint(model) -> str:
    """The identity of a model: every LoRA parameter by name and value, its peft configuration, and each other
    parameter's name, shape, dtype and first and last ``SAMPLED_VALUES`` values (the frozen base: the same
    checkpoint gives the same values; another one, a fine-tuned variant too, differs in them; hashing all of a
    large base at every call would cost seconds)."""
    h = hashlib.blake2b(digest_size=20)
    for name, p in model.named_parameters():
        h.update(name.encode())
        if "lora_" in name:
            _update(h, p)
        else:
            flat = p.detach().reshape(-1)
            _update(h, [flat[:SAMPLED_VALUES], flat[-SAMPLED_VALUES:]])
            h.update(f"{p.dtype}{tuple(p.shape)}".encode())
    peft_config = getattr(model, "peft_config", None)
    if peft_config:  # inference_mode: how peft loaded it (a trained adapter is not), not what it computes
        _update(h, {k: {f: x for f, x in v.to_dict().items() if f != "inference_mode"} if hasattr(v, "to_dict")
                    else str(v) for k, v in peft_config.items()})
        _update(h, list(getattr(model, "active_adapters", []) or []))
    return h.hexdigest()


CODE = ("sampling/hf.py", "sampling/prefix_decode.py", "sampling/__init__.py", "fastpaths.py", "models.py",
        "training.py", "trainers/sft.py", "trainers/args.py", "reuse.py")  # what computes a stored result


@functools.cache  # fixed for the process
def _installed() -> dict[str, Any]:
    """The libraries, star_lite's own computing code and the hardware's kernels."""
    from importlib import metadata

    h = hashlib.blake2b(digest_size=20)
    for name in CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    versions = {}
    for package in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": versions, "code": h.hexdigest(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _environment() -> dict[str, Any]:
    """What a result depends on outside its call: the thread count (a matmul's summation order) and what is
    installed (``_installed``)."""
    return {"threads": torch.get_num_threads(), **_installed()}


def _key(kind: str, *parts: Any) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(kind.encode())
    for part in parts:
        _update(h, part)
    return f"{kind}-{h.hexdigest()}"


def _rng_state() -> dict[str, Any]:
    """Every random generator's state: torch's (``_torch_rng_state``), Python's and numpy's (an SFT seeds all)."""
    import numpy as np

    return {**_torch_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    """Set the random generators ``state`` holds (a generation's: torch's alone, all it draws from)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])


def _torch_rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _save(path: Path, entry: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # workers side by side may store the same key
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(entry, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, weights_only=False)
    except (OSError, EOFError, RuntimeError):
        return None


# --- generation ---------------------------------------------------------------------------------------------

def generation_key(model, prompts: Sequence[str], settings: dict[str, Any], kwargs: dict[str, Any]) -> str:
    """A generation call's key: adapter weights, the base and sampler settings (``settings``: the config's
    model and sampling sections), the prompts, the call's arguments but its label and callback, the
    environment, and at a temperature the random generators' state."""
    args = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(kwargs.items())
            if k not in ("desc", "on_batch", "prompt_ids")}
    ids = kwargs.get("prompt_ids")
    sampled = (kwargs.get("temperature") or 0.0) > 0
    state = _torch_rng_state() if sampled else {"torch": None, "cuda": None}
    return _key("generate", fingerprint(model), settings, list(prompts),
                [list(r) for r in ids] if ids is not None else None, args, _environment(),
                state["torch"], state["cuda"])


def memoized_generate(generate, settings: dict[str, Any]):
    """``generate`` (a backend's, one process) looked up in the active store first.

    A stored call is replayed batch by batch: each batch's generations go to ``on_batch`` with torch's random
    generator set as it was after that batch (generation draws from no other), so a callback that stops the
    call (the budget) stops it where the computation stopped; the seconds charged are the stored call's up to
    there. A call stored unfinished (stopped by its callback) and replayed to its end without being stopped
    goes on computing from the next batch, from the stored state; an unfinished entry never replaces a
    finished or longer one."""
    from .sampling.base import Generation

    @functools.wraps(generate)
    def run(model, tokenizer, prompts, **kwargs):
        if not _store:
            return generate(model, tokenizer, prompts, **kwargs)
        sampled = (kwargs.get("temperature") or 0.0) > 0
        path = _store[0] / f"{generation_key(model, prompts, settings, kwargs)}.pt"
        entry = _load(path) if path.exists() else None
        on_batch = kwargs.pop("on_batch", None)
        n = len(kwargs["prompt_ids"]) if kwargs.get("prompt_ids") is not None else len(prompts)
        results: list[Any] = [None] * n
        # batches: (prompt indices, generations, random state after it, seconds of the call up to its end)
        record: dict[str, Any] = {"batches": [], "complete": False, "seconds": 0.0}
        done = 0
        if entry is not None:
            record = entry
            spent = 0.0
            for idx, rows, state, seconds in entry["batches"]:
                batch = [Generation(text, num, tuple(ids)) for text, num, ids in rows]
                for i, g in zip(idx, batch):
                    results[i] = g
                done += len(idx)
                if sampled:
                    _set_rng_state(state)
                _reused[0] += seconds - spent  # before the callback, which may stop the call here
                spent = seconds
                if on_batch is not None:
                    on_batch(idx, batch)  # may stop the call, as it stopped the stored one
            if entry["complete"]:
                _reused[0] += entry["seconds"] - spent
                hits["generate"] += 1
                return results
            if entry["batches"]:  # go on at the batch size the stored call had come to (halved on out of memory)
                kwargs["batch_size"] = len(entry["batches"][-1][0])
        t0 = time.perf_counter()
        seconds_before = record["seconds"]

        def keep(idx, batch):
            record["seconds"] = seconds_before + time.perf_counter() - t0
            record["batches"].append((list(idx), [(g.text, g.num_tokens, list(g.token_ids)) for g in batch],
                                      _torch_rng_state() if sampled else None, record["seconds"]))
            for i, g in zip(idx, batch):
                results[i] = g
            if on_batch is not None:
                try:
                    on_batch(idx, batch)
                except BaseException:
                    stored = _load(path) if path.exists() else None
                    if not (stored and (stored["complete"] or len(stored["batches"]) >= len(record["batches"]))):
                        _save(path, record)  # what was drawn up to the stop, for a caller stopped at the same point
                    raise

        generate(model, tokenizer, prompts, on_batch=keep, first=done, **kwargs)
        record["complete"] = True
        record["seconds"] = seconds_before + time.perf_counter() - t0
        _save(path, record)
        return results

    return run


# --- SFT ----------------------------------------------------------------------------------------------------

SFT_IGNORED = ("epochs",)  # train keys train_adapter does not read (its caller turns epochs into steps)


def sft_key(base, examples: list[dict[str, str]], cfg, steps: int, seed: int) -> str:
    """An SFT run's key: the base (its config and any adapter weights on it), the examples in order, the
    steps, the seed, every train setting ``train_adapter`` reads, the run seed TRL is given, the environment."""
    import dataclasses

    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in SFT_IGNORED}
    return _key("sft", fingerprint(base), dataclasses.asdict(cfg.model), train, cfg.run.seed,
                [[e["prompt"], e["completion"]] for e in examples], steps, seed, _environment())


def _adapter_digest(directory: Path) -> str | None:
    """The saved adapter's identity (its files' bytes); None where it is gone."""
    h = hashlib.blake2b(digest_size=20)
    files = sorted(p for p in directory.glob("*") if p.is_file()) if directory.is_dir() else []
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest() if files else None


def _reloads_exactly(model, adapter: Path) -> bool:
    """Whether the saved adapter file holds the in-memory adapter's weights bit for bit (float32 on a float32
    base: then the store keeps no copy of them)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    files = list(adapter.glob("*.safetensors"))
    if len(files) != 1:
        return False
    saved, memory = load_file(str(files[0])), get_peft_model_state_dict(model)
    return saved.keys() == memory.keys() and all(
        saved[k].dtype == memory[k].dtype and torch.equal(saved[k], memory[k].detach().cpu()) for k in saved)


def memoized_sft(train_adapter):
    """``train_adapter`` looked up in the active store first. The store keeps where the first run saved its
    adapter and the adapter's digest (no second copy where the file holds the weights exactly); a later run
    with the same key copies that adapter to ``out_dir/adapter`` and loads it on ``base``, gets the stored
    TrainResult, and finds the random generators as training left them; where the saved file rounds the
    adapter's weights, the store keeps them as they were in memory and sets them. An adapter since removed or
    changed (its run redone) is a miss."""
    import dataclasses

    from .models import detach_adapter, load_adapter
    from .training import TrainResult

    @functools.wraps(train_adapter)
    def run(base, tokenizer, examples, cfg, steps, out_dir, seed=0):
        if not _store:
            return train_adapter(base, tokenizer, examples, cfg, steps, out_dir, seed=seed)
        out_dir = Path(out_dir)
        path = _store[0] / f"{sft_key(base, examples, cfg, steps, seed)}.pt"
        entry = _load(path) if path.exists() else None
        source = Path(entry["adapter"]) if entry is not None else None
        if (entry is not None and source != (out_dir / "adapter").resolve()
                and _adapter_digest(source) == entry["digest"]):
            tmp = out_dir / ".adapter.reused.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, tmp)
            if _adapter_digest(tmp) == entry["digest"]:  # not rewritten while it was copied
                shutil.rmtree(out_dir / "adapter", ignore_errors=True)
                os.replace(tmp, out_dir / "adapter")
                model = load_adapter(base, out_dir / "adapter")
                params = dict(model.named_parameters())
                if set(entry["dtypes"]) <= set(params):
                    # the trained weights as they were in memory: their dtype, and their values where the saved
                    # file rounds them (e.g. to bfloat16)
                    for name, dtype in entry["dtypes"].items():
                        if entry["weights"] is not None:
                            params[name].data = entry["weights"][name].clone()
                        elif str(params[name].dtype) != dtype:
                            params[name].data = params[name].data.to(getattr(torch, dtype.split(".")[-1]))
                        params[name].requires_grad_(entry["requires_grad"][name])
                    _set_rng_state(entry["rng"])
                    _reused[0] += entry["seconds"]
                    hits["sft"] += 1
                    return model, TrainResult(**entry["result"])
                base = detach_adapter(model)  # another adapter layout: train it here
            shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        model, result = train_adapter(base, tokenizer, examples, cfg, steps, out_dir, seed=seed)
        adapter = (out_dir / "adapter").resolve()
        lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
        _save(path, {"adapter": str(adapter), "digest": _adapter_digest(adapter), "result": dataclasses.asdict(result),
                     "rng": _rng_state(), "requires_grad": {n: p.requires_grad for n, p in lora.items()},
                     "dtypes": {n: str(p.dtype) for n, p in lora.items()},
                     "weights": None if _reloads_exactly(model, adapter) else {n: p.detach().clone() for n, p in lora.items()},
                     "seconds": time.perf_counter() - t0})
        return model, result

    return run
