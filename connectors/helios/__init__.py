"""HELIOS: PES V2 flows between the finance software, the parapheur, the TdT and the DGFiP.

- ``acquit``: PES_ACQUIT and PES_NONACQUIT, read element by element.
"""
