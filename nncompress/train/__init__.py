"""Training: data (images in memory, GPU crops, validation tiles), the loop, the CLI.

Import the parts you need: ``nncompress.train.loop`` (TrainConfig, train),
``nncompress.train.data``, ``nncompress.train.cli`` (the click command), ``nncompress.train.plot``.
"""
