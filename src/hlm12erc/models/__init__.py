"""The ERC model and its losses."""
