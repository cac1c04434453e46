"""Error types. Every message reads ``"<where>: <field>=<got> (expected <constraint>); <fix>"``."""


class ConfigError(ValueError):
    """A config.json field is missing, of the wrong type, unsupported or contradictory."""


class CheckpointError(ValueError):
    """A weight file is missing, truncated, or holds a tensor of the wrong shape."""


class InputError(ValueError):
    """A step input (shape, dtype, length, batch, capacity) is invalid; the state is untouched."""


class EngineError(ValueError):
    """A tensor map or engine does not match the engine contract (binding, shape, dtype)."""
