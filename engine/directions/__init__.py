"""Directions in weight space: the perturbed tensors, normalization, and every direction kind (random, Hessian,
from a file, interpolation, plane, PCA of a trajectory) through one factory."""
