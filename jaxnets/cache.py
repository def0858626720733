"""Where jaxnets keeps what it builds and parses on disk: $JAXNETS_CACHE, default ~/.cache/jaxnets.

A leaf module (standard library only), so every room may ask for the folder: native kernels
(jaxnets.kernels.native), compiled programs (jaxnets.platform.compile_cache) and parsed datasets
(jaxnets.data.offline).
"""
from __future__ import annotations

import os
import pathlib


def cache_root() -> pathlib.Path:
    """$JAXNETS_CACHE, default ~/.cache/jaxnets: built kernels, compiled programs and parsed
    datasets."""
    root = os.environ.get("JAXNETS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxnets")
    return pathlib.Path(root)
