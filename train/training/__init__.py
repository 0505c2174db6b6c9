"""Training: stage configs, the Accelerate trainer, the stage base and the two stages (CT-CLIP, X2CT-CLIP).

May import: the library, ``x2ctclip.train.data`` and ``x2ctclip.train.evaluation`` (metrics while training).
"""
