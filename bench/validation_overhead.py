"""Validation overhead beyond image generation on the testbed (metrics, saving, logging), as a share of generation.

Runs ``Trainer.validate`` of the unedited testbed on a testbed prompt set with the evaluation callbacks of
``configs/testbed.yaml`` (classifier accuracy, Fréchet distance on the classifier's features, image grid,
TensorBoard, JSON records), timing the pipeline calls separately from the whole validation.

    python bench/validation_overhead.py [--prompts testbed:triangle] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L

from rece_lightning import RECEDataModule, RECEModule
from rece_lightning.lightning.callbacks import ClassifierAccuracy, FrechetDistance, ImageGridLogger


class TimedModule(RECEModule):
    """RECEModule that accumulates the wall time spent generating images."""

    generation_seconds = 0.0

    def generate(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.generation_seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="testbed:triangle")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    module = TimedModule(pretrained="testbed", concepts=["triangle"],
                         generation={"num_inference_steps": 20, "guidance_scale": 5.0})
    data = RECEDataModule(val_prompts=args.prompts, batch_size=args.batch_size)
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            callbacks = [ClassifierAccuracy(), FrechetDistance(feature_extractor="testbed", reference="original"),
                         ImageGridLogger()]
            trainer = L.Trainer(default_root_dir=root, callbacks=callbacks, enable_progress_bar=False,
                                enable_model_summary=False)
            module.generation_seconds = 0.0
            start = time.perf_counter()
            trainer.validate(module, data, verbose=False)
            total = time.perf_counter() - start
        n = len(data.val_dataloader().dataset)
        overhead = total - module.generation_seconds
        print(f"run {repeat + 1}: {n} images, generation {module.generation_seconds:.2f} s, validation {total:.2f} s, "
              f"overhead {overhead:.2f} s = {100 * overhead / module.generation_seconds:.1f} % of generation")


if __name__ == "__main__":
    main()
