"""The project's error families (``from ahm.errors import CheckpointError``); their home is
:mod:`ahm.backbone.errors`, the lowest layer that raises them."""

from ahm.backbone.errors import AHMConfigError, AHMError, CheckpointError, NonFiniteError, ResourceError

__all__ = ["AHMError", "AHMConfigError", "CheckpointError", "NonFiniteError", "ResourceError"]
