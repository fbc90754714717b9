"""Training SS-StyleGAN: the loop, several processes, the launcher, the one-training lock, the recipes."""
