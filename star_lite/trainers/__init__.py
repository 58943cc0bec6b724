"""star_lite's TRL trainers: SFT (``training``), the reward model (``reward``), GRPO (``grpo``), DPO and the
verifier (``dpo``), their pairs (``pairs``), and the settings they all share (``args``)."""
