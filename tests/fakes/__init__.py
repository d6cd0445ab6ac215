"""Local servers that speak the telephony providers' documented protocols, for contract tests.

Imported as the top-level package `fakes`: tests/ has no __init__.py, and pytest's default "prepend"
import mode puts tests/ on sys.path because tests/conftest.py lives there (as with `support`).
"""
