"""Raw data -> validated offline store -> Feast: ingestion, materialization and streaming."""
