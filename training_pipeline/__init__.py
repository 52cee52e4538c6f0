"""Training pipeline: point-in-time training set from Feast, cross-validated ElasticNet, MLflow registry.

`flow` holds the steps (the Airflow DAG `training` and `python -m training_pipeline` both call them);
`registry` is what serving uses to find and load the champion.
"""
