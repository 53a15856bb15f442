"""Declarative flow definitions, one module each; ``broker.wiring`` lists them.

This package init stays empty so that format libraries can import
``broker.flows.base`` without loading every flow (and the flows import them).
"""
