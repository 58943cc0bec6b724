"""A stand-in for vLLM's offline API (LLM, SamplingParams, outputs) built on transformers.

vLLM needs a CUDA GPU, so CPU tests put this package first on sys.path to run star_lite's
vLLM backend end to end on a tiny model. It mirrors the calls the backend makes (keyword
arguments checked like vLLM's EngineArgs, LoRA adapters loaded per request from their
directory, sleep/wake_up) and records them for the tests to inspect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ENGINE_ARGS = {"model", "tokenizer", "dtype", "seed", "quantization", "enable_lora", "max_lora_rank", "max_loras",
               "enable_prefix_caching", "enable_sleep_mode", "gpu_memory_utilization", "max_model_len"}


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    include_stop_str_in_output: bool = False
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model: str, **kwargs):
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:  # vLLM's EngineArgs rejects unknown keywords the same way
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{sorted(unknown)[0]}'")
        from transformers import AutoTokenizer

        self.path, self.kwargs = model, kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.asleep = False
        self.events: list[str] = []
        self.requests: list[dict] = []  # one per generate call: prompts, params, lora path
        self._models: dict[int | None, object] = {}
        LLM.instances.append(self)

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        assert self.kwargs.get("enable_sleep_mode"), "sleep mode was not enabled"
        self.asleep = True
        self.events.append(f"sleep{level}")

    def wake_up(self, tags=None) -> bool:
        self.asleep = False
        self.events.append("wake")
        return True

    def _model(self, lora_request):
        key = None if lora_request is None else lora_request.lora_int_id
        if key not in self._models:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
            if lora_request is not None:
                assert self.kwargs.get("enable_lora"), "a LoRA request needs enable_lora=True"
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, lora_request.lora_path)
            self._models[key] = model.eval()
        return self._models[key]

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, **_):
        assert not self.asleep, "generate called while the engine sleeps"
        params = sampling_params or SamplingParams()
        self.requests.append({"prompts": list(prompts), "params": params,
                              "lora_path": None if lora_request is None else lora_request.lora_path})
        model, tok = self._model(lora_request), self.tokenizer
        stops = list(params.stop or [])
        sample = params.temperature > 0
        results = []
        for prompt in prompts:
            enc = tok(prompt, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=params.max_tokens, do_sample=sample,
                                 temperature=params.temperature if sample else None,
                                 top_p=params.top_p if sample else None, top_k=None,
                                 stop_strings=stops or None, tokenizer=tok, pad_token_id=tok.pad_token_id)
            ids = out[0, enc["input_ids"].shape[1]:].tolist()
            text = tok.decode(ids, skip_special_tokens=True)
            hits = [(text.find(s), s) for s in stops if s in text]
            if hits:  # vLLM cuts the text at the stop string, which it keeps only when asked
                at, stop = min(hits)
                text = text[:at + len(stop)] if params.include_stop_str_in_output else text[:at]
            results.append(RequestOutput(prompt, [CompletionOutput(0, text, ids)]))
        return results
