"""What star_lite's TRL trainers share (SFT in ``training``, reward model, GRPO and DPO in ``rl``)."""
