"""Configuration parsed strictly from a Hugging Face checkpoint and the built limits.

``ModelConfig`` (``model.py``) holds the model's dimensions, ``DeploymentConfig`` the built limits
and ``EngineConfig`` both plus dtypes (``engine.py``). All are frozen and hashable, so they can be
static ``jit`` arguments (changing them recompiles). ``fields.py`` reads JSON and fields strictly,
``rope.py`` the RoPE parameters, ``families.py``/``families_vl.py``/``hybrid.py`` what differs per
family, ``defaults.py`` the one table of runtime and CLI defaults.
"""

from .engine import MEMORY_FRACTION as MEMORY_FRACTION
from .engine import OPTIONAL_DEPLOYMENT as OPTIONAL_DEPLOYMENT
from .engine import OPTIONAL_FLAGS as OPTIONAL_FLAGS
from .engine import DeploymentConfig as DeploymentConfig
from .engine import EngineConfig as EngineConfig
from .engine import available_memory_bytes as available_memory_bytes
from .fields import DTYPES as DTYPES
from .fields import LIMITS as LIMITS
from .fields import MAX_JSON_BYTES as MAX_JSON_BYTES
from .fields import _get as _get
from .fields import _positive as _positive
from .fields import _real as _real
from .fields import _require_mapping as _require_mapping
from .fields import _token_id as _token_id
from .fields import get_field as get_field
from .fields import normalize_dtype as normalize_dtype
from .fields import parse_json_bytes as parse_json_bytes
from .fields import read_json as read_json
from .fields import read_json_file as read_json_file
from .model import ACTIVATIONS as ACTIVATIONS
from .model import ARCHITECTURES as ARCHITECTURES
from .model import ModelConfig as ModelConfig
from .model import MRopeConfig as MRopeConfig
from .rope import ROPE_TYPES as ROPE_TYPES
from .rope import RopeConfig as RopeConfig
from .rope import _parse_rope as _parse_rope
