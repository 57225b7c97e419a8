"""ImageNet-layout data: list files, transforms, and the parallel batch loader.

Nothing in this subpackage imports paddle, so loader worker processes start fast.
"""
