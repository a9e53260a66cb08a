"""modelserve: serve algorithm packages over HTTP on Ray Serve, configured by conf.ini."""

from modelserve.backend import Backend
from modelserve.envelope import RawResponse
from modelserve.errors import BadRequest, ModelLoadError, ModelServeError
from modelserve.inputs import File
from modelserve.oip import TensorSpec as Tensor

__version__ = "0.1.0"
__all__ = ["Backend", "BadRequest", "File", "ModelLoadError", "ModelServeError", "RawResponse", "Tensor", "__version__"]
