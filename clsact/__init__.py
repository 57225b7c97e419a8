"""clsact: production auto-compression (QAT + distillation) for image classifiers.

The package is split by concern; heavy imports (paddle, paddleslim) happen only in the
modules that run models (``compress``, ``evaluate``, ``modelio``, ``compat``, ``demo``), so
``clsact --help`` and config validation stay fast.
"""

__version__ = "0.1.0"
