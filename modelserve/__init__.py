"""modelserve: serve algorithm packages over HTTP on Ray Serve, configured by conf.ini."""

from modelserve.backend import Backend
from modelserve.errors import BadRequest, ModelLoadError, ModelServeError

__version__ = "0.1.0"
__all__ = ["Backend", "BadRequest", "ModelLoadError", "ModelServeError", "__version__"]
