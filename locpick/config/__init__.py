"""Configuration: one frozen ``Config`` read once at the edge, from TOML, env and arguments.

- :mod:`locpick.config.model`: the frozen values and their defaults (what can be set).
- :mod:`locpick.config.load`: TOML → validated ``Config`` (unknown keys, wrong types refused).
- :mod:`locpick.config.env`: the environment, read once (``Environment``, ``resolve_config``).
"""
