"""star_lite's TRL trainers: SFT (``sft``), the reward model (``reward``), GRPO (``grpo``), DPO and the
verifier (``dpo``), their pairs (``pairs``), and the settings they all share (``args``); what every trainer
shares beside them (errors, results, saving) is ``star_lite/training.py``."""
