"""Tests of xrayvision_operator (the folder is not named ``operator``: tests/ is on
sys.path and that would shadow the standard library module)."""
