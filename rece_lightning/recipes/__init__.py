"""The recipes as plain classes, no Lightning: the paper recipe (UCE then RECE iterations) and its settings, the opt-in
robust recipe and the stage-selection rule.
"""
