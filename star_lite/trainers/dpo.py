"""DPO on the model's own right-over-wrong pairs (methods dpo and v-star) through TRL's DPOTrainer, held
to a reference adapter; the verifier's scores (V-STaR: beta times the log-ratio to the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
import torch

from .. import fastpaths, phases
from ..config import Config
from ..progress import quiet_trainer
from .args import match_adapter_dtype, rl_lm_head, rl_precision, save_policy, trainer_args
from ..training import TrainingError, release_memory



def copy_adapter_weights(model, adapter: str | Path, adapter_name: str) -> None:
    """Load the LoRA weights saved in ``adapter`` into ``model``'s adapter ``adapter_name`` (same LoRA
    settings), in place: TRL's DPOTrainer makes its reference adapter "ref" a copy of the policy, and
    the dpo method's reference is the SFT adapter even when the policy starts fresh."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    mine = {n.replace(f".{adapter_name}.", "."): p for n, p in model.named_parameters()
            if f".{adapter_name}." in n and "lora_" in n}
    if set(mine) != set(weights):
        raise TrainingError(f"the adapter in {adapter} does not fit the model's LoRA layers "
                            f"(model.lora_* settings changed?): {sorted(set(mine) ^ set(weights))[:3]}")
    with torch.no_grad():
        for key, p in mine.items():
            p.copy_(weights[key].to(p.dtype))


@phases.timed("dpo")
def train_dpo(policy, tokenizer, pairs: list[dict[str, Any]], cfg: Config, out_dir: Path, *, steps: int,
              learning_rate: float, batch_size: int, beta: float, nll_weight: float = 0.0,
              reference: str | Path | None = None):
    """DPO with TRL's DPOTrainer on the policy's LoRA adapter; saves it to ``out_dir/adapter``.

    TRL takes the reference from a frozen copy of the policy's adapter as it is at the start ("ref");
    ``reference`` (a saved adapter) replaces that copy, so a fresh policy can still be held to the SFT
    adapter. ``nll_weight`` > 0 adds NLL on the chosen rationale (TRL's "sft" loss beside "sigmoid":
    Iterative RPO). Returns the model and a ``TrainResult`` (history: rows with a loss; trained tokens).
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise TrainingError("no preference pairs: no question got both a right and a wrong rationale; sample more "
                            "per problem (dpo.samples_per_problem / v_star.samples_per_problem) or at a higher "
                            "temperature")
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, nll_weight]} if nll_weight else {}
    args = DPOConfig(output_dir=str(out_dir / "dpo_trainer"), max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=learning_rate, beta=beta, max_length=cfg.train.max_length,
                     include_num_input_tokens_seen="non_padding",  # the comparison's cost counts them
                     **losses, **{**trainer_args(cfg), "logging_steps": 1})  # every step in the history
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = quiet_trainer(DPOTrainer(model=policy, args=args, train_dataset=data, processing_class=tokenizer))
    model = trainer.model
    if reference is not None:
        if "ref" not in model.peft_config:  # TRL 1.16 adds "ref" for any PeftModel; kept for versions that do not
            model.add_adapter("ref", model.peft_config["default"])
        copy_adapter_weights(model, reference, "ref")
        for name, p in model.named_parameters():
            if ".ref." in name:
                p.requires_grad_(False)
    match_adapter_dtype(model, cfg)
    with rl_precision(model, cfg), rl_lm_head(cfg):
        trainer.train()
    model, result = save_policy(trainer, out_dir, out_dir / "dpo_trainer")
    del trainer
    release_memory()
    return model, result


@torch.no_grad()
def sequence_logprobs(model, tokenizer, prompts: list[str], completions: list[str],
                      batch_size: int = 16) -> list[float]:
    """Sum of the log-probabilities of each completion's tokens after its prompt. Only the positions that
    predict a completion token reach the LM head (transformers' ``logits_to_keep`` as a mask): the prompt's
    and the padding's logits over the whole vocabulary were computed and thrown away."""
    device = next(model.parameters()).device
    out: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(prompts), batch_size):
            ps, cs = prompts[i:i + batch_size], completions[i:i + batch_size]
            starts = [len(tokenizer(p)["input_ids"]) for p in ps]
            enc = tokenizer([p + c for p, c in zip(ps, cs)], return_tensors="pt", padding=True).to(device)
            ids, real = enc["input_ids"], enc["attention_mask"].bool()
            completion = real.clone()  # the completion's tokens, not the prompt's or padding
            for row, start in enumerate(starts):
                completion[row, :max(start, 1)] = False  # an empty prompt: its first token is given, not scored
            scored, targets = fastpaths.next_token_positions(ids, completion)
            sums = torch.zeros(len(ps), dtype=torch.float32, device=device)
            if bool(scored.any()):
                logits = model(**enc, logits_to_keep=scored).logits
                logits = logits.reshape(-1, logits.size(-1)).float()
                token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
                sums.index_add_(0, scored.nonzero()[:, 0], token_logps)
            out += sums.tolist()
    finally:
        tokenizer.padding_side = side
    return out


def verifier_scores(model, tokenizer, prompts: list[str], completions: list[str], beta: float) -> list[float]:
    """V-STaR's verifier score, DPO's implicit reward: beta * (log pi_verifier - log pi_reference) of the
    completion. ``model`` holds the adapters "verifier" and "reference" (see ``load_verifier``). A candidate
    drawn twice for the same prompt (k candidates at a temperature often repeat) is scored once."""
    unique = list(dict.fromkeys(zip(prompts, completions)))
    ps, cs = [p for p, _ in unique], [c for _, c in unique]
    model.set_adapter("verifier")
    mine = sequence_logprobs(model, tokenizer, ps, cs)
    model.set_adapter("reference")
    ref = sequence_logprobs(model, tokenizer, ps, cs)
    model.set_adapter("verifier")
    score = {pair: beta * (a - b) for pair, a, b in zip(unique, mine, ref)}
    return [score[pair] for pair in zip(prompts, completions)]


def load_verifier(base, verifier: str | Path, reference: str | Path):
    """The base with the trained verifier adapter and its DPO reference, both frozen, for scoring."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(verifier), adapter_name="verifier")
    model.load_adapter(str(reference), adapter_name="reference")
    return model.eval()
