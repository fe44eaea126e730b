"""ctrobust: what Curvature Tuning really does to adversarial robustness.

Pipeline: config (``ctrobust.config``) -> model + data (``ctrobust.models``, ``ctrobust.data``) -> CT
(``ctrobust.ct``) -> attack engine (``ctrobust.engines``, attacks from ``ctrobust.attacks``) -> run store
(``ctrobust.store``, ``ctrobust.results``) -> figures and reports. ``ctrobust.sweep.run_sweep`` is the one
orchestrator; ``ctrobust.sweep_model(model, dataset, out=..., **options)`` runs it on a module you hold
(``ctrobust.api``, imported on first use).

Importing ctrobust changes nothing outside it: the ``autoattack`` alias robustbench needs is installed
only when robustbench is first used (``ctrobust._compat.import_robustbench``).
"""

import warnings

# robustbench's model zoo (imported lazily) touches torch.jit.interface, which torch deprecates loudly;
# the warning is about robustbench's code and not actionable for ctrobust users
warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

__all__ = ["sweep_model", "__version__"]


def __getattr__(name):
    # lazy: ``import ctrobust`` stays light; the API pulls in the sweep machinery on first use
    if name == "sweep_model":
        from ctrobust.api import sweep_model

        return sweep_model
    raise AttributeError(f"module 'ctrobust' has no attribute {name!r}")
