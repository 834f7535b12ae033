"""HDF5 datasets, networks, GAN pretraining, TOP-GAN transfer and evaluation (PyTorch),
and the ``topgan train`` and ``topgan evaluate`` commands."""
