"""mt2kd.workflows"""

__all__: list[str] = []
