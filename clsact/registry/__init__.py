"""Published runs: finding and reading them (:mod:`~clsact.registry.runs`), the gate that
blesses one (:mod:`~clsact.registry.gate`), their history (:mod:`~clsact.registry.history`)
and the evaluation settings a run published (:mod:`~clsact.registry.settings`)."""
