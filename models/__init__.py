"""The diffusion prior of static PET slices: score network definition, training, shipped weights.

``models/prior/`` holds the shipped weights (``score_net.safetensors``), their ``config.json`` (architecture,
intensity normalisation, training recipe, SHA-256 of the weights), ``MODEL_CARD.md`` and the loss curve.
"""
