"""The data path's stages, in the order a flow meets them.

Each stage module holds its compile step (cluster model -> its flat tables), its
kernel(s), and its ``explain`` step; its slow twin lives in ``tests/naive/``.
"""
