"""mt2kd.eval"""

__all__: list[str] = []
