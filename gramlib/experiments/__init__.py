"""The experiments of §4: named methods x protocols x seeds (``spec``, ``suite``), the protocols a unit
runs (``protocols``: base-to-new, cross-domain, cross-dataset), the meta-training runs they need
(``meta_runs``) and the linear probe of Figure 1b's fitting side (``linear_probe``)."""
