# `lsst` is a namespace package spread over several directories (daf_butler, utils, sphgeom,
# resources are installed into site-packages; this stub tree adds `lsst.obs`). The installed
# `lsst/__init__.py` does the same, so whichever of the two Python finds first, both halves stay
# importable.
import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)
