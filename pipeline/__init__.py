"""Stages of the AlexNet workflow: one module per stage, each a function with a thin CLI."""
