"""Reward model, RL and preference training (Self-motivated Learning, Feng et al. 2024; GRPO, Shao et al.
2024; DPO, Rafailov et al. 2023), by the names earlier code and the notebooks import
(``rl.load_reward_model``, ``rl.reward_scores``, ``rl.train_rl``, ...). Each lives in ``star_lite/trainers/``:
``pairs.py`` (right-over-wrong pairs and their steps), ``reward.py`` (the reward model), ``grpo.py``
(GRPO and its rollouts), ``dpo.py`` (DPO and the verifier's scores), ``args.py`` (what every trainer
shares)."""

from __future__ import annotations

from .trainers.args import match_adapter_dtype, save_policy, trainer_args  # noqa: F401
from .trainers.dpo import (copy_adapter_weights, load_verifier, sequence_logprobs, train_dpo,  # noqa: F401
                           verifier_scores)
from .trainers.grpo import (_stopping_grpo_trainer, check_trl_options, cut_at_stop, grpo_args,  # noqa: F401
                            make_reward, max_completion_length, merge_groups, rl_max_steps, rollouts_by, train_rl,
                            zero_variance_groups)
from .trainers.pairs import preference_pairs, preference_steps, split_pairs  # noqa: F401
from .trainers.reward import (load_reward_base, load_reward_model, pair_accuracy_summary,  # noqa: F401
                              pairwise_accuracy, reward_model_standardisation, reward_model_start, reward_scores,
                              train_reward_model)
