"""What gmgan needs beyond gmkernels' own dependencies: the ``train`` extra of setup.py.

The ``gmgan`` command is installed with the base package, so ``gmgan`` checks at start-up, before
any work is done, that the extra is installed, and names what to install when it is not (a
missing matplotlib would otherwise surface only when a finished run writes its plot).
"""
from __future__ import annotations

import importlib.util

# import name -> distribution name, as listed in setup.py's extras_require["train"]
TRAIN_EXTRA = {"safetensors": "safetensors", "matplotlib": "matplotlib", "sklearn": "scikit-learn",
               "yaml": "pyyaml"}


def missing_training_modules() -> list:
    """The distribution names of the train extra whose module cannot be imported here."""
    return [distribution for module, distribution in TRAIN_EXTRA.items() if importlib.util.find_spec(module) is None]


def install_hint(missing: list) -> str:
    """One line: what is missing and what to install."""
    return (f"gmgan needs {', '.join(missing)} (the gmkernels 'train' extra): pip install \"gmkernels[train]\", "
            f"or from a clone: pip install --no-build-isolation -e \".[train]\"")
