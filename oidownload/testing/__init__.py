"""Test tooling shipped with the package: the local origin server (a synthetic Flickr
with faults and latency) and the synthetic photo corpus it serves. Used by the tests,
the benchmarks and `oidownload bench`; no pipeline stage imports it.
"""
