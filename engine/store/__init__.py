"""The Zarr store and all that reads or writes it: the grid plan and its tiles, the layout, done flags and resume,
spectra, the lease, and the assembler that turns a store into summary numbers."""
