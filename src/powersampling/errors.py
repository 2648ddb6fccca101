"""Exception types. Every error a user can cause is one of these, with a message that says what to do."""


class PowerSamplingError(Exception):
    """Base class for errors raised by powersampling."""


class ConfigError(PowerSamplingError, ValueError):
    """A configuration value is missing or out of range."""


class ModelLoadError(PowerSamplingError):
    """A model could not be found or loaded."""


class ContextLengthError(PowerSamplingError, ValueError):
    """A prompt and the new tokens asked for do not fit the model's context window."""


class CapabilityError(PowerSamplingError):
    """The chosen backend or provider cannot do what was asked (for example: no log-probabilities)."""
