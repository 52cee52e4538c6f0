"""Raw data -> validated offline store -> Feast: generation, ingestion, materialization and streaming."""
