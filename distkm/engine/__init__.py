"""The dask side: passes over row blocks, and the fit loops built on them (Lloyd, init, mini-batch, cache)."""
