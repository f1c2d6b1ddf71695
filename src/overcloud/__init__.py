"""OverCloud: build, watch and delete container-ready environments across clouds."""

__version__ = "0.1.0"
