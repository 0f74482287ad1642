"""Dataset inference for image owners: was this model trained on my images? (``diffmia provenance``)."""
