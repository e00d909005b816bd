"""The fault-tolerant launcher (`megagoku launch`): torch's elastic agent with what MegaScale adds
(progress heartbeats and hang detection, restarts with backoff from the newest valid checkpoint,
stop signals that checkpoint and ask for a requeue, outcomes read from the run dir, an event log
with the time lost to failures), workers bound to their launcher's life, stores bound to one
address.

It supervises processes only: nothing here imports the model or the trainer. The workers talk
to it through files named by environment variables (`heartbeat.py`, `events.py`) and exit codes
(`exit_codes.py`)."""
