"""star_lite's TRL trainers: SFT (``sft``; what every trainer shares beside it in ``star_lite/training.py``), the reward model (``reward``), GRPO (``grpo``), DPO and the
verifier (``dpo``), their pairs (``pairs``), and the settings they all share (``args``)."""
