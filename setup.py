"""Builds the optional C record counter; everything else is declared in pyproject.toml.

``optional=True``: without a compiler (or Python headers) the install still succeeds and the data
plane counts records with the pure-Python counter of ``connector/dataplane/_records.py``.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "connector.dataplane._recordcount",
            sources=["connector/dataplane/_recordcount.c"],
            optional=True,
        )
    ]
)
