"""The SS-StyleGAN model: networks, losses, augmentation, checkpoints, embedding into W, devices."""
