"""`python -m engine.run_spectrum` (torchrun's way in to `landscape-spectrum`): the Hessian spectra at theta*."""

from engine.app.cli import spectrum_main

if __name__ == "__main__":
    spectrum_main()
