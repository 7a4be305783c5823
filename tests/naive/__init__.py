"""Slow, obviously-right twins of every kernel (plain Python, ``ipaddress``, dicts).

One module per table or stage; tests compare the kernels against these on random and
on real inputs.
"""
