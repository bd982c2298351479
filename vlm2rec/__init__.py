"""vlm2rec: VLM2Rec fine-tuning of vision-language embedders for sequential recommendation.

A plain PyTorch + transformers library (no Ray, no Optuna); ``study/`` puts it on a Ray cluster.
"""

__version__ = "0.1.0"
