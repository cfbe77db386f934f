"""The ``triton`` backend: one module per op (``encode``, ``loss``, ``decode``)."""
