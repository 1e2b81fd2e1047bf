"""The sans-I/O core: values in, values out.

Nothing in this package opens a socket or a file, reads a clock or the environment, logs, or
keeps global state; ``tests/unit/test_purity.py`` enforces that by inspecting the imports.
"""
