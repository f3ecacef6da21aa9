"""Names of files that one program writes and another finds by name alone.

Light on purpose (no imports): the workflow reads it while parsing, on
every node of a cluster run.
"""

ATTEMPT_FILE = "attempt.json"  # in the train stage's folder: how its latest attempt started; the tracking reads it
FINISHED_FILE = "finished.json"  # in the train stage's checkpoints/: the run of last.pt reached its end
