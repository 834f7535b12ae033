"""HDF5 datasets, networks, GAN pretraining, TOP-GAN transfer and evaluation (PyTorch)."""
