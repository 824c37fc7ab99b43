"""hdme: single-image defocus map estimation (HDME-Net), from training to the edge.

The core package (this folder) holds what every stage shares and never imports torch:
σ conventions and map encodings, image reading, metrics, real benchmark loaders and the
registry of shipped models. Stages live in ``hdme.train``, ``hdme.export`` and
``hdme.runtime``.
"""

__version__ = "0.1.0"
