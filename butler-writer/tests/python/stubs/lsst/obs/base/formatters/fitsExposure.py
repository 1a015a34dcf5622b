"""A stand-in for ``lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter``.

daf_butler only imports the formatter named in a message during ingest, checks that it is a
``Formatter``/``FormatterV2`` subclass, and stores its fully qualified name in
``file_datastore_records.formatter``; it never reads or writes a file with it. So any
``FormatterV2`` subclass at this exact module path leaves the registry exactly as the real
``obs_base`` class does. It cannot read or write images.
"""

from __future__ import annotations

from typing import Any

from lsst.daf.butler import FormatterV2

__all__ = ["FitsExposureFormatter"]


class FitsExposureFormatter(FormatterV2):
    """Registry-only stand-in: refuses to read or write."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fits.gz", ".fits.fz", ".fz", ".fit"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        raise NotImplementedError("the parity test's FitsExposureFormatter stand-in cannot read images")

    def write_local_file(self, in_memory_dataset: Any, uri: Any) -> None:
        raise NotImplementedError("the parity test's FitsExposureFormatter stand-in cannot write images")
