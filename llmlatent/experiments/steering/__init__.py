"""The language-steering experiments: ``demo`` (one pair, held-out (layer, α)), ``evaluate`` and ``report``."""
