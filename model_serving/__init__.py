"""Online serving: the prediction API and what it needs (champion model, online features, event log)."""
