"""Curvature numerics: Hessian-vector products, Lanczos, traces, SLQ densities, the spectra and curvature probes
built from them, and sharpness. Nothing here touches the store."""
