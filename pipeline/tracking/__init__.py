"""MLflow tracking around the stages, from the outside: stage code never imports mlflow.

    access    the tracking URI, logins kept out of what is stored, 401/403 explained, the client and retries
    parent    the invocation's parent run and the code version it records
    runs      a stage's child run: opened or reopened for a continued training, params, outcome
    follow    a running stage: its output teed to the log (masked), its JSONL metrics streamed live
    registry  the trained model logged, registered, and tagged with the evaluation's errors
    stage     one stage command inside its child run, start to final status (what `python -m pipeline.track` runs)

No module imports mlflow (4 s to import on 2 cores) or torch at its top: a
stage run with tracking off starts without them.
"""
