"""Configuration errors that name the offending setting and its allowed range."""


class ConfigError(ValueError):
    """A setting is outside its allowed range or inconsistent with another one.

    Components raise it with the key relative to their own config node
    (``noise_multiplier``); `dpfed.build` prefixes the group (``dp.``) so the
    message names the full Hydra key a user would override.

    Attributes:
        key: dotted config key, e.g. ``dp.noise_multiplier``.
        value: the offending value.
        allowed: human-readable allowed range, e.g. ``>= 0``.
        absolute: the key is already a full Hydra key (a setting of another
            group that this component constrains).
    """

    def __init__(self, key: str, value, allowed: str, absolute: bool = False):
        self.key, self.value, self.allowed, self.absolute = key, value, allowed, absolute
        super().__init__(f"{key}={value!r} is not allowed: {key} must be {allowed}")

    def under(self, prefix: str) -> "ConfigError":
        """Returns the same error with ``prefix.`` in front of its key (unless it is absolute)."""
        if not prefix or self.absolute or self.key.startswith(prefix + "."):
            return self
        return ConfigError(f"{prefix}.{self.key}", self.value, self.allowed)


def check(condition: bool, key: str, value, allowed: str) -> None:
    """Raises `ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, value, allowed)
