"""The Lightning shell: the LightningModule, the data module, callbacks, checkpoints, the strategy, the `rece` command,
the run identity of checkpoints and what reads a finished run (report, results, model card).
"""
