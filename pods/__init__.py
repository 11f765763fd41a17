"""The machines a final runs on: a RunPod client (backend.py) and the job agent shipped to each pod
(pod_agent.py, a standalone program). Imports nothing from the project; agent/finals drives it."""
