"""Tables, figures and their provenance: views of the experiments' rows (``tables``, ``figures``,
``restore_analysis``), the provenance record beside each (``provenance``) and the reports index (``index``)."""
