"""What a run reads and writes beyond plain files, no Lightning: prompt sets, input checks, exports, base-model
fingerprints, the image store and the evaluation cache.
"""
