"""contrastgen: contrastive training data made with LLMs.

The package reads like the data path:
``inputs`` -> ``records`` -> ``engines`` -> ``tasks`` -> ``filters`` -> ``shards`` (+ card) -> ``run``.
"""

__version__ = "0.1.0"
