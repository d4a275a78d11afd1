"""Applications built on the estimator: sweep of k, colour quantisation, augmentation, folder ingest."""
