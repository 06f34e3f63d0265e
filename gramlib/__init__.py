"""gramlib: a runnable companion to GRAM (Gradient-Regulated Meta-Prompt Learning, ICCV 2023).

One module per concept of the paper; see README.md for the map from equations to functions.
"""

__version__ = "0.1.0"
