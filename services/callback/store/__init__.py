"""All SQL of the callback service, one module per aggregate; parameters bound, callers own transactions."""
