"""The bundled contrastive trainer: `contrastgen train` and `contrastgen evaluate`.

Public surface: :func:`pipeline.train.run.run_train`, :func:`pipeline.train.run.run_evaluate`,
:class:`pipeline.train.config.TrainConfig`.
"""
