"""Op implementations: the PyTorch path, the Triton kernels and the autograd glue."""
