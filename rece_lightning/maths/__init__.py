"""The closed-form maths of the edit, torch only: UCE's map and RECE's derivation (closed_form), the text-reading
linear layers as weight matrices (projections), the edit state, the editor that folds an edit into those layers and
one editor per input space (spaces).
"""
