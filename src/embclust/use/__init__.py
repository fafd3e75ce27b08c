"""Using the clusters of a logged run: assign new data, cluster-routed search, sweep export."""
