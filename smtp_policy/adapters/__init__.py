"""Thin I/O adapters around the core: each turns its input into core calls and Events."""
