"""Benchmarks: real `p2pfs` processes on 127.0.0.1, files on tmpfs; run with `make bench`.

They print figures and ratios to references measured in the same run; they never pass or fail.
"""
