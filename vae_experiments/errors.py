"""The one exception type the runner turns into a one-line message before training starts."""


class ConfigError(ValueError):
    """A configuration that cannot run. The message is one line: the problem, then the fix."""
