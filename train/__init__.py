"""hdme.train: COCO_shuffle synthesis, the HDME-Net model family and training. torch lives here."""
