"""ctrobust: what Curvature Tuning really does to adversarial robustness.

Pipeline: config -> model + data -> CT (``ctrobust.ct``) -> attack engine (``ctrobust.engines``)
-> result store (``ctrobust.store``) -> figures and reports.
"""

import warnings

# robustbench's model zoo (imported lazily) touches torch.jit.interface, which torch deprecates loudly;
# the warning is about robustbench's code and not actionable for ctrobust users
warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning)

from ctrobust import _compat  # noqa: E402

_compat.install()

__version__ = "0.1.0"
