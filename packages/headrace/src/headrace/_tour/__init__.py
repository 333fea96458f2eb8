"""The live tour of the headrace family (``python -m headrace``)."""
