"""Models robustlab did not train: ONNX, TorchScript and Keras 3 files behind an input contract.

``import_model`` turns a model file into an ordinary run directory; ``load_checkpoint`` reads
such a run back through ``load_foreign``.
"""

from robustlab.models.foreign.contract import SCALES, ForeignPreprocess, InputContract
from robustlab.models.foreign.formats import FORMATS, detect_format, import_keras, read_net
from robustlab.models.foreign.importer import (
    DeclaredInput,
    ForeignModel,
    import_model,
    load_foreign,
    read_foreign,
)

__all__ = [
    "FORMATS",
    "SCALES",
    "DeclaredInput",
    "ForeignModel",
    "ForeignPreprocess",
    "InputContract",
    "detect_format",
    "import_keras",
    "import_model",
    "load_foreign",
    "read_foreign",
    "read_net",
]
