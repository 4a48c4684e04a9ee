"""The one exception type tflq raises for bad input.

Every message names what is wrong (the layer, the file, the number that does
not fit) and what to do about it. Nothing is written when one is raised.
"""


class TflqError(ValueError):
    """Bad input to tflq: a model, a file, a flag or a number it cannot use."""
