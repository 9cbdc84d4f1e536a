"""mt2kd.train"""

__all__: list[str] = []
