"""``python -m rece_lightning.random_pipeline``: see :mod:`rece_lightning.random_pipeline`."""

from rece_lightning.random_pipeline import main

main()
