"""Score stage: internal quality (silhouette, CH, DB) and agreement with true labels."""
