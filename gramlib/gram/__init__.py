"""GRAM itself (§3.3-3.4): tasks with simulated domain shift, the gradient regulator, the bi-level
meta-training loop (Algorithm 1), test-time tuning with R^φ* (eq. 7) and the prompt pre-training ablation.

Modules, in the paper's order:
``tasks`` (§3.3, task sampling from CHC's topics and domains), ``regulator`` (eqs. 5-6),
``meta`` (eqs. 4, 7-10: ``inner_step``, ``meta_step``), ``task_loss`` (eq. 1 on one task, through the
prompt learner's own forward), ``meta_data`` (the item bank tasks index), ``meta_train`` (the driver),
``test_time`` (eq. 7 at test time), ``pretrain_prompts`` (Table 6's w/o-meta-learning row).
"""
