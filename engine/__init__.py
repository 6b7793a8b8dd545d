"""Loss-landscape sweep engine: filter-normalized surfaces over a Zarr store of tiles."""

__version__ = "0.1.0"
