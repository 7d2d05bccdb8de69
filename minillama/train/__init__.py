"""Training in NumPy: data, gradients, the optimizer and the ``minillama train`` command."""
