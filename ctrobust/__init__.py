"""ctrobust: what Curvature Tuning really does to adversarial robustness.

Pipeline: config -> model + data -> CT (``ctrobust.ct``) -> attack engine (``ctrobust.engines``)
-> result store (``ctrobust.store``) -> figures and reports.
"""

from ctrobust import _compat

_compat.install()

__version__ = "0.1.0"
