"""Training: the one loop (loop.py), what it trains (tasks.py), fitting a model (fit.py), DDP, the stages."""
