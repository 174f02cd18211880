"""``python -m rece_lightning.models.random_pipeline``: see :mod:`rece_lightning.models.random_pipeline`."""

from rece_lightning.models.random_pipeline import main

main()
