"""nnunet_plus: liver-lesion detection and diagnosis on top of nnU-Net v2."""
from __future__ import annotations

from nnunet_plus.paths import trainers_path
from nnunet_plus.schema import LesionSchema, SchemaError, build_schema

__version__ = "0.1.0"
__all__ = ["LesionSchema", "SchemaError", "build_schema", "trainers_path", "__version__"]
