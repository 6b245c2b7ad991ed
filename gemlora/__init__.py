"""gemlora's root: the `gemlora` command line, where things live on disk, the base-model catalogue.

The four product packages are `gemlora.data`, `gemlora.train`, `gemlora.adapters` and
`gemlora.serve`; this one only ties them together (and holds what they share, such as the
precision rule in `gemlora.precision`) and must stay import-light (no torch at import time).
"""

from gemlora.bases import BaseSpec, load_catalogue, resolve_base
from gemlora.paths import gemlora_home, models_dir

__version__ = "0.1.0"
__all__ = [
    "BaseSpec",
    "__version__",
    "gemlora_home",
    "load_catalogue",
    "models_dir",
    "resolve_base",
]
