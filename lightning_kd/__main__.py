"""``python -m lightning_kd`` is the ``lightning-kd`` command."""

from lightning_kd.cli import main

if __name__ == "__main__":
    main()
