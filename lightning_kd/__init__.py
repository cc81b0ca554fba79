"""lightning_kd: knowledge distillation of Hugging Face language models with PyTorch Lightning."""

__version__ = "0.1.0"
