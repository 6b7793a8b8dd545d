"""The sweep: in-place perturbation, the point runner (vmap or rewritten in-place path), the tile counter and the
worker loop that claims tiles and writes them to the store."""
