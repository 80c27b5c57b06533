"""ringdist-launch: start the ranks of a ringdist job from a hostfile and supervise them.

Installed as `ringdist_launch` (the source directory is launcher/). Modules:
`cli` parses arguments (and is the entry point), `launch` checks and carries
them out, `plan` turns them into per-rank command lines and
environments, `route` picks the rendezvous address, `spawn` starts processes
(locally, or through ssh / an rsh agent, where `remote` keeps the rank), `output`
pumps their rank-prefixed lines (through `writer`, which never lets a stalled reader
hold up the job), `policy` decides who to stop and with which exit
code, and `job` applies those decisions to the running processes.
"""
