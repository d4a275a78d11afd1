"""The Dask cluster a command runs on: its client, cluster-config files, the dashboard page."""
