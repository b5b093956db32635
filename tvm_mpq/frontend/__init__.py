"""Import stage: ``torch.export`` -> Relax (:mod:`~tvm_mpq.frontend.importer`), and the layer
table the other stages read (:mod:`~tvm_mpq.frontend.layers`)."""

from tvm_mpq.frontend.importer import (
    ImportedModel,
    NonQuantizableLayerWarning,
    UnsupportedOperatorError,
    import_model,
    quantizable_modules,
)
from tvm_mpq.frontend.layers import LayerInfo, LayerShape, LayerTable, WorkloadGroup

__all__ = [
    "ImportedModel", "LayerInfo", "LayerShape", "LayerTable", "NonQuantizableLayerWarning",
    "UnsupportedOperatorError", "WorkloadGroup", "import_model", "quantizable_modules",
]
