"""The standard InceptionV3 weights of FID (Heusel et al., 2017) as torch-fidelity publishes them, and where they are
found: torch's hub cache (``torch.hub.get_dir()/checkpoints``, the file torch-fidelity itself downloads and reuses),
or a copy the user gives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rece_lightning.errors import RECEError

__all__ = ["FID_EXTRA", "INCEPTION_URL", "INCEPTION_WEIGHTS", "inception_weights"]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
"""The file name of the InceptionV3 FID weights torch-fidelity publishes (converted from TensorFlow's FID Inception)."""
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
"""Where torch-fidelity downloads them from (``torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3``)."""
FID_EXTRA = ("FID with InceptionV3 needs torch-fidelity: first install torchvision for your torch from torch's index "
             f"(pip install torch=={torch.__version__} torchvision --index-url https://download.pytorch.org/whl/cpu, "
             "or whl/cu126 … as your torch), then pip install 'rece-lightning[fid]' (docs/metrics.md)")
"""The error when torch-fidelity is missing: the install order that keeps the user's torch."""


def inception_weights(path: str | Path | None = None) -> Path:
    """The InceptionV3 FID weights: ``path`` when given, else :data:`INCEPTION_WEIGHTS` in torch's hub cache
    (``torch.hub.get_dir()/checkpoints``, the file torch-fidelity downloads and reuses), downloaded there when missing
    (``torch.hub.download_url_to_file``: a temporary file, then renamed).

    Raises:
        RECEError: ``path`` does not exist, or the weights are not cached and cannot be downloaded (offline).
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise RECEError(f"InceptionV3 weights {file} do not exist; give torch-fidelity's {INCEPTION_WEIGHTS} "
                            "or leave feature_extractor_weights_path unset to use torch's hub cache")
        return file
    file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if file.is_file():
        return file
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(file), progress=sys.stderr.isatty())
    except Exception as err:  # urllib raises URLError, HTTPError, OSError, timeouts …
        reason = " ".join(str(getattr(err, "reason", None) or err).split())[:120]
        raise RECEError(f"FID: the InceptionV3 weights {INCEPTION_WEIGHTS} are not in torch's hub cache "
                        f"({file.parent}) and could not be downloaded ({reason}); download {INCEPTION_URL} into "
                        "that folder, or set feature_extractor_weights_path to a copy") from err
    return file
