"""Build glue for pyproject.toml (setuptools): the version and the optional
bundled library.

Version: the libattn the package will load at run time decides it --
$ATTN_BUNDLE_LIBRARY, else $ATTN_LIBRARY, else the system's (pkg-config's
libdir for attn, then ldconfig) -- read with attn_version_string(); its major
must be attn._lib.EXPECTED_MAJOR or the build stops. Without any libattn
(e.g. building an sdist) the source tree's CMakeLists.txt project(VERSION)
is used.

Bundling: ATTN_BUNDLE_LIBRARY=/path/to/libattn.so.0 copies that library into
the package (attn/_libs/libattn.so.0) and makes the wheel platform-specific;
`import attn` then prefers it to the system's (see attn/_lib.py load()).
"""

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


def expected_major():
    with open(os.path.join(HERE, "attn", "_lib.py")) as f:
        return int(re.search(r"^EXPECTED_MAJOR = (\d+)", f.read(), re.M).group(1))


def system_library(major):
    try:
        r = subprocess.run(["pkg-config", "--variable=libdir", "attn"], capture_output=True,
                           text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            path = os.path.join(r.stdout.strip(), "libattn.so.%d" % major)
            if os.path.exists(path):
                return path
    except (OSError, subprocess.SubprocessError):
        pass
    return ctypes.util.find_library("attn")


def library_version():
    """(version, where it came from)."""
    major = expected_major()
    path = (os.environ.get("ATTN_BUNDLE_LIBRARY") or os.environ.get("ATTN_LIBRARY")
            or system_library(major))
    if path:
        lib = ctypes.CDLL(path)
        lib.attn_version_string.restype = ctypes.c_char_p
        version = lib.attn_version_string().decode()
        if int(version.split(".")[0]) != major:
            raise SystemExit("attn: %s is libattn %s; this package speaks major %d"
                             % (path, version, major))
        return version, path
    cmake = os.path.join(HERE, "..", "..", "CMakeLists.txt")
    if os.path.exists(cmake):
        with open(cmake) as f:
            m = re.search(r"project\(attn\s+VERSION\s+([0-9.]+)", f.read())
        if m:
            return m.group(1), cmake
    raise SystemExit("attn: no libattn found to take the version from; set ATTN_LIBRARY or "
                     "PKG_CONFIG_PATH to an installed libattn")


class BuildPy(build_py):
    """build_py + the bundled library (ATTN_BUNDLE_LIBRARY)."""

    def run(self):
        super().run()
        bundle = os.environ.get("ATTN_BUNDLE_LIBRARY")
        dest = os.path.join(self.build_lib, "attn", "_libs")
        shutil.rmtree(dest, ignore_errors=True)   # never ship an earlier build's library
        if bundle:
            os.makedirs(dest, exist_ok=True)
            shutil.copy2(os.path.realpath(bundle),
                         os.path.join(dest, "libattn.so.%d" % expected_major()))


class MaybeBinaryDistribution(Distribution):
    """A bundled .so makes the wheel platform-specific (linux_x86_64 tag)."""

    def has_ext_modules(self):
        return bool(os.environ.get("ATTN_BUNDLE_LIBRARY"))


VERSION, _SOURCE = library_version()
setup(version=VERSION, cmdclass={"build_py": BuildPy}, distclass=MaybeBinaryDistribution)
