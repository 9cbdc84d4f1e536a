"""mt2kd: offline multi-teacher label extraction and KD student training.

Subpackages: ``mt2kd.extract`` (teachers and the dask job), ``mt2kd.store``
(the Zarr store), ``mt2kd.train`` (loader, student, trainer), ``mt2kd.eval``
(metrics) and ``mt2kd.workflows`` (the whole chain from one config).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
