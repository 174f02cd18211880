"""Model families and everything model-specific, no Lightning: the family seam and its families, resolving a model
source (testbed, folder or Hub id) and loading it, text encoding, generation and the random pipelines that tests and
benchmarks build.
"""
