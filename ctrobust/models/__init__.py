"""Model registry: families of model names -> eval-mode ``nn.Module`` taking [0, 1] input.

Every model returned by :func:`load_model` takes float images ``(B, C, H, W)`` in [0, 1] (CIFAR: 32x32,
ImageNet: 224x224) and returns logits ``(B, K)``; any input normalization is inside the model, so attacks run
in pixel space. A name is dispatched by its prefix to one family (``ctrobust models`` lists them):

- ``Standard``, ``Carmon2019Unlabeled``, ...: RobustBench 1.1.1 zoo entries (``robustbench.py``), every dataset;
  weights ``<model_dir>/<dataset>/<threat>/<name>.pt``, downloaded when the network allows;
- ``bundled/resnet18-cifar10``: shipped inside pyautoattack (``bundled.py``); offline;
- ``ct-paper/resnet{18,34,50,101,152}``: the CT paper's CIFAR ResNets in the reference's key layout
  (``ct_paper.py``), cifar10/cifar100; weights ``--checkpoint`` or
  ``<model_dir>/ct-paper/<arch>_<dataset>_epoch200.pth``;
- ``torchvision/<name>[@WEIGHTS]``: torchvision's classifiers (``torchvision.py``), imagenet; torch hub cache;
- ``timm/<name>``: timm's pretrained models (``timm.py``), imagenet; Hugging Face / torch hub cache;
- ``py:package.module:factory``, ``path/to/file.py:factory``: your own model (``user.py``), any dataset.

``ct-paper/``, ``torchvision/`` and ``timm/`` models are :class:`Normalized` wrappers (``model.inner``,
``model.mean``, ``model.std``). Models given as code or checkpoint are keyed by a hash of their weights
(:func:`keyed_by_weights`, :func:`weights_fingerprint`), named releases by their name.

``model_dir`` defaults to ``$CTROBUST_MODEL_DIR``, else ``$XDG_CACHE_HOME/ctrobust/models`` (``~/.cache/...``).
Missing weights raise :class:`ModelUnavailableError` naming the file to place and its source; every connect/read
waits at most ``$CTROBUST_NET_TIMEOUT`` (15 s), and ``CTROBUST_OFFLINE=1`` skips download attempts altogether.

Example:
    >>> model = load_model("bundled/resnet18-cifar10")
    >>> model = load_model("Standard", "cifar10", "Linf", model_dir="/data/models")  # needs the checkpoint
    >>> model = load_model("ct-paper/resnet18", "cifar10", checkpoint="ckpts/resnet18_cifar10_epoch200.pth")
    >>> model = load_model("torchvision/resnet50", "imagenet")   # torchvision's IMAGENET1K_V1 weights
"""

from ctrobust.models._common import (ModelFamily, ModelLoadError, ModelUnavailableError, Normalized,
                                     default_model_dir, weights_fingerprint)
from ctrobust.models._coverage import coverage_table
from ctrobust.models._families import (FAMILIES, build_architecture, check_logits, check_model_options, family_of,
                                       keyed_by_weights, load_model, model_families)
from ctrobust.models.bundled import BUNDLED_MODELS
from ctrobust.models.robustbench import checkpoint_paths, list_models

__all__ = [
    "BUNDLED_MODELS",
    "FAMILIES",
    "ModelFamily",
    "ModelUnavailableError",
    "ModelLoadError",
    "Normalized",
    "default_model_dir",
    "checkpoint_paths",
    "list_models",
    "load_model",
    "build_architecture",
    "coverage_table",
    "model_families",
    "family_of",
    "keyed_by_weights",
    "weights_fingerprint",
    "check_model_options",
    "check_logits",
]
