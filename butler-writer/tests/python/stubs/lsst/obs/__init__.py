"""Stand-in for the parts of ``obs_base`` the parity test needs; ``obs_base`` is not on PyPI."""
