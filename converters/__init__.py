"""PyTorch <-> Flax conversion for EPAM-Net, and the pinned PyTorch reference.

``converters.reference`` needs ``torch==2.13.0`` (the ``torch`` extra); the
conversion functions import torch only to read ``.pth`` files and to build
tensors.
"""

from converters.convert import (
    MODELS,
    ConversionError,
    count_parameters,
    flax_to_torch,
    key_table,
    load_torch_checkpoint,
    normalize_keys,
    read_torch_checkpoint,
    torch_to_flax,
)

__all__ = [
    "MODELS",
    "ConversionError",
    "count_parameters",
    "flax_to_torch",
    "key_table",
    "load_torch_checkpoint",
    "normalize_keys",
    "read_torch_checkpoint",
    "torch_to_flax",
]
