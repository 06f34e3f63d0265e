"""Few-shot prompt tuning: the inputs a learner trains on (cached features or augmented views, ``inputs``)
and the loop with the paper's recipe, a gradient hook and resume (``train``)."""
