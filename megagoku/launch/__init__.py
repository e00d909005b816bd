"""The fault-tolerant launcher (`megagoku launch`): torch's elastic agent with what MegaScale adds
(heartbeats and hang detection, restarts with backoff from the newest valid checkpoint, stop
signals that checkpoint and ask for a requeue, an event log with the time lost to failures).

It supervises processes only: nothing here imports the model or the trainer. The trainer talks
to it through files named by environment variables (`heartbeat.py`, `events.py`)."""
