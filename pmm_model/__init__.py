"""The thin PMM network around :mod:`pmm_kernels`: models, losses, data, training and evaluation."""
