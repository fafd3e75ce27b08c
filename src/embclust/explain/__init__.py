"""Explain stage: diagnostics tables and figures, keywords, SHAP models, near-duplicates."""
