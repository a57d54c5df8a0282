"""Self-supervised pretraining: objectives (Lightning modules), augmentations, data module and the runner.

Import submodules directly (``earthembed.pretrain.run``, ``.contrastive``, ``.datamodule``); the package
itself imports nothing, so ``earthembed --help`` does not pay for importing Lightning.
"""
