"""Block-masked RL, the paper's last step: CISPO on rollouts generated with physical eviction (`memento rl`).

`config` holds the recipe, `loss` the objective (advantages, CISPO / GRPO, KL), `trainer` the loop: rollouts,
block-masked log-probs (with the train/inference mismatch check), updates, evaluation, checkpoints.
"""
