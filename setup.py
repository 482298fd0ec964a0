"""Optional C accelerators of directory listings (issue 16).

Everything else is in pyproject.toml.  Both extensions are optional: without
a compiler or Python's headers the install still succeeds, and the server
uses the pure-Python paths (net/jail.py, proto/listing.py), which give the
same bytes.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("ftpwarden.net._scandir", ["src/ftpwarden/net/_scandir.c"], optional=True),
    Extension("ftpwarden.proto._lsfmt", ["src/ftpwarden/proto/_lsfmt.c"], optional=True),
])
